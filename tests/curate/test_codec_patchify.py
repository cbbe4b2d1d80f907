"""Codec patchification against ground truth: synthetic clips whose moving-object mask is known.

Metric. A patch is an *object patch* when at least half of its pixels belong to the moving
object, and *static background* when none do; patches partly covered (the object's rim) are
neither, since a 16x16 patch half on the object is a fair pick either way. The objects are
sized (diameter 0.36 x 256 = 92 px, about 26 object patches and 38 touched patches per frame)
so that the 12.5 % budget (32 patches per frame) lies between the two: coverage >= 90 % of
object patches and < 10 % of kept patches on static background can then both be met, and
neither is met trivially (a budget far above the object area would force background picks; one
far below would make coverage impossible).
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from curate.codec import PatchifyConfig, VideoError, encode, patchify
from curate.demo.synthetic_video import make_clip
from curate.stage import run_in_process
from curate.stages.codec import CodecPatchify
from shards import fields as shard_fields
from shards.fields import check_sample
from shards.format import MOSAIC_COLS, decode_npy, encode_json


def _truth(mask: np.ndarray, patch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    t, h, w = mask.shape
    share = mask.reshape(t, h // patch, patch, w // patch, patch).mean(axis=(2, 4))
    return share >= 0.5, share == 0  # object patches, static-background patches


def _kept(positions: np.ndarray, shape) -> np.ndarray:
    kept = np.zeros(shape, bool)
    kept[positions[:, 0], positions[:, 1], positions[:, 2]] = True
    return kept


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("codec")
    specs = {
        "still_camera": {"codec": "h264", "seed": 1},
        "pan": {"codec": "h264", "pan": (2, 1), "seed": 2},
        "pan_hevc": {"codec": "hevc", "pan": (-1, 2), "seed": 3},
        "same_scene_h264": {"codec": "h264", "pan": (3, -2), "seed": 4},
        "same_scene_hevc": {"codec": "hevc", "pan": (3, -2), "seed": 4},
        "static": {"codec": "h264", "static": True, "seed": 5},
        "still_hevc": {"codec": "hevc", "seed": 6},
    }
    out = {}
    for name, spec in specs.items():
        path = root / f"{name}.mp4"
        out[name] = (str(path), make_clip(path, **spec))
    return out


@pytest.mark.parametrize("name", ["still_camera", "pan", "pan_hevc"])
def test_kept_patches_cover_the_moving_object(clips, name):
    path, mask = clips[name]
    result = patchify(path, PatchifyConfig(budget=0.125))
    obj, background = _truth(mask)
    kept = _kept(result.positions, obj.shape)
    assert len(result.positions) == 2048 == kept.sum()
    coverage = (kept & obj).sum() / obj.sum()
    on_background = (kept & background).sum() / kept.sum()
    assert coverage >= 0.9, f"{name}: kept {coverage:.3f} of the object patches"
    assert on_background < 0.1, f"{name}: {on_background:.3f} of kept patches on static background"
    expected = "reencode_h264" if name.endswith("hevc") else "codec_mvs"
    assert result.facts["signal"] == expected and result.facts["selection"] == "top_k"


@pytest.mark.parametrize("name", ["still_camera", "pan"])
def test_without_the_loop_filter_the_pixels_move_a_little_and_the_mover_is_still_kept(clips, name):
    """``deblock=False`` has the decoder skip deblocking (less decoding): other pixels, the same ground truth."""
    path, mask = clips[name]
    filtered = patchify(path, PatchifyConfig())
    result = patchify(path, PatchifyConfig(deblock=False))
    change = np.abs(result.clip.y.astype(int) - filtered.clip.y).mean()
    assert 0 < change < 2, change  # the option reaches the decoder, and the picture stays the same
    obj, background = _truth(mask)
    kept = _kept(result.positions, obj.shape)
    assert (kept & obj).sum() / obj.sum() >= 0.9 and (kept & background).sum() / kept.sum() < 0.1
    assert result.facts["selection"] == "top_k"


def _transcode(src: str, dst: str, codec: str, options: dict) -> None:
    """Re-encode a clip with another real encoder (same frames, constant 24 fps)."""
    with av.open(src) as i, av.open(dst, "w") as o:
        s = o.add_stream(codec, rate=24)
        s.width, s.height, s.pix_fmt = 256, 256, "yuv420p"
        s.codec_context.options = options
        for k, frame in enumerate(i.decode(video=0)):
            frame.pict_type, frame.pts, frame.time_base = av.video.frame.PictureType.NONE, k, Fraction(1, 24)
            o.mux(s.encode(frame))
        o.mux(s.encode())


@pytest.mark.parametrize(
    ("encoder", "suffix", "options", "signal"),
    [
        ("libvpx-vp9", "webm", {"deadline": "realtime", "cpu-used": "8"}, "reencode_h264"),  # no vectors exported
        ("mpeg4", "mp4", {"qscale": "4"}, "codec_mvs"),  # MPEG-4 Part 2 exports vectors like H.264
    ],
)
def test_other_codecs_take_the_right_signal_path(clips, tmp_path, encoder, suffix, options, signal):
    src, mask = clips["pan"]
    path = str(tmp_path / f"clip.{suffix}")
    _transcode(src, path, encoder, options)
    result = patchify(path)
    obj, background = _truth(mask)
    kept = _kept(result.positions, obj.shape)
    assert result.facts["signal"] == signal
    assert (kept & obj).sum() / obj.sum() >= 0.9 and (kept & background).sum() / kept.sum() < 0.1


def test_frame_difference_policy(clips):
    path, mask = clips["still_hevc"]
    result = patchify(path, PatchifyConfig(hevc_policy="difference"))
    assert result.facts["signal"] == "frame_difference"
    obj, background = _truth(mask)
    kept = _kept(result.positions, obj.shape)
    assert (kept & obj).sum() / obj.sum() >= 0.9 and (kept & background).sum() / kept.sum() < 0.1
    # without vectors nothing tells camera motion from object motion: under a pan it picks background
    pan_path, pan_mask = clips["pan_hevc"]
    panned = patchify(pan_path, PatchifyConfig(hevc_policy="difference"))
    obj, background = _truth(pan_mask)
    kept = _kept(panned.positions, obj.shape)
    assert (kept & background).sum() / kept.sum() > 0.3


def test_h264_path_and_reencode_path_agree(clips):
    a = patchify(clips["same_scene_h264"][0])
    b = patchify(clips["same_scene_hevc"][0])
    assert (a.facts["signal"], b.facts["signal"]) == ("codec_mvs", "reencode_h264")
    ka, kb = _kept(a.positions, a.scores.shape), _kept(b.positions, b.scores.shape)
    iou = (ka & kb).sum() / (ka | kb).sum()
    assert iou >= 0.7, f"IoU {iou:.3f}"


def test_static_clip_takes_the_uniform_frames_fallback(clips):
    result = patchify(clips["static"][0])
    assert result.facts["selection"] == "static_fallback"
    frames = np.unique(result.positions[:, 0])
    assert frames.tolist() == np.linspace(0, 63, 8).round().astype(int).tolist()  # 2048 / 256 = 8 whole frames
    assert len(result.positions) == 2048


def test_moving_clip_with_whole_first_frame(clips):
    path, mask = clips["pan"]
    result = patchify(path, PatchifyConfig(first_frame="whole", budget=0.25))
    pos = result.positions
    assert len(pos) == 4096 and (pos[:, 0] == 0).sum() == 256
    obj, _ = _truth(mask)
    kept = _kept(pos, obj.shape)
    assert (kept[1:] & obj[1:]).sum() / obj[1:].sum() >= 0.9
    assert np.array_equal(pos, pos[np.lexsort((pos[:, 2], pos[:, 1], pos[:, 0]))])  # (t, h, w) order


def test_same_input_same_selection(clips):
    path = clips["pan"][0]
    assert np.array_equal(patchify(path).positions, patchify(path).positions)


def test_encoded_fields_follow_the_shard_contract(clips):
    path = clips["still_camera"][0]
    result = patchify(path)
    fields = encode(result)
    pos = decode_npy(fields["pos_npy"])
    assert pos.dtype == np.int16 and np.array_equal(pos, result.positions)
    mosaic = shard_fields.image(fields["patches_jpg"])
    assert mosaic.shape == (2048 // MOSAIC_COLS * 16, MOSAIC_COLS * 16, 3)
    # the mosaic holds the pixels at those positions (compare with PyAV's own RGB decode)
    with av.open(path) as c:
        rgb = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.int16)
    cells = shard_fields.mosaic(fields["patches_jpg"], len(pos)).astype(np.int16)
    t, h, w = pos[:, 0], pos[:, 1], pos[:, 2]
    truth = np.stack([rgb[a, b * 16 : b * 16 + 16, c * 16 : c * 16 + 16] for a, b, c in zip(t, h, w, strict=True)])
    assert np.abs(cells - truth).mean() < 10  # JPEG q90 on noisy texture; a wrong patch differs by ~60
    frames, ids = shard_fields.frames(fields["frames_jpg"], fields)
    assert [f.shape for f in frames] == [(256, 256, 3)] * 4 and ids == [0, 21, 42, 63]
    assert np.abs(frames[1].astype(np.int16) - rgb[21]).mean() < 6
    meta = {"modality": "video", **{k: fields[k] for k in ("codec", "frames")}}
    check_sample({"json": encode_json(meta), "patches.jpg": fields["patches_jpg"], "pos.npy": fields["pos_npy"]})


# ------------------------------------------------------------------------------------------- bad input


def _write_video(path, codec="libx264", pix_fmt="yuv420p", size=(64, 64), frames=8, pts=None, options=None):
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=24)
        s.width, s.height, s.pix_fmt = size[0], size[1], pix_fmt
        s.codec_context.options = options or {}
        if pts is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        for i in range(frames):
            img = np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            c.mux(s.encode(frame))
        c.mux(s.encode())


def test_truncated_file_uses_what_decodes(clips, tmp_path):
    data = open(clips["pan"][0], "rb").read()
    cut = data[: len(data) * 2 // 5]
    with pytest.raises(VideoError, match="frame"):
        patchify(cut, PatchifyConfig(min_frames=64))
    result = patchify(cut, PatchifyConfig(min_frames=8))
    t = len(result.clip.frame_ids)
    assert 8 <= t < 64 and result.facts["truncated"]
    assert result.positions[:, 0].max() < t and len(result.positions) == round(0.125 * t * 256)


def test_not_a_video():
    with pytest.raises(VideoError, match="not a readable video"):
        patchify(b"this is not a video at all" * 100)


def test_audio_only(tmp_path):
    path = tmp_path / "tone.mka"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mp2", rate=44100)
        samples = (np.sin(np.arange(44100) / 10) * 3000).astype(np.int16)[None]
        for i in range(0, 44100, 1152):
            frame = av.AudioFrame.from_ndarray(samples[:, i : i + 1152], format="s16", layout="mono")
            frame.sample_rate = 44100
            c.mux(s.encode(frame))
        c.mux(s.encode())
    with pytest.raises(VideoError, match="no video stream"):
        patchify(str(path))


def test_tiny_frames(tmp_path):
    path = tmp_path / "tiny.mp4"
    _write_video(path, size=(16, 16))
    with pytest.raises(VideoError, match="16x16"):
        patchify(str(path))


def test_hevc_policy_refuse(clips):
    with pytest.raises(VideoError, match="hevc_policy"):
        patchify(clips["pan_hevc"][0], PatchifyConfig(hevc_policy="refuse"))


# ------------------------------------------------------------------------------------------- stage


def test_stage_runs_in_process(clips, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 5000)
    items = [
        {"key": "good", "uri": clips["pan"][0], "modality": "video", "partition": 0},
        {"key": "bad", "uri": str(bad), "modality": "video", "partition": 0},
        {"key": "img", "uri": "/nowhere.jpg", "modality": "image", "partition": 0},
    ]
    from curate.stage import new_rows, to_rows

    out = to_rows(run_in_process([CodecPatchify(budget=0.0625)], new_rows(items)))
    good, failed, image = out
    assert good["status"] == "live" and failed["status"] == "failed" and image["status"] == "live"
    assert failed["reason"].startswith("codec_patchify") and failed["patches_jpg"] is None
    assert "not a readable video" in failed.get("detail", failed["reason"])
    assert image["pos_npy"] is None  # other modalities pass through untouched
    pos = decode_npy(good["pos_npy"])
    assert pos.shape == (1024, 3) and good["meta"]["codec"]["k"] == 1024
    assert good["meta"]["codec"]["signal"] == "codec_mvs" and good["meta"]["frames"]["ids"] == [0, 21, 42, 63]
    assert shard_fields.image(good["frames_jpg"]).shape == (1024, 256, 3)
    assert io.BytesIO(good["patches_jpg"]).read(2) == b"\xff\xd8"


def test_reasons_name_the_cause_and_small_or_short_videos_are_dropped(clips, tmp_path):
    """Each cause is its own countable reason; a readable video too small or too short is dropped, not failed."""
    from curate.demo.synthetic_video import make_clip
    from curate.stage import new_rows, to_rows

    _write_video(tmp_path / "tiny.mp4", size=(16, 16))
    _write_video(tmp_path / "two_frames.mp4", size=(64, 64), frames=2)
    (tmp_path / "bytes.mp4").write_bytes(b"\x00" * 5000)
    make_clip(tmp_path / "raw.h264", size=64, frames=8)  # an elementary stream: no timestamps
    data = open(clips["pan"][0], "rb").read()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 2 // 5])
    names = ["tiny.mp4", "two_frames.mp4", "bytes.mp4", "raw.h264"]
    items = [{"key": n, "uri": str(tmp_path / n), "modality": "video", "partition": 0} for n in names]
    out = to_rows(run_in_process([CodecPatchify()], new_rows(items)))
    assert {r["key"]: (r["status"], r["reason"]) for r in out} == {
        "tiny.mp4": ("dropped", "codec_patchify/too_small"),
        "two_frames.mp4": ("dropped", "codec_patchify/too_short"),
        "bytes.mp4": ("failed", "codec_patchify/unreadable"),
        "raw.h264": ("failed", "codec_patchify/no_timestamps"),
    }
    assert "16x16" in out[0]["detail"] and "no clip of 16 frames" in out[1]["detail"]
    cut = [{"key": "cut", "uri": str(tmp_path / "cut.mp4"), "modality": "video", "partition": 0}]
    for isolate in (False, True):  # isolated: the cause crosses the process boundary with the error
        (row,) = to_rows(run_in_process([CodecPatchify(min_frames=64, isolate=isolate)], new_rows(cut)))
        assert (row["status"], row["reason"]) == ("failed", "codec_patchify/truncated")
        assert "truncated or corrupt" in row["detail"]
