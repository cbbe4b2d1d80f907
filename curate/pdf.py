"""PDF documents through PDFium (``pypdfium2``): each page's size and text layer, and one page rendered.

A PDF source lists every page as an input (``curate.sources_pdf``); the stages that decode pictures
render the page a row names (``meta["pdf"]``) through ``curate.pictures``. A document is opened
where it lies: a local path, or an S3 object read by ranged GETs, never whole. Errors say what is
wrong with the file or the one page, so only that page fails: ``ImageError`` codes
``unreadable_pdf`` (the document does not open: not a PDF, truncated, encrypted), ``corrupt_page``
(one page does not load or render) and ``too_many_pixels``.
"""

from __future__ import annotations

import contextlib

import pypdfium2 as pdfium
from PIL import Image

from curate.media import ImageError
from shards import storage

POINTS_PER_INCH = 72  # PDF page sizes are in points


@contextlib.contextmanager
def open_pdf(uri: str):
    """The document at ``uri`` for a ``with`` block; closed (with its S3 stream) at the end."""
    source = storage.open_media(uri)
    try:
        try:
            doc = pdfium.PdfDocument(source)
        except pdfium.PdfiumError as exc:
            raise ImageError(f"{uri}: not a readable PDF ({exc})", "unreadable_pdf") from None
        try:
            yield doc
        finally:
            doc.close()
    finally:
        if not isinstance(source, str):
            source.close()


def _page(doc, uri: str, page: int):
    """Page ``page`` (1-based) of an open document, or the reason it cannot be loaded."""
    if not 1 <= page <= len(doc):
        raise ImageError(f"{uri}: no page {page} (the document has {len(doc)})", "corrupt_page")
    try:
        return doc[page - 1]
    except pdfium.PdfiumError as exc:
        raise ImageError(f"{uri} page {page}: {exc}", "corrupt_page") from None


def page_facts(uri: str) -> list[dict]:
    """One record per page, in order: ``{"page", "size_pt": [w, h], "text"}`` (the text layer, "" where
    there is none), or ``{"page", "error"}`` for a page that does not load. Raises ``ImageError``
    (``unreadable_pdf``) when the document itself does not open."""
    out = []
    with open_pdf(uri) as doc:
        for n in range(1, len(doc) + 1):
            try:
                page = _page(doc, uri, n)
            except ImageError as exc:
                out.append({"page": n, "error": str(exc)})
                continue
            try:
                textpage = page.get_textpage()
                try:
                    text = textpage.get_text_range().replace("\r\n", "\n").replace("\r", "\n")
                finally:
                    textpage.close()
                out.append({"page": n, "size_pt": [round(v, 2) for v in page.get_size()], "text": text})
            except pdfium.PdfiumError as exc:
                out.append({"page": n, "error": f"{uri} page {n}: text layer unreadable ({exc})"})
            finally:
                page.close()
    return out


def render_page(uri: str, page: int, dpi: float, max_pixels: int, min_side: int = 0) -> tuple[Image.Image, dict]:
    """Page ``page`` (1-based) as RGB at ``dpi``, and its facts (``width``/``height``/``size``: the
    page at ``dpi``). ``min_side`` renders at a lower resolution whose shorter side is still at least
    that many pixels: PDFium draws the text at the target size, sharper than a downscale."""
    with open_pdf(uri) as doc:
        p = _page(doc, uri, page)
        try:
            w_pt, h_pt = p.get_size()
            full = (max(1, round(w_pt * dpi / POINTS_PER_INCH)), max(1, round(h_pt * dpi / POINTS_PER_INCH)))
            if full[0] * full[1] > max_pixels:
                raise ImageError(
                    f"{uri} page {page}: refused, too many pixels at {dpi:g} dpi: {full[0]}x{full[1]} > {max_pixels}",
                    "too_many_pixels",
                )
            scale = dpi / POINTS_PER_INCH
            if min_side and min(full) > min_side:
                scale = min_side / min(w_pt, h_pt)
            try:
                img = p.render(scale=scale).to_pil().convert("RGB")
            except pdfium.PdfiumError as exc:
                raise ImageError(f"{uri} page {page}: does not render ({exc})", "corrupt_page") from None
        finally:
            p.close()
    facts = {"format": "pdf", "mode": "RGB", "width": full[0], "height": full[1], "size": full, "dpi": dpi}
    return img, facts
