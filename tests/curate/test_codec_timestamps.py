"""Sparse and variable timestamps are complete, valid files: frames are taken by presentation time.

Ground truth. A coloured square moves at 60 px per second, so where it is in a frame follows from
that frame's timestamp alone. A sparse AVI (frames at 0, 5, 12, ... of a 15 fps clock, the empty
chunks in between counted by the container, as old Cinepak files are) must be probed as complete
and curated from the frames it has; a phone-like variable-rate file must give the frames nearest
to an even time grid. Either way the square's patches are kept.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from curate.codec import PatchifyConfig, patchify
from curate.stages.video import probe, truncated

SIZE, SIDE, SPEED = 128, 32, 60.0  # px, px, px per second
CFG = PatchifyConfig(size=SIZE, frames=32, min_frames=16, budget=0.25)


def _square_x(seconds: float) -> int:
    return 8 + int(seconds * SPEED) % (SIZE - SIDE - 16)  # across the frame, then from the left again


def _write(path, codec: str, pix_fmt: str, pts: list[int], time_base: Fraction) -> None:
    rng = np.random.default_rng(0)
    background = np.kron(rng.integers(40, 216, (17, 17, 3)), np.ones((8, 8, 1)))[:SIZE, :SIZE].astype(np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=15)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, pix_fmt
        stream.codec_context.time_base = time_base
        for p in pts:
            image = background.copy()
            x = _square_x(p * float(time_base))
            image[48 : 48 + SIDE, x : x + SIDE] = np.clip(
                np.array([200, 70, 40]) + rng.integers(-12, 13, (SIDE, SIDE, 3)), 0, 255
            )
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = p, time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def _coverage(result, seconds: np.ndarray) -> float:
    grid = SIZE // 16
    kept = np.zeros((len(seconds), grid, grid), bool)
    kept[tuple(result.positions.T)] = True
    truth = np.zeros_like(kept)
    for k, t in enumerate(seconds):
        mask = np.zeros((SIZE, SIZE), bool)
        mask[48 : 48 + SIDE, _square_x(t) : _square_x(t) + SIDE] = True
        truth[k] = mask.reshape(grid, 16, grid, 16).mean(axis=(1, 3)) >= 0.5
    return (kept & truth).sum() / truth.sum()


@pytest.mark.parametrize("codec, pix_fmt", [("cinepak", "rgb24"), ("mpeg4", "yuv420p")])
def test_sparse_avi_is_complete_and_curated_from_the_frames_it_has(tmp_path, codec, pix_fmt):
    rng = np.random.default_rng(1)
    pts = np.concatenate([[0], np.cumsum(rng.integers(1, 12, 40))]).tolist()  # gaps of 0-10 skipped frames
    path = tmp_path / f"sparse_{codec}.avi"
    _write(path, codec, pix_fmt, pts, Fraction(1, 15))
    facts = probe(path.read_bytes(), str(path))
    assert facts["frames"] > 3 * facts["frames_present"] == 3 * len(pts)  # the container counts the empty chunks
    assert not truncated(facts) and abs(facts["end_time"] - facts["duration"]) < 0.1
    result = patchify(str(path), CFG)
    assert result.facts["sampling"] == "time" and result.facts["frame_ids"] == list(range(32))  # every frame once
    assert _coverage(result, np.array(pts[:32]) / 15) >= 0.9


def test_truncation_is_told_from_sparse_timestamps(tmp_path):
    path = tmp_path / "whole.mkv"
    _write(path, "libx264", "yuv420p", list(range(0, 90)), Fraction(1, 15))
    data = path.read_bytes()
    facts = probe(data, "whole")
    assert not truncated(dict(facts, frames=90))
    cut = data[: len(data) // 2]
    facts = probe(cut, "cut")
    assert truncated(dict(facts, frames=90, duration=6.0)) and facts["end_time"] < 4.5


def test_variable_frame_rate_takes_the_frames_nearest_an_even_time_grid(tmp_path):
    rng = np.random.default_rng(2)
    ms = np.cumsum(np.concatenate([[0], rng.integers(25, 56, 79)]))  # a phone camera's clock: 25-55 ms apart
    path = tmp_path / "vfr.mkv"
    _write(path, "libx264", "yuv420p", ms.tolist(), Fraction(1, 1000))
    result = patchify(str(path), PatchifyConfig(size=SIZE, frames=32, min_frames=16, budget=0.25, fps=10))
    ids = result.facts["frame_ids"]
    assert result.facts["sampling"] == "time" and len(ids) == 32 and ids == sorted(set(ids))
    for k, frame in enumerate(ids):  # each the frame nearest to its grid time (ties either way)
        assert abs(ms[frame] - 100 * k) <= np.abs(ms - 100 * k).min() + 0.5
    assert _coverage(result, ms[ids] / 1000) >= 0.9


def test_a_cut_made_by_stream_copy_starts_at_its_edit_point(tmp_path):
    """``ffmpeg -ss 0.42 -c copy`` keeps the GOP before the cut and hides its first frames with an edit list:
    the container marks them discarded and the decoder never outputs them. Those are not frames of the
    video: its first clip starts at the cut (this failed as truncated) and holds exactly what the source
    shows from there, as a clip table's span of the source gives it (but for the first frame's predecessor,
    which the cut does not show), and so do the clips after it."""
    from curate.codec.patchify import patchify_all
    from curate.demo.synthetic_video import make_clip

    source, cut = tmp_path / "source.mp4", tmp_path / "cut.mp4"
    make_clip(source, size=(320, 240), frames=96, fps=24, gop=48, seed=3, objects=2)
    with av.open(str(source)) as src, av.open(str(cut), "w", format="mp4") as out:
        stream = src.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.size:  # frame 10 shown at 0: frames 0-9 (keyframe 0 among them) before the edit
                packet.pts, packet.dts = packet.pts - 10 * packet.duration, packet.dts - 10 * packet.duration
                packet.stream = copy
                out.mux(packet)
    with av.open(str(cut)) as c:
        assert sum(p.is_discard for p in c.demux(c.streams.video[0]) if p.size) == 10  # the edit list
    cfg = PatchifyConfig(frames=32, min_frames=16)
    got = [r for _, r in patchify_all(str(cut), cfg)]
    want = [r for _, r in patchify_all(str(source), cfg, span=(10 / 24, None))]
    assert [r.facts["frame_ids"][0] for r in got] == [0, 32, 64]
    assert [r.facts["frame_ids"][0] for r in want] == [10, 42, 74]
    for ours, theirs in zip(got, want, strict=True):
        assert abs(ours.facts["start_time"] - (theirs.facts["start_time"] - 10 / 24)) < 1e-3
        for plane in ("y", "u", "v"):
            assert np.array_equal(getattr(ours.clip, plane), getattr(theirs.clip, plane))
    assert not got[0].clip.has_prev[0] and want[0].clip.has_prev[0]  # frame 9 is not shown in the cut
    assert np.array_equal(got[0].scores[1:], want[0].scores[1:])
    for ours, theirs in zip(got[1:], want[1:], strict=True):
        assert np.array_equal(ours.positions, theirs.positions) and ours.facts["cuts"] == theirs.facts["cuts"]
