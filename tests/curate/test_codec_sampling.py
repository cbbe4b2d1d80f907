"""Clip sampling: keyframe-aligned clips, strides, aspect-keeping padding and rotation refusal."""

from __future__ import annotations

import dataclasses
import gc

import av
import numpy as np
import pytest

from curate.codec import PatchifyConfig, VideoError, patchify
from curate.codec.patchify import _shot
from curate.codec.sampling import decode_clip, inspect, plan_clips
from curate.demo.synthetic_video import make_clip
from curate.media import open_video


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("sampling") / "long.mp4"
    make_clip(path, size=128, frames=100, gop=16, bframes=0, seed=2)
    with av.open(str(path)) as c:
        luma = np.stack([f.to_ndarray()[:128] for f in c.decode(video=0)])  # the decoder's own Y planes
    return str(path), luma


def test_clips_follow_each_other_or_start_on_keyframes(long_clip):
    path, _ = long_clip
    with open_video(path) as c:
        source = inspect(c, 32)
    assert source.frame_count == 100 and source.keyframes.tolist() == [0, 16, 32, 48, 64, 80, 96]
    assert source.gop == 16 and source.fps == 24
    clips = plan_clips(source, 32, 1)
    assert [c[0] for c in clips] == [0, 32, 64, 96] and [len(c) for c in clips] == [32, 32, 32, 4]
    assert [c[0] for c in plan_clips(source, 10, 2)] == [0, 20, 40, 60, 80]  # every second frame, all of them
    aligned = plan_clips(source, 10, 2, continuous=False)  # each clip alone from its keyframe
    assert [c[0] for c in aligned] == [0, 32, 64, 96]  # 0..18 ends before 32: frames 20-31 not taken


def test_a_clip_inside_a_gop_is_the_same_after_the_clip_before_or_after_a_seek(long_clip):
    """24-frame clips of a GOP-16 video: clip 1 starts at frame 24, inside a GOP. Reached by a seek (one
    clip asked for) it decodes from keyframe 16; after clip 0 (every clip) the decoder goes on. Both give
    the decoder's own frames, frame 23 as the first frame's predecessor, and the same selection."""
    from curate.codec.patchify import patchify_all

    path, luma = long_clip
    cfg = PatchifyConfig(frames=24, size=128, min_frames=8)
    alone = patchify(path, dataclasses.replace(cfg, clip=1))
    not_taken: dict = {}
    after = [r for _, r in patchify_all(path, cfg, not_taken=not_taken)]
    assert [r.facts["frame_ids"][0] for r in after] == [0, 24, 48, 72] and not_taken["short_tail"] == 1
    assert alone.facts["frame_ids"] == after[1].facts["frame_ids"] == list(range(24, 48))
    for r in (alone, after[1]):
        assert np.array_equal(r.clip.y, luma[24:48]) and np.array_equal(r.clip.prev_y[0], luma[23])
        assert r.clip.has_prev.all()
    assert np.array_equal(alone.positions, after[1].positions) and alone.facts == after[1].facts
    assert not after[2].clip.has_prev[0] and after[3].clip.has_prev[0]  # 48 is a keyframe, 72 is not


def test_second_clip_decodes_exactly_its_frames(long_clip):
    path, luma = long_clip
    r = patchify(path, PatchifyConfig(frames=32, clip=1, size=128, min_frames=8))
    assert r.facts["frame_ids"] == list(range(32, 64))
    assert np.array_equal(r.clip.y, luma[32:64])  # same size: the planes are the decoder's, untouched
    assert r.scores.shape == (32, 8, 8) and r.positions[:, 0].max() <= 31
    assert not r.clip.has_prev[0] and r.clip.has_prev[1:].all()  # a clip starts at its keyframe


def test_a_decoded_clip_holds_no_decoder_frame(long_clip):
    """Vectors are read from the scaled copy: a decoder frame whose side data was read sits in a reference
    cycle, and 64 of them held at 720p were 600 MB and kept the decoder from reusing its buffers."""
    path, _ = long_clip
    gc.collect()
    gc.disable()  # cycles stay until looked for: what holds a frame is seen, not hidden by a collection
    try:
        with open_video(path) as c:
            clip = decode_clip(path, inspect(c, 32), np.arange(32), 64, "stretch", True, container=c)
            clip.decoder = None  # the decoder going on (for a next clip) holds its current packet's frames
        held = [o for o in gc.get_objects() if isinstance(o, av.VideoFrame) and o.width == 128]
    finally:
        gc.enable()
    assert sum(v is not None and len(v) > 0 for v in clip.vectors) == 30  # P-frames' vectors (I at 0 and 16)
    assert held == []


def test_the_clip_after_a_cut_goes_on_from_the_frames_already_decoded(tmp_path):
    """A cut inside a clip ends its shot early and the next clip starts at the keyframe of the cut: the frames
    from there on are decoded already, so they are carried and the decoder goes on (no seek, nothing decoded
    twice), giving what a fresh decode of the next clip gives, also where B-frames hold frames back."""
    path = str(tmp_path / "b.mp4")
    make_clip(path, size=96, frames=80, gop=16, seed=4, pan=(2, 1))  # x264's default B-frames
    with open_video(path) as c:
        source = inspect(c, 32)
        first = decode_clip(path, source, np.arange(0, 40), 64, "stretch", True, container=c)
        went_on = decode_clip(
            path, source, np.arange(32, 72), 64, "stretch", True, container=c, carry=_shot(first, 32, 40)
        )
        fresh = decode_clip(path, source, np.arange(32, 72), 64, "stretch", True, container=c)
    assert "B" in first.pict_types and went_on.decoder is first.decoder  # the same decoder went on
    for field in ("y", "u", "v", "prev_y", "has_prev", "frame_ids"):
        assert np.array_equal(getattr(went_on, field), getattr(fresh, field)), field
    assert went_on.pict_types == fresh.pict_types and not went_on.has_prev[0] and went_on.has_prev[1:].all()
    assert all(np.array_equal(a, b) for a, b in zip(went_on.vectors, fresh.vectors, strict=True))
    assert sum(v is not None for v in fresh.vectors) >= 30


def test_stride_and_fps_sampling_keep_the_true_predecessor(long_clip):
    path, luma = long_clip
    for cfg in (PatchifyConfig(frames=16, stride=3, size=128), PatchifyConfig(frames=16, fps=8.0, size=128)):
        r = patchify(path, cfg)
        ids = np.arange(0, 48, 3)
        assert r.facts["frame_ids"] == ids.tolist() and r.facts["stride"] == 3
        assert np.array_equal(r.clip.y, luma[ids])
        assert np.array_equal(r.clip.prev_y[1:], luma[ids[1:] - 1])  # residual against frame t-1, decoded


def test_pad_keeps_aspect_and_never_selects_padding(tmp_path):
    path = tmp_path / "wide.mp4"
    mask = make_clip(path, size=(320, 180), frames=32, seed=1)
    r = patchify(str(path), PatchifyConfig(fit="pad", frames=32))
    assert r.clip.content == (56, 0, 144, 256)  # 320x180 -> 256x144, centred
    assert set(np.unique(r.positions[:, 1])) <= set(range(4, 12))  # rows fully inside 56..200
    assert len(r.positions) == round(0.125 * 32 * 8 * 16)
    assert (r.clip.y[:, :56] == 0).all() and (r.clip.y[:, 200:] == 0).all()
    # the object is still found: its centre row on the padded grid is among the kept rows
    rows = (np.argwhere(mask[10])[:, 0].mean() * 144 / 180 + 56) // 16
    assert rows in r.positions[r.positions[:, 0] == 10][:, 1]


def test_pad_keeps_the_displayed_shape_of_anamorphic_pixels(tmp_path):
    """352 x 288 stored with 16:11 pixels is shown 16:9 (as DVD and broadcast SD store wide pictures): pad
    gives it a 16:9 box, and a white disc round on screen (thin in the stored frames) stays round on the grid."""
    from fractions import Fraction

    path = tmp_path / "anamorphic.mp4"
    yy, xx = np.mgrid[:288, :352]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 352, 288, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(16, 11)
        for t in range(32):  # radius 60 shown: 60 rows, 60 * 11 / 16 stored columns
            image = np.full((288, 352, 3), 90, np.uint8)
            image[((xx - 90 - 4 * t) * 16 / 11) ** 2 + (yy - 144) ** 2 <= 60**2] = 240
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    r = patchify(str(path), PatchifyConfig(fit="pad", frames=32, min_frames=16))
    assert r.clip.content == (56, 0, 144, 256) and r.facts["pixel_aspect"] == round(16 / 11, 4)
    picture = r.clip.y[0, 56:200].astype(int)
    rows, cols = np.nonzero(np.abs(picture - picture[4, 250]) > 20)  # the disc, against the grey background
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert abs(height - 60) <= 2 and abs(width - height) <= 2, (width, height)  # 120 of 288 rows -> 60 of 144
    stretched = patchify(str(path), PatchifyConfig(frames=32, min_frames=16))  # stretch: the square, as before
    assert stretched.clip.content == (0, 0, 256, 256)
    # the probe records the pixel shape, and the aspect filter judges the shape shown
    from curate.stages.filters import AspectRatio
    from curate.stages.video import probe

    facts = probe(str(path), str(path))
    assert (facts["width"], facts["height"], facts["pixel_aspect"]) == (352, 288, round(16 / 11, 4))
    assert AspectRatio(max_ratio=1.5).reason({"meta": facts}) == "extreme_aspect: 352x288 (shown 512x288) beyond 1.5:1"
    assert AspectRatio(max_ratio=1.5).reason({"meta": dict(facts, pixel_aspect=1.0)}) is None


def test_a_stream_that_changes_resolution_midway_keeps_its_vectors_in_place(tmp_path):
    """Two MPEG-TS recordings, 320 x 240 then 256 x 192, joined byte for byte (a broadcast capture whose
    resolution changes): the later frames' vectors are in their own pixels and must be mapped from there.
    The later clips see as many vectors as the second recording alone gives, and the mover is kept."""
    from curate.codec.patchify import patchify_all

    rng = np.random.default_rng(0)
    for n, (w, h) in enumerate([(320, 240), (256, 192)]):
        background = np.kron(rng.integers(30, 220, (30, 40, 3)), np.ones((8, 8, 1))).astype(np.uint8)[:h, :w]
        with av.open(str(tmp_path / f"part{n}.ts"), "w", format="mpegts") as out:
            stream = out.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"x264-params": "keyint=24:repeat-headers=1"}  # parameter sets in band
            for i in range(48):
                image = background.copy()
                image[60:110, 20 + 3 * i : 70 + 3 * i] = rng.integers(0, 255, (50, 50, 3))
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = i + 100 * n
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
    joined = tmp_path / "joined.ts"
    joined.write_bytes((tmp_path / "part0.ts").read_bytes() + (tmp_path / "part1.ts").read_bytes())
    cfg = PatchifyConfig(frames=24, min_frames=8)
    clips = [r for _, r in patchify_all(str(joined), cfg)]
    alone = [r for _, r in patchify_all(str(tmp_path / "part1.ts"), cfg)]
    assert [r.facts["frame_ids"][0] for r in clips] == [0, 24, 48, 72]
    for ours, theirs in zip(clips[2:], alone, strict=True):  # 0.44 when they were read as 320 x 240 pixels
        assert abs(ours.facts["saliency"]["vector_cells"] - theirs.facts["saliency"]["vector_cells"]) < 0.02
        assert ours.facts["selection"] == "top_k"
        truth = np.zeros((len(ours.facts["frame_ids"]), 256, 256), bool)  # the mover, stretched to the grid
        for k, i in enumerate(np.asarray(ours.facts["frame_ids"]) - 48):
            truth[k, 80:147, 20 + 3 * i : 70 + 3 * i] = True
        truth = truth.reshape(len(truth), 16, 16, 16, 16).mean(axis=(2, 4)) >= 0.5
        kept = np.zeros_like(truth)
        kept[tuple(ours.positions.T)] = True
        assert (kept & truth).sum() >= 0.9 * truth.sum()


@pytest.mark.parametrize("degrees", [90, 270])
def test_rotation_metadata_is_applied(tmp_path, degrees):
    """A phone's upright recording: coded sideways with a display rotation. The square moves right in
    the coded frames; patches and stored frames must follow it in display orientation."""
    rng = np.random.default_rng(0)
    background = np.kron(rng.integers(40, 216, (17, 17, 3)), np.ones((8, 8, 1)))[:128, :128].astype(np.uint8)
    masks, path = [], tmp_path / "rotated.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 128, 128, "yuv420p"
        stream.set_display_rotation(degrees)
        for t in range(24):
            image, mask = background.copy(), np.zeros((128, 128), bool)
            mask[16:48, 8 + 3 * t : 40 + 3 * t] = True
            image[mask] = np.clip(np.array([200, 70, 40]) + rng.integers(-12, 13, (int(mask.sum()), 3)), 0, 255)
            masks.append(mask)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    result = patchify(str(path), PatchifyConfig(size=128, frames=24, min_frames=16, budget=0.25))
    facts = result.facts
    assert facts["rotation"] == degrees and facts["signal"] == "reencode_h264" and facts["selection"] == "top_k"
    kept = np.zeros((24, 8, 8), bool)
    kept[tuple(result.positions.T)] = True

    def coverage(turns: int) -> float:
        truth = np.stack([np.rot90(m, turns) for m in masks]).reshape(24, 8, 16, 8, 16).mean(axis=(2, 4)) >= 0.5
        return (kept & truth).sum() / truth.sum()

    assert coverage(degrees // 90) >= 0.9  # where the viewer sees the square
    assert coverage(0) < 0.5  # not where the coded frames have it


def test_mpegts_clip_after_an_imprecise_seek_and_raw_streams(tmp_path):
    ts = tmp_path / "x.ts"
    make_clip(ts, size=128, frames=40, gop=16, seed=1)
    with av.open(str(ts)) as c:
        luma = np.stack([f.to_ndarray()[:128] for f in c.decode(video=0)])
    r = patchify(str(ts), PatchifyConfig(frames=16, clip=1, size=128, min_frames=8))
    assert r.facts["frame_ids"] == list(range(16, 32)) and np.array_equal(r.clip.y, luma[16:32])
    raw = tmp_path / "x.h264"
    make_clip(raw, size=64, frames=8)
    with pytest.raises(VideoError, match="no timestamps"):
        patchify(str(raw))
