"""Shared decodes (issue 30): the pixel stages of one chain with one decode per picture, against the
same stages each decoding for itself, in one process.

    python tests/benchmarks/bench_decodes.py [--images 300] [--repeat 3] [--out /tmp/bench-images]

Inputs: ``bench_images.py``'s 300-700 px JPEGs; stages: ``image_decode`` (shorter side 256, q90),
``dedup_signatures`` (no MinHash), ``tiny_embed``, ``embed`` (a tiny open_clip ViT, random weights,
float32): every image stage that reads pixels. ``shared``: the stages as one
chain (``curate.stage.apply_chain``, what a run does); ``apart``: each stage a chain of its own,
every stage decoding what it reads (what a run did before). Both run alternately, ``--repeat``
rounds; CPU seconds of this process per image, the fastest round and the median, the decodes each
made (``curate.decodes.COUNTS``), and a check that both give the same rows.
"""

# ruff: noqa: E402  (thread limits must be set before torch is imported)
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_images import build_corpus
from common import machine

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "curate"))
from concepts_kit import NAME, save_tiny

from curate import decodes
from curate.config import SourceConfig
from curate.sources import list_inputs
from curate.stage import TIMING, new_rows, run_in_process, to_rows
from curate.stages import build_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="/tmp/bench-images")
    args = parser.parse_args()
    corpus = build_corpus(Path(args.out), args.images, "decode")
    config, weights = save_tiny(Path(tempfile.mkdtemp(prefix="tiny-clip-")))
    specs = [
        {"name": "image_decode", "size": 256, "quality": 90},
        {"name": "dedup_signatures", "minhash": False},
        {"name": "tiny_embed"},
        {"name": "embed", "model": NAME, "model_config": config, "weights": weights, "dtype": "float32"},
    ]
    stages = [build_stage(s) for s in specs]
    for stage in stages:
        stage.setup()
    items, _ = list_inputs([SourceConfig(modality="image", uri=str(corpus))], 64)

    def shared():
        return run_in_process(stages, new_rows(items), setup=False)

    def apart():
        batch = new_rows(items)
        for stage in stages:
            batch = run_in_process([stage], batch, setup=False)
        return batch

    seconds, counts, rows = {"shared": [], "apart": []}, {}, {}
    for _ in range(args.repeat):
        for name, fn in (("shared", shared), ("apart", apart)):
            before, load = dict(decodes.COUNTS), os.getloadavg()[0]
            start = time.process_time()
            out = fn()
            seconds[name].append(time.process_time() - start)
            counts[name] = {k: v - before.get(k, 0) for k, v in decodes.COUNTS.items()}
            rows[name] = [{k: v for k, v in r.items() if k != "meta"} for r in to_rows(out)]
            for r, full in zip(rows[name], to_rows(out), strict=True):
                r["meta"] = {k: v for k, v in full["meta"].items() if k != TIMING}
            print(f"  {name}: {1000 * seconds[name][-1] / len(items):.2f} ms/image (load {load:.1f})", flush=True)
    print(machine(f"load average {os.getloadavg()[0]:.1f} at the end"))
    print(f"{len(items)} images; stages: {', '.join(s['name'] for s in specs)}")
    for name in ("shared", "apart"):
        best, median = min(seconds[name]), statistics.median(seconds[name])
        print(
            f"{name}: {1000 * best / len(items):.2f} ms/image (fastest), {1000 * median / len(items):.2f} (median); "
            f"decodes {dict(sorted(counts[name].items()))}"
        )
    ratios = [a / s for a, s in zip(seconds["apart"], seconds["shared"], strict=True)]
    print(
        f"apart / shared per round: {' '.join(f'{r:.3f}' for r in ratios)}; same rows: {rows['shared'] == rows['apart']}"
    )


if __name__ == "__main__":
    main()
