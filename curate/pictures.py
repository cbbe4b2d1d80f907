"""The picture an image or OCR input stands for, read one way by every stage that decodes one: an
image file or tar member (``media.decode_image``), or one page of a PDF (``meta["pdf"]`` names the
page and the DPI to render it at; ``curate.pdf``); and the pixels of a curated payload (``jpg``).
Each is decoded once per stage chain (``curate.decodes``), however many stages read it."""

from __future__ import annotations

import io

from PIL import Image

from curate import decodes
from curate.media import MAX_PIXELS, WHITE, decode_image
from shards import storage

REDUCED = (64, 64)  # the smallest size the reduced grey decode may give (JPEG DCT scaling)


def read_picture(
    uri: str, meta: dict, max_pixels: int = MAX_PIXELS, background: tuple[int, int, int] = WHITE, min_side: int = 0
) -> tuple[Image.Image, dict]:
    """The decoded RGB picture and its facts (see ``decode_image``); ``facts["blake3"]`` is the digest
    of its source bytes, for exact dedup: the file's, or for a PDF page that of its rendered pixels
    (a page has no bytes of its own; the same page at the same size renders to the same pixels).
    The picture is shared with later stages of the chain: never change it in place."""
    page = meta.get("pdf")
    key = (uri, page and (page["page"], page["dpi"]), max_pixels, tuple(background), min_side)
    img, facts = decodes.once("source", key, lambda: _read(uri, page, max_pixels, background, min_side), _size)
    return img, dict(facts)


def _read(uri: str, page: dict | None, max_pixels: int, background: tuple, min_side: int) -> tuple[Image.Image, dict]:
    if page:
        from curate.pdf import render_page  # here: image runs never load PDFium

        img, facts = render_page(uri, page["page"], page["dpi"], max_pixels, min_side)
        facts["blake3"] = storage.digest(img.tobytes())
        return img, facts
    data = storage.read_bytes(uri)
    img, facts = decode_image(data, uri, max_pixels, background, min_side=min_side)
    facts["blake3"] = storage.digest(data)  # of the bytes in memory: the source is read once
    return img, facts


def pixels(data: bytes) -> Image.Image:
    """A payload (the curated ``jpg``, or any picture's bytes) as RGB, as ``shards.fields.image`` reads
    it; shared with later stages of the chain: never change it in place."""
    data = bytes(data)
    return decodes.once("pixels", data, lambda: Image.open(io.BytesIO(data)).convert("RGB"), _size)


def reduced_grey(data: bytes) -> Image.Image:
    """A payload decoded to grey at the smallest JPEG scale of at least :data:`REDUCED` (other formats:
    full size): what the tiny-image embedding and the perceptual-only hashes read."""
    data = bytes(data)

    def decode() -> Image.Image:
        img = Image.open(io.BytesIO(data))
        img.draft("L", REDUCED)
        return img.convert("L")

    return decodes.once("reduced", data, decode, _size)


def _size(picture) -> int:
    img = picture[0] if isinstance(picture, tuple) else picture
    return img.width * img.height * len(img.getbands())
