"""List a PDF source (a PDF, or a folder or prefix of them) as inputs: one per page.

Each PDF is a listing unit of its own, listed in its own task like a tar of a shard set. A page is
addressed the way a tar member is: the input's ``uri`` is the PDF and ``meta["pdf"]`` names the page
(1-based) and the DPI the stages render it at; its key is the PDF's key plus ``-p{page}``. The page's
text layer, read here like a shard's captions, is its transcript (``meta["text"]``, which
``ocr_text`` writes as ``txt``); a page without one has none. A page that does not load fails alone
(``source/corrupt_page``), a PDF that does not open is one failed input (``source/unreadable_pdf``).
"""

from __future__ import annotations

from collections import Counter

from shards import storage

DEFAULT_DPI = 150.0


def pdf_units(src) -> tuple[list[dict], Counter]:
    """One unit per ``.pdf`` of the source, and the other files passed over, counted by extension."""
    files = storage.list_pattern(src.uri)
    pdfs = [(uri, size) for uri, size in files if uri.lower().endswith(".pdf")]
    if not pdfs:
        raise FileNotFoundError(f"no .pdf files among {len(files)} files")
    passed = [u for u, _ in files if not u.lower().endswith(".pdf")]
    return [{"kind": "pdf", "uri": uri, "size": size} for uri, size in pdfs], storage.by_extension(passed)


def pdf_items(src, unit: dict, make_key) -> list[dict]:
    """The inputs of one PDF: a page each, or one failed input naming why the PDF does not open."""
    from curate.media import ImageError
    from curate.pdf import page_facts  # here: listing other sources never loads PDFium

    uri, size = unit["uri"], unit["size"]
    base = make_key(uri)
    dpi = src.dpi or DEFAULT_DPI
    try:
        pages = page_facts(uri)
        if not pages:
            raise ImageError(f"{uri}: the document has no pages", "unreadable_pdf")
    except ImageError as exc:
        meta = {"bytes": size, "provenance": {"source": src.uri, "file": uri, "offset": 0}}
        return [
            {"key": base, "uri": uri, "modality": src.modality, "meta": meta, "error": [f"source/{exc.code}", str(exc)]}
        ]
    items = []
    for page in pages:
        n = page["page"]
        meta = {
            "bytes": size // len(pages),  # the cost predictor of partitions: a page's share of the file
            "pdf": {"page": n, "pages": len(pages), "dpi": dpi},
            "provenance": {"source": src.uri, "file": uri, "page": n},
        }
        item = {"key": f"{base}-p{n}", "uri": uri, "modality": src.modality, "meta": meta}
        if "error" in page:
            item["error"] = ["source/corrupt_page", page["error"]]
        else:
            meta["pdf"]["size_pt"] = page["size_pt"]
            meta["pdf"]["text_layer"] = bool(page["text"].strip())
            if meta["pdf"]["text_layer"]:
                meta["text"] = page["text"]
        items.append(item)
    return items
