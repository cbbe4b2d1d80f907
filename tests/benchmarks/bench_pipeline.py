"""End-to-end curation throughput: samples/s overall and per stage, 1 vs 2 CPUs, peak memory.

    python tests/benchmarks/bench_pipeline.py [--clips 60] [--images 600] [--out /tmp/bench-pipeline]

Builds a generated corpus (synthetic H.264 clips with moving objects; photographs from
scikit-image re-cropped and re-coloured into distinct images), then runs the demo manifest's
per-sample stages (decode, codec patchification, filters, dedup signatures; no global steps, so
the figure is the streaming part) on a local Ray cluster of 1 and of 2 CPUs. Prints the machine,
samples/s, the 2-CPU / 1-CPU speed-up, per-stage rows per busy second and peak RSS of the driver
and of the busiest worker.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import machine

RUN = """
import json, os, sys, threading, time
from curate.config import load_run
from curate.pipeline import run
peak = {"workers": 0}
def worker_rss():
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"ray::"):
                status = open(f"/proc/{pid}/status").read()
                yield int(status.split("VmRSS:")[1].split()[0]) * 1024
        except (OSError, IndexError):
            pass
def watch():
    while True:
        peak["workers"] = max([peak["workers"], *worker_rss()])
        time.sleep(0.2)
threading.Thread(target=watch, daemon=True).start()
cfg, stages = load_run(sys.argv[1], json.loads(sys.argv[2]))
t = time.perf_counter()
summary = run(cfg, stages, progress=False, report=False)
summary["wall"] = time.perf_counter() - t
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so this child would report its parent's peak
summary["driver_peak_mib"] = int(next(x.split()[1] for x in open("/proc/self/status") if x.startswith("VmHWM"))) / 1024
summary["worker_peak_mib"] = peak["workers"] / 2**20
print("RESULT " + json.dumps(summary))
"""


def build_corpus(root: Path, clips: int, images: int) -> None:
    import numpy as np
    import skimage.data
    from PIL import Image

    from curate.demo.synthetic_video import make_clip

    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(clips):
        make_clip(root / "videos" / f"c{i:05d}.mp4", codec="h264", pan=(1, 0) if i % 3 == 0 else None, seed=i)
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    rng = np.random.default_rng(0)
    for i in range(images):  # distinct crops with a colour shift: no two are duplicates
        src = photos[i % len(photos)]
        h, w = src.shape[:2]
        y, x = rng.integers(0, h // 3), rng.integers(0, w // 3)
        crop = src[y : y + 2 * h // 3, x : x + 2 * w // 3].astype(np.int16) + rng.integers(-40, 40, 3)
        Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).save(root / "images" / f"i{i:06d}.jpg", quality=90)


def manifest(root: Path, corpus: Path) -> Path:
    demo = Path(__file__).resolve().parents[2] / "manifests" / "demo.toml"
    text = demo.read_text().split("[[sources]]")[0]
    stages = "[[stages]]" + "[[stages]]".join(demo.read_text().split("[[stages]]")[1:])
    keep = [
        s
        for s in stages.split("[[stages]]")
        if s.strip() and not any(n in s for n in ('"dedup_group"', '"embed"', '"concepts"', '"ocr', '"text_length"'))
    ]
    body = text + f'[[sources]]\nmodality = "image"\nuri = "{corpus}/images"\n'
    body += f'[[sources]]\nmodality = "video"\nuri = "{corpus}/videos"\n' + "".join("[[stages]]" + s for s in keep)
    path = root / "bench.toml"
    path.write_text(body)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--out", default="/tmp/bench-pipeline")
    args = parser.parse_args()
    root = Path(args.out)
    corpus = root / "corpus"
    if not (corpus / "images").exists() or len(list((corpus / "images").iterdir())) != args.images:
        t = time.perf_counter()
        build_corpus(corpus, args.clips, args.images)
        print(f"corpus: {args.clips} clips + {args.images} images built in {time.perf_counter() - t:.0f}s")
    path = manifest(root, corpus)
    results = {}
    for cpus in (1, 2):
        over = {"output.dir": str(root / f"out{cpus}"), "ray.num_cpus": cpus, "partition_size": 32}
        proc = subprocess.run(
            [sys.executable, "-c", RUN, str(path), json.dumps(over), "--force"], capture_output=True, text=True
        )
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(proc.stderr[-3000:])
        results[cpus] = json.loads(line[-1][7:])
    print(machine())
    for cpus, r in results.items():
        print(
            f"{cpus} CPU: {r['inputs']} inputs in {r['wall']:.1f}s = {r['inputs'] / r['wall']:.2f} samples/s; "
            f"driver peak {r['driver_peak_mib']:.0f} MiB, largest worker {r['worker_peak_mib']:.0f} MiB"
        )
    speedup = results[1]["wall"] / results[2]["wall"]
    print(f"speed-up 2 CPUs / 1 CPU: {speedup:.2f} (goal >= 1.8)")
    for name, st in results[2]["stages"].items():
        print(f"  {name:<20} {st['rows']:>6} rows  {st['rows_per_second'] or 0:>10.1f} rows per busy second")


if __name__ == "__main__":
    main()
