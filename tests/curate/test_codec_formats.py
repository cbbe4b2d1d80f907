"""Any pixel format FFmpeg decodes is curated: 4:2:2, 4:4:4, 10-bit, RGB, grey, JPEG-range,
intra-only codecs, odd frame sizes.

Ground truth. Each clip is a fixed textured background with one square of a known colour moving
right by 3 px a frame, written by a real encoder in the given pixel format. The square's patches
must be kept (codecs without motion vectors take the H.264 re-encode), and the stored whole frames
must show the square in its colour (as the source's own decode shows it), so a wrong colour range
or matrix after conversion fails.
"""

from __future__ import annotations

import av
import numpy as np
import pytest

from curate.codec import PatchifyConfig, encode, patchify
from shards import fields

W, H, FRAMES, SIDE, STEP = 128, 128, 24, 32, 3
COLOUR = np.array([200, 70, 40])
CFG = PatchifyConfig(size=128, frames=FRAMES, min_frames=16, budget=0.25, keep_frames=2)

CASES = {  # name: (encoder, pixel format, container suffix)
    "h264_422": ("libx264", "yuv422p", ".mp4"),
    "h264_444_odd_size": ("libx264", "yuv444p", ".mkv"),
    "h264_10bit": ("libx264", "yuv420p10le", ".mp4"),
    "hevc_10bit": ("libx265", "yuv420p10le", ".mp4"),
    "av1_10bit": ("libsvtav1", "yuv420p10le", ".mkv"),  # crf 20: at its default 35 the texture is gone
    "prores_422_10bit": ("prores_ks", "yuv422p10le", ".mov"),
    "png_rgb": ("png", "rgb24", ".avi"),
    "mjpeg_jpeg_range": ("mjpeg", "yuvj422p", ".avi"),
    "ffv1_rgb": ("ffv1", "bgr0", ".mkv"),
    "ffv1_grey": ("ffv1", "gray", ".mkv"),
}


def _frames(width: int, height: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    coarse = rng.integers(40, 216, (height // 8 + 1, width // 8 + 1, 3))
    background = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width].astype(np.uint8)
    out = []
    for t in range(FRAMES):
        frame = background.copy()
        x, y = 8 + STEP * t, (height - SIDE) // 2
        tile = COLOUR + rng.integers(-12, 13, (SIDE, SIDE, 3))  # texture, so vectors have something to follow
        frame[y : y + SIDE, x : x + SIDE] = np.clip(tile, 0, 255)
        out.append(frame)
    return out


def _write(path, encoder: str, pix_fmt: str, width: int, height: int) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.options = {"crf": "20"} if encoder == "libsvtav1" else {}
        for image in _frames(width, height):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_pixel_format_is_curated_with_its_colours(tmp_path, name):
    encoder, pix_fmt, suffix = CASES[name]
    width = W + 1 if "odd" in name else W
    height = H + 1 if "odd" in name else H
    path = tmp_path / f"{name}{suffix}"
    _write(path, encoder, pix_fmt, width, height)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.format.name == pix_fmt  # the format under test reached the file
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    result = patchify(str(path), CFG)
    assert result.facts["selection"] == "top_k" and len(result.clip.frame_ids) == FRAMES

    # the square's patches (grid cells it fills at least half of, at the 128 x 128 grid) are kept
    sx, sy = CFG.size / width, CFG.size / height
    grid = CFG.size // CFG.patch
    kept = np.zeros((FRAMES, grid, grid), bool)
    kept[tuple(result.positions.T)] = True
    truth = np.zeros_like(kept)
    for t in range(FRAMES):
        mask = np.zeros((CFG.size, CFG.size), bool)
        x0, y0 = (8 + STEP * t) * sx, (height - SIDE) // 2 * sy
        mask[round(y0) : round(y0 + SIDE * sy), round(x0) : round(x0 + SIDE * sx)] = True
        truth[t] = mask.reshape(grid, CFG.patch, grid, CFG.patch).mean(axis=(1, 3)) >= 0.5
    assert (kept & truth).sum() / truth.sum() >= 0.9

    # stored whole frames show the square as the source's own decode does
    sample = encode(result, CFG)
    frames, ids = fields.frames(sample["frames_jpg"], {"frames": sample["frames"]})
    for frame, source_id in zip(frames, sample["frames"]["source_ids"], strict=True):
        x0, y0 = 8 + STEP * source_id + 6, (height - SIDE) // 2 + 6
        want = decoded[source_id][y0 : y0 + SIDE - 12, x0 : x0 + SIDE - 12].reshape(-1, 3).mean(0)
        gx, gy = round(x0 * sx), round(y0 * sy)
        got = frame[gy : gy + round((SIDE - 12) * sy), gx : gx + round((SIDE - 12) * sx)].reshape(-1, 3).mean(0)
        assert np.abs(got - want).max() < 10, f"{name}: square {got.round()} stored, source decodes {want.round()}"
