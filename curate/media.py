"""Opening source media, one way for every caller: video containers through PyAV, still images
through Pillow. Errors name the input and say what is wrong, so a stage can fail that row alone.

Payloads already inside a run (the curated ``jpg`` column) are shard fields: ``shards.fields``
decodes those, for curation and training alike.
"""

from __future__ import annotations

import contextlib
import io
import os

import av
from PIL import Image, ImageOps

from shards import storage

MAX_PIXELS = 20_000 * 20_000  # larger images are refused before decoding (decompression bombs)


class VideoError(ValueError):
    """A video that cannot be curated; the message says why (and what to do, where there is a fix)."""


@contextlib.contextmanager
def open_video(source, uri: str = ""):
    """A PyAV input container over ``source``, for a ``with`` block; never the whole file in memory
    unless ``source`` already is bytes.

    ``source``: a local path or ``s3://`` URI (opened through :func:`shards.storage.open_media`: FFmpeg
    reads the file, or seeks in a ranged S3 stream, which is closed with the container), bytes (kept
    for callers that hold them), or a seekable binary file object (the caller's to close).
    """
    owned = None
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    elif isinstance(source, str):
        source = owned = storage.open_media(source)
        if isinstance(owned, str):
            owned = None
    try:
        try:
            container = av.open(source, metadata_errors="ignore")
        except av.FFmpegError as exc:
            prefix = f"{uri}: " if uri else ""
            raise VideoError(f"{prefix}not a readable video container ({exc})") from None
        with container:
            yield container
    finally:
        if owned is not None:
            owned.close()


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
