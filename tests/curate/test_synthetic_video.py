"""The synthetic clip generator: its mask must say exactly where the decoded video moves."""

from __future__ import annotations

import av
import numpy as np
import pytest

from curate.demo.synthetic_video import make_clip


def _decode(path) -> tuple[np.ndarray, list[str], str]:
    with av.open(str(path)) as c:
        frames, kinds = [], []
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24").astype(np.int16))
            kinds.append(av.video.frame.PictureType(f.pict_type).name)
        return np.stack(frames), kinds, c.streams.video[0].codec_context.name


def test_mask_marks_the_moving_object_and_nothing_else(tmp_path):
    path = tmp_path / "a.mp4"
    mask = make_clip(path, frames=24, seed=1)
    video, _, codec = _decode(path)
    assert codec == "h264" and video.shape == (24, 256, 256, 3) and mask.shape == (24, 256, 256)
    change = np.abs(np.diff(video, axis=0)).sum(-1)  # what changes between frames
    moved = mask[1:] | mask[:-1]
    assert change[~moved].mean() < 3  # the background does not move (codec noise only)
    assert change[moved].mean() > 40  # where the object is or was, pixels change a lot
    centre = np.array([np.argwhere(m).mean(axis=0) for m in mask])
    steps = np.linalg.norm(np.diff(centre, axis=0), axis=1)
    assert (steps > 2.5).all()  # it moves every frame (3-6 px/frame, bounces included)
    areas = mask.sum(axis=(1, 2))
    assert areas.min() == areas.max() > 0.08 * 256 * 256  # one rigid object of the documented size


def test_pan_moves_the_background_by_the_requested_pixels(tmp_path):
    path = tmp_path / "pan.mp4"
    mask = make_clip(path, frames=16, pan=(2, 1), seed=0)
    video, _, _ = _decode(path)
    t = 10  # frame t shows the canvas at (2t, t): frame t at (y, x) = frame 0 at (y + t, x + 2t)
    now, then = video[t, : 256 - t, : 256 - 2 * t], video[0, t:, 2 * t :]
    still = ~(mask[t, : 256 - t, : 256 - 2 * t] | mask[0, t:, 2 * t :])
    assert np.abs(now - then).sum(-1)[still].mean() < 8
    assert np.abs(video[t] - video[0]).sum(-1)[~(mask[t] | mask[0])].mean() > 30  # it really moved


def test_static_clip_has_empty_mask_and_still_frames(tmp_path):
    path = tmp_path / "still.mp4"
    mask = make_clip(path, frames=12, static=True, pan=(3, 3))
    video, _, _ = _decode(path)
    assert not mask.any()
    assert np.abs(np.diff(video, axis=0)).mean() < 2


def test_hevc_with_fixed_gop(tmp_path):
    path = tmp_path / "h.mp4"
    make_clip(path, codec="hevc", frames=40, gop=16, bframes=0)
    _, kinds, codec = _decode(path)
    assert codec == "hevc"
    assert [i for i, k in enumerate(kinds) if k == "I"] == [0, 16, 32]
    assert "B" not in kinds


def test_bad_arguments():
    with pytest.raises(ValueError, match="codec"):
        make_clip("/nonexistent.mp4", codec="vp9")
    with pytest.raises(ValueError, match="even"):
        make_clip("/nonexistent.mp4", size=(63, 64))
