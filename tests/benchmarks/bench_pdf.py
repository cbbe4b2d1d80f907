"""PDF pages to OCR'd samples: pages per core-second, each step's share, and OCR word recall against
the text layer per script and text size.

    python tests/benchmarks/bench_pdf.py [--dpi 150] [--sizes 8 10 14 20] [--lines 40]

One letter-size page (8.5 x 11 in) per script and text height, written by matplotlib with a text
layer (DejaVu Sans, ``--lines`` lines of random words); listed (page tree and text layer), then
``image_decode`` (the 448-px training copy), ``ocr_text`` and ``ocr`` (``ppocrv6-tiny``, one thread,
reading the page rendered at ``--dpi``) and ``ocr_filter`` run in this process, so seconds are CPU
seconds of one core (``time.process_time``). Text height is the font's em in pixels at that DPI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, ROOT)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import machine  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from curate.config import SourceConfig  # noqa: E402
from curate.demo.corpus import _zen_words  # noqa: E402
from curate.sources import list_inputs  # noqa: E402
from curate.stage import apply_in_chunks, new_rows  # noqa: E402
from curate.stages.images import ImageDecode, OcrText  # noqa: E402
from curate.stages.ocr import OcrFilter, OcrRead  # noqa: E402

WORDS = {
    "Latin": _zen_words(),
    "Greek": "γαζέες καὶ μυρτιὲς δὲν θὰ βρῶ πιὰ στὸ χρυσαφὶ ξέφωτο ξεσκεπάζω τὴν ψυχοφθόρα βδελυγμία".split(),
    "Cyrillic": "съешь же ещё этих мягких французских булок да выпей чаю широкая электрификация".split(),
}


def write_pdf(path: Path, script: str, px: int, dpi: float, lines: int, rng: random.Random) -> None:
    points = px * 72 / dpi
    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(path) as pdf:
        fig = plt.figure(figsize=(8.5, 11))
        step = min(0.9 / lines, 1.6 * points / (11 * 72))  # at least 1.6 lines' height apart
        for i in range(lines):
            line, text = "", []
            while len(line) < 6 * 72 / points:  # about 6 inches of text per line
                text.append(rng.choice(WORDS[script]))
                line = " ".join(text)
            fig.text(0.06, 0.95 - i * step, line, fontsize=points)
        pdf.savefig(fig)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dpi", type=float, default=150.0)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 10, 14, 20])
    ap.add_argument("--lines", type=int, default=40)
    args = ap.parse_args()
    rng = random.Random(0)
    stages = [ImageDecode(), OcrText(), OcrRead(source="uri"), OcrFilter()]
    for stage in stages:
        stage.setup()
    rows, seconds = [], {"listing": 0.0, **{s.name: 0.0 for s in stages}}
    with tempfile.TemporaryDirectory() as tmp:
        for script in WORDS:
            for px in args.sizes:
                folder = Path(tmp, f"{script}-{px}")
                folder.mkdir()
                write_pdf(folder / "page.pdf", script, px, args.dpi, args.lines, rng)
                start = time.process_time()
                items, _ = list_inputs([SourceConfig(modality="ocr", uri=str(folder), format="pdf", dpi=args.dpi)], 64)
                seconds["listing"] += time.process_time() - start
                batch = new_rows(items)
                for stage in stages:
                    start = time.process_time()
                    batch = apply_in_chunks(stage, batch)
                    seconds[stage.name] += time.process_time() - start
                meta = json.loads(batch["meta"][0])
                transcript = meta.get("ocr", {}).get("transcript", {})
                rows.append(
                    {
                        "script": script,
                        "px": px,
                        "words": len(items[0]["meta"]["text"].split()),
                        "status": batch["status"][0],
                        "reason": batch["reason"][0],
                        "recall": transcript.get("recall"),
                        "conf": meta.get("ocr_mean_conf"),
                    }
                )
    total = sum(seconds.values())
    print(json.dumps({"machine": machine(), "pages": len(rows), "seconds": seconds, "rows": rows}))
    print(f"\n{len(rows)} pages, {total:.1f} CPU s: {len(rows) / total:.2f} pages per core-second")
    print("| step | s/page | share |\n|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s / len(rows):.3f} | {s / total:.1%} |")
    print("\n| script | text px | words | OCR word recall | mean conf | outcome |\n|---|---|---|---|---|---|")
    for r in rows:
        recall = "-" if r["recall"] is None else f"{r['recall']:.3f}"
        print(f"| {r['script']} | {r['px']} | {r['words']} | {recall} | {r['conf']} | {r['reason'] or r['status']} |")


if __name__ == "__main__":
    main()
