"""PDFs with known text: pages with a text layer (matplotlib's PDF backend, TrueType fonts, so the
text is extractable), pages without one (scans: PIL's PDF writer around a rendered picture), a page
whose text layer is not its visible text, and damaged documents."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from curate.demo.corpus import _font  # noqa: E402

PAGE_IN = (4.0, 2.0)  # page size in inches: 600 x 300 pixels at 150 dpi


def text_pdf(path: Path, pages: list[str | tuple[str, str]]) -> Path:
    """One page per entry, its text drawn at 18 pt with a text layer. An entry ``(visible, hidden)``
    shows ``visible`` as a picture (no text layer) and carries ``hidden`` as invisible text: a text
    layer that is not what the page shows."""
    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(path) as pdf:
        for entry in pages:
            fig = plt.figure(figsize=PAGE_IN)
            if isinstance(entry, tuple):
                visible, hidden = entry
                fig.figimage(_picture(visible, (600, 300)), resize=False)  # at 150 dpi: the whole page
                fig.text(0.05, 0.5, hidden, fontsize=18, alpha=0.0)
            else:
                for i, line in enumerate(entry.split("\n")):
                    fig.text(0.05, 0.75 - 0.2 * i, line, fontsize=18)
            pdf.savefig(fig, dpi=150)
            plt.close(fig)
    return path


def scan_pdf(path: Path, pages: list[str]) -> Path:
    """A scanned document: each page a picture of its text at 150 dpi, no text layer."""
    images = [_picture(text, (600, 300)) for text in pages]
    images[0].save(path, format="PDF", save_all=True, append_images=images[1:], resolution=150.0)
    return path


def _picture(text: str, size: tuple[int, int]) -> Image.Image:
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(text.split("\n")):
        draw.text((30, 40 + 60 * i), line, fill="black", font=_font())
    return img


def corrupt_page(data: bytes, page: int) -> bytes:
    """The PDF with page ``page`` (1-based) made unloadable: its object's ``/Type /Page`` renamed, so
    the page tree still counts it but PDFium cannot load it (same length: the xref stays valid)."""
    i = -1
    for _ in range(page):
        i = data.index(b"<< /Type /Page ", i + 1)
    return data[:i] + b"<< /Type /Xage " + data[i + len(b"<< /Type /Page ") :]
