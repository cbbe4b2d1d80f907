"""Synthetic test and demo clips with a known ground-truth motion mask.

Real photographs that ship with scikit-image form a textured background (optionally panned by a
moving camera); textured discs and squares cut from other photographs move over it in straight
lines, bouncing off the frame edges. The clip is encoded by real libx264/libx265 through PyAV,
so every codec signal the patchifier reads comes from a real encoder, while the returned
(T, H, W) mask says exactly where the moving objects are.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np
import skimage.data

_BACKGROUNDS = ("astronaut", "coffee", "chelsea")  # textured everywhere (background="rocket": flat sky)
_TEXTURES = ("rocket", "chelsea", "astronaut")
_ENCODERS = {"h264": "libx264", "hevc": "libx265"}
_FLIPS = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]])  # velocity signs after bounces


def make_clip(
    path: str | Path,
    *,
    codec: str = "h264",
    size: int | tuple[int, int] = 256,
    frames: int = 64,
    fps: int = 24,
    pan: tuple[float, float] | None = None,
    objects: int = 1,
    static: bool = False,
    seed: int = 0,
    gop: int | None = None,
    object_size: float = 0.36,
    bframes: int | None = None,
    crf: int = 23,
    background: str | None = None,
) -> np.ndarray:
    """Render and encode a clip; return the bool mask (T, H, W) of moving-object pixels.

    ``size`` is a square side or ``(width, height)``. ``pan=(dx, dy)`` moves the camera by that
    many pixels per frame (the background content shifts by ``(-dx, -dy)``). ``object_size`` is
    the total diameter of the objects as a fraction of the shorter side, split over ``objects``
    (so their total area stays constant). ``static=True`` renders a still scene (objects do not
    move, no pan) and returns an all-False mask. ``gop`` fixes the keyframe interval (closed GOP,
    no scene cuts); ``bframes`` overrides the encoder's default B-frame count. The container is
    chosen by the suffix (``.mp4`` gets ``+faststart`` so a truncated file still demuxes).
    """
    if codec not in _ENCODERS:
        raise ValueError(f"codec must be one of {sorted(_ENCODERS)}, got {codec!r}")
    width, height = (size, size) if isinstance(size, int) else size
    if width % 2 or height % 2 or min(width, height) < 32:
        raise ValueError(f"size must be even and at least 32, got {width}x{height}")
    rng = np.random.default_rng(seed)
    pan_xy = np.zeros(2) if (pan is None or static) else np.asarray(pan, dtype=float)

    # Background canvas: a photograph, mirrored to cover the frame plus the whole pan path.
    photo = getattr(skimage.data, background or _BACKGROUNDS[seed % len(_BACKGROUNDS)])()[..., :3]
    travel = np.abs(pan_xy) * frames
    need_h, need_w = height + int(np.ceil(travel[1])) + 1, width + int(np.ceil(travel[0])) + 1
    canvas = np.pad(
        photo, ((0, max(0, need_h - photo.shape[0])), (0, max(0, need_w - photo.shape[1])), (0, 0)), "reflect"
    )
    origin = np.array([0.0 if pan_xy[0] >= 0 else travel[0], 0.0 if pan_xy[1] >= 0 else travel[1]])

    # Objects: textured sprites (disc or square) with a position and a velocity in frame pixels.
    diameter = max(8, int(object_size * min(width, height) / np.sqrt(objects)))
    yy, xx = np.mgrid[:diameter, :diameter]
    disc = (yy - (diameter - 1) / 2) ** 2 + (xx - (diameter - 1) / 2) ** 2 <= (diameter / 2) ** 2
    sprites = []
    for i in range(objects):
        tex_src = getattr(skimage.data, _TEXTURES[(seed + i) % len(_TEXTURES)])()[..., :3]
        ty = rng.integers(0, tex_src.shape[0] - diameter)
        tx = rng.integers(0, tex_src.shape[1] - diameter)
        # photo crop blended with coarse seeded noise: textured everywhere, so the codec can see it move
        blocks = rng.integers(0, 256, (-(-diameter // 4), -(-diameter // 4), 3)).repeat(4, 0).repeat(4, 1)
        texture = (tex_src[ty : ty + diameter, tx : tx + diameter] // 2 + blocks[:diameter, :diameter] // 2).astype(
            np.uint8
        )
        shape = disc if i % 2 == 0 else np.ones_like(disc)
        pos = rng.uniform([0, 0], [width - diameter, height - diameter])
        while True:  # object motion clearly distinct from the background's (-pan), also after bounces
            angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(3.0, 6.0)
            vel = speed * np.array([np.cos(angle), np.sin(angle)])
            if min(np.linalg.norm(vel * flip + pan_xy) for flip in _FLIPS) >= 3.0:
                break
        sprites.append([texture, shape, pos, np.zeros(2) if static else vel])

    mask = np.zeros((frames, height, width), dtype=bool)

    def render():
        for t in range(frames):
            ox, oy = np.round(origin + pan_xy * t).astype(int)
            img = canvas[oy : oy + height, ox : ox + width].copy()
            for sprite in sprites:
                texture, shape, pos, vel = sprite
                x, y = np.round(pos).astype(int)
                region = img[y : y + diameter, x : x + diameter]
                region[shape] = texture[shape]
                if not static:
                    mask[t, y : y + diameter, x : x + diameter] |= shape
                pos += vel  # bounce off the frame edges, keeping the object fully inside
                for axis, limit in ((0, width - diameter), (1, height - diameter)):
                    if not 0 <= pos[axis] <= limit:
                        vel[axis] = -vel[axis]
                        pos[axis] = np.clip(pos[axis], 0, limit)
            yield img

    write_video(path, render(), codec=codec, fps=fps, gop=gop, bframes=bframes, crf=crf)
    return mask


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    *,
    codec: str = "h264",
    fps: int = 24,
    gop: int | None = None,
    bframes: int | None = None,
    crf: int = 23,
    threads: int | None = None,
) -> None:
    """Encode RGB frames (each ``(H, W, 3)`` uint8, even sides) with libx264/libx265 through PyAV.

    The settings are :func:`make_clip`'s (preset ``veryfast``, yuv420p; ``gop`` and ``bframes`` as
    there). ``threads=1`` makes the bytes independent of the machine's core count (the encoder
    otherwise picks its thread count from it). ``.mp4`` files get ``+faststart``.
    """
    if codec not in _ENCODERS:
        raise ValueError(f"codec must be one of {sorted(_ENCODERS)}, got {codec!r}")
    container = av.open(str(path), "w", options={"movflags": "+faststart"} if str(path).endswith(".mp4") else {})
    try:
        stream = None
        for img in frames:
            if stream is None:
                stream = container.add_stream(_ENCODERS[codec], rate=fps)
                stream.height, stream.width = img.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.codec_context.options = _encoder_options(codec, gop, bframes, crf, threads)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        if stream is None:
            raise ValueError("no frames to encode")
        container.mux(stream.encode())
    finally:
        container.close()


def _encoder_options(
    codec: str, gop: int | None, bframes: int | None, crf: int, threads: int | None = None
) -> dict[str, str]:
    opts = {"preset": "veryfast", "crf": str(crf)}
    params = []
    if threads is not None:
        params.append(f"threads={threads}" if codec == "h264" else f"pools={threads}:frame-threads={threads}")
    if gop is not None:
        params += [f"keyint={gop}", f"min-keyint={gop}", "scenecut=0"]
    if bframes is not None:
        params.append(f"bframes={bframes}")
    if codec == "h264":
        if params:
            opts["x264-params"] = ":".join(params)
    else:
        opts["x265-params"] = ":".join(params + ["log-level=error"])
    return opts
