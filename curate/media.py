"""Opening source media, one way for every caller: video containers through PyAV, still images
through Pillow. Errors name the input and say what is wrong, so a stage can fail that row alone.

Payloads already inside a run (the curated ``jpg`` column) are shard fields: ``shards.fields``
decodes those, for curation and training alike.
"""

from __future__ import annotations

import contextlib
import io

import av
from PIL import Image, ImageOps

MAX_PIXELS = 20_000 * 20_000  # larger images are refused before decoding (decompression bombs)


class VideoError(ValueError):
    """A video that cannot be curated; the message says why (and what to do, where there is a fix)."""


def open_video(source: bytes | str, uri: str = ""):
    """A PyAV input container over ``source`` (bytes in memory, or a path / file-like object)."""
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else source, metadata_errors="ignore")
    except av.FFmpegError as exc:
        prefix = f"{uri}: " if uri else ""
        raise VideoError(f"{prefix}not a readable video container ({exc})") from None


@contextlib.contextmanager
def _pillow_limit_off():
    """Pillow's own bomb check reads a module global; our limit is checked on the parsed header instead."""
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def decode_image(data: bytes, uri: str, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, str]:
    """Fully decode (truncation surfaces here, not later), apply EXIF orientation; RGB and the file format."""
    try:
        with _pillow_limit_off():
            img = Image.open(io.BytesIO(data))
        fmt = img.format or "unknown"
        if img.width * img.height > max_pixels:
            raise ValueError(f"{uri}: refused, too many pixels: {img.width}x{img.height} > {max_pixels}")
        img.load()
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{uri}: not a readable image ({exc})") from None
    img = ImageOps.exif_transpose(img)
    return img.convert("RGB"), fmt
