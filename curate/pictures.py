"""The picture an image or OCR input stands for, read one way by every stage that decodes one: an
image file or tar member (``media.decode_image``), or one page of a PDF (``meta["pdf"]`` names the
page and the DPI to render it at; ``curate.pdf``)."""

from __future__ import annotations

from PIL import Image

from curate.media import MAX_PIXELS, WHITE, decode_image
from shards import storage


def read_picture(
    uri: str, meta: dict, max_pixels: int = MAX_PIXELS, background: tuple[int, int, int] = WHITE, min_side: int = 0
) -> tuple[Image.Image, dict]:
    """The decoded RGB picture and its facts (see ``decode_image``); ``facts["blake3"]`` is the digest
    of its source bytes, for exact dedup: the file's, or for a PDF page that of its rendered pixels
    (a page has no bytes of its own; the same page at the same size renders to the same pixels)."""
    page = meta.get("pdf")
    if page:
        from curate.pdf import render_page  # here: image runs never load PDFium

        img, facts = render_page(uri, page["page"], page["dpi"], max_pixels, min_side)
        facts["blake3"] = storage.digest(img.tobytes())
        return img, facts
    data = storage.read_bytes(uri)
    img, facts = decode_image(data, uri, max_pixels, background, min_side=min_side)
    facts["blake3"] = storage.digest(data)
    return img, facts
