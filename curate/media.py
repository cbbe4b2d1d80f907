"""Opening source media, one way for every caller: video containers through PyAV, still images
through Pillow. Errors name the input and say what is wrong, so a stage can fail that row alone.

Payloads already inside a run (the curated ``jpg`` column) are shard fields: ``shards.fields``
decodes those, for curation and training alike.
"""

from __future__ import annotations

import contextlib
import io
import math
import os

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageOps

from shards.storage import open_media

MAX_PIXELS = 20_000 * 20_000  # larger images are refused before decoding (decompression bombs)
WHITE = (255, 255, 255)  # what transparent pixels become, unless a stage says otherwise
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class MediaError(ValueError):
    """An input that cannot be curated; the message says why (and what to do, where there is a fix).

    ``code`` names the cause in the ledger's reason (``codec_patchify/truncated``,
    ``image_decode/unreadable``), so a run's summary counts causes, not one exception type.
    """

    def __init__(self, message: str, code: str = "unreadable"):
        super().__init__(message)
        self.code = code  # pickled with the exception's __dict__, so it crosses isolated processes


class VideoError(MediaError):
    """A video that cannot be curated. Causes in :data:`TOO_SMALL_OR_SHORT` describe a readable
    video that is simply too small or too short: stages drop those rather than fail them."""


class ImageError(MediaError):
    """An image or OCR page that cannot be curated: ``unreadable``, ``truncated``,
    ``too_many_pixels``, ``no_white_point``, ``no_transcript``, ``transcript_not_utf8``."""


TOO_SMALL_OR_SHORT = ("too_small", "too_short")


@contextlib.contextmanager
def open_video(source, uri: str = ""):
    """A PyAV input container over ``source``, for a ``with`` block; never the whole file in memory
    unless ``source`` already is bytes.

    ``source``: a local path, ``s3://`` URI or tar member's URI (``storage.member_uri``), opened through
    :func:`shards.storage.open_media` (FFmpeg reads the file, or seeks in a ranged S3 stream or in the
    member's bytes in place, closed with the container), bytes (kept
    for callers that hold them), or a seekable binary file object (the caller's to close).
    """
    owned = None
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    elif isinstance(source, str):
        source = owned = open_media(source)
        if isinstance(owned, str):
            owned = None
    import av  # here, not with the module: image runs never load FFmpeg

    try:
        try:
            container = av.open(source, metadata_errors="ignore")
        except av.FFmpegError as exc:
            prefix = f"{uri}: " if uri else ""
            raise VideoError(f"{prefix}not a readable video container ({exc})", "unreadable") from None
        with container:
            yield container
    finally:
        if owned is not None:
            owned.close()


def pixel_aspect(stream) -> float:
    """Displayed width over height of a video's pixels (anamorphic SD and DVD: 32:27 and the like), else 1."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio  # None or 0/1: unknown
    return float(sar) if sar else 1.0


@contextlib.contextmanager
def _pillow_limit_off():
    """Pillow's own bomb check reads a module global; our limit is checked on the parsed header instead."""
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def decode_image(
    data: bytes,
    uri: str,
    max_pixels: int = MAX_PIXELS,
    background: tuple[int, int, int] = WHITE,
    min_side: int = 0,
) -> tuple[Image.Image, dict]:
    """Fully decode (truncation surfaces here, not later) to 8-bit sRGB; the image and its facts.

    EXIF orientation is applied; 16-bit, 32-bit and float samples are scaled by the white point
    their format declares (or refused with the reason); an embedded ICC profile is converted to
    sRGB; transparency is composited over ``background``. ``max_pixels`` refuses an image before
    its pixels are decoded; ``min_side`` lets a JPEG decode at a reduced scale (DCT scaling) whose
    shorter side is still at least that many pixels, so a huge photo never decodes in full.
    ``facts["size"]``: the full-resolution size as displayed (after the EXIF turn), whatever scale
    the decoder used, so a resize target computed from it does not depend on that scale.
    """
    try:
        with _pillow_limit_off():
            img = Image.open(io.BytesIO(data))
        facts = {"format": (img.format or "unknown").lower(), "width": img.width, "height": img.height}
        if img.width * img.height > max_pixels:
            raise ImageError(
                f"{uri}: refused, too many pixels: {img.width}x{img.height} > {max_pixels}", "too_many_pixels"
            )
        if min_side and img.format == "JPEG":
            scale = min_side / min(img.size)
            img.draft(img.mode, (math.ceil(img.width * scale), math.ceil(img.height * scale)))
        img.load()
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        code = "truncated" if "truncated" in str(exc) else "unreadable"
        raise ImageError(f"{uri}: not a readable image ({exc})", code) from None
    facts["mode"] = img.mode
    icc = img.info.get("icc_profile")
    depth = _sample_depth(img)  # read before the transpose, which drops a TIFF's tags
    turned = img.getexif().get(ExifTags.Base.Orientation, 1) in _QUARTER_TURNS
    facts["size"] = (facts["height"], facts["width"]) if turned else (facts["width"], facts["height"])
    ImageOps.exif_transpose(img, in_place=True)  # no copy of an upright image
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _eight_bit(img, uri, *depth)
    colour, alpha = _split_alpha(img)
    if icc:
        colour, facts["icc"] = _to_srgb(colour, icc)
    if colour.mode != "RGB":
        colour = colour.convert("RGB")
    if alpha is not None:
        colour = Image.composite(colour, Image.new("RGB", colour.size, tuple(background)), alpha)
    return colour, facts


def _sample_depth(img: Image.Image) -> tuple[int, bool]:
    """Bits per sample and signedness a TIFF declares (BitsPerSample, SampleFormat); else 16, unsigned."""
    tags = getattr(img, "tag_v2", None) or {}
    bits, sample_format = tags.get(258, 16), tags.get(339, 1)
    bits = bits[0] if isinstance(bits, tuple) else bits
    return bits, (sample_format[0] if isinstance(sample_format, tuple) else sample_format) == 2


def _eight_bit(img: Image.Image, uri: str, bits: int, signed: bool) -> Image.Image:
    """A 16-bit, 32-bit integer or float grey image as 8 bits, scaled by its declared white point.

    Pillow's own conversion clips (16-bit grey turns white, floats in 0..1 turn black). Integers
    scale by their bit depth, floats by 1.0; samples outside that range have no white point to
    scale by, so the image is refused with the range it holds.
    """
    a = np.asarray(img)
    if img.mode == "F":
        white, what = 1.0, "float"
    elif img.mode == "I" and bits == 32 and not signed:
        a, white, what = a.view(np.uint32), 2**32 - 1, "unsigned 32-bit"  # Pillow reads uint32 as int32
    elif img.mode == "I" and bits == 32:
        white, what = 2**31 - 1, "signed 32-bit"
    else:
        white, what = 65535, "16-bit"
    lo, hi = float(np.min(a)), float(np.max(a))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > white:
        span = f"{what} samples span {lo:g}..{hi:g}, outside 0..{white:g}"
        raise ImageError(f"{uri}: {span}: no white point to scale by", "no_white_point")
    return Image.fromarray(np.rint(a.astype(np.float64) * (255.0 / white)).astype(np.uint8), "L")


def _split_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """The colour image (L, RGB or CMYK) and its alpha channel, if it has one (palette transparency too)."""
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        grey = img.mode in ("LA", "La") or (img.mode == "L" and "transparency" in img.info)
        with_alpha = img.convert("LA" if grey else "RGBA")
        return with_alpha.convert("L" if grey else "RGB"), with_alpha.getchannel("A")
    if img.mode in ("L", "RGB", "CMYK"):
        return img, None
    return img.convert("RGB"), None


def _to_srgb(img: Image.Image, icc: bytes) -> tuple[Image.Image, str]:
    """``img`` converted from its embedded ICC profile to sRGB (perceptual intent); the outcome, for meta."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(img, profile, _SRGB, outputMode="RGB"), "converted to sRGB"
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        return img, f"ignored, unusable profile ({exc})"
