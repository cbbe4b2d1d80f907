"""Image curation against a plain loop doing the same work (issue 30).

    python tests/benchmarks/bench_images.py [--sizes 1000 3000] [--repeat 1] [--out /tmp/bench-images]
                                            [--only plain1,plain2,local,ray]

Same inputs, same work for every contender: 300-700 px JPEGs (crops of the demo photographs,
re-sized and re-coloured so no two are alike), decoded, shorter side to 256 px (bicubic, never
upscaled), re-encoded as JPEG q90 into WebDataset tars of about 128 samples. Contenders:

* ``plain1``: a plain loop in one process (PIL ``draft`` + bicubic resize + ``webdataset.ShardWriter``);
* ``plain2``: the same with two worker processes (``multiprocessing.Pool``);
* ``local``: ``python -m curate run`` with ``executor = "local"`` and only ``image_decode``;
* ``ray``: the same with ``executor = "ray"`` on a local cluster of 2 CPUs.

Each is a fresh process, timed from start to exit (start-up and imports included), over two corpus
sizes: the difference over the difference in images is the marginal cost per image, free of fixed
start-up. Prints the machine, the wall times, marginal ms/image and the ratios ours / plain (local
against one process, Ray against two), then checks the outputs agree: the same images kept, each
at the same size in pixels, and the mean JPEG size within 5 %.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from common import machine

ROOT = Path(__file__).resolve().parents[2]
SIZE, QUALITY, PER_TAR = 256, 90, 128

PLAIN = """
import io, os, sys
from multiprocessing import Pool
from PIL import Image
import webdataset as wds

SIZE, QUALITY = {size}, {quality}

def one(path):
    with open(path, "rb") as f:
        img = Image.open(io.BytesIO(f.read()))
    scale = min(1.0, SIZE / min(img.size))
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    img.draft("RGB", (w, h))
    img = img.convert("RGB")
    if scale < 1.0:
        img = img.resize((w, h), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=QUALITY)
    return os.path.basename(path).rsplit(".", 1)[0], buf.getvalue()

if __name__ == "__main__":
    src, out, procs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    paths = sorted(os.path.join(src, n) for n in os.listdir(src))
    os.makedirs(out, exist_ok=True)
    with wds.ShardWriter(os.path.join(out, "plain-%06d.tar"), maxcount={per_tar}, verbose=0) as sink:
        results = map(one, paths) if procs == 1 else Pool(procs).imap(one, paths, chunksize=16)
        for key, jpg in results:
            sink.write({{"__key__": key, "jpg": jpg}})
"""

MANIFEST = """name = "bench-images"
partition_size = {per_tar}
executor = "{executor}"

[output]
dir = "{out}"
set_name = "bench"
version = "v1"

[ray]
num_cpus = 2
object_store_gb = 1.0

[[sources]]
modality = "image"
uri = "{corpus}"

[[stages]]
name = "image_decode"
size = {size}
quality = {quality}
"""


def build_corpus(root: Path, n: int) -> Path:
    """``n`` distinct JPEGs of 300-700 px a side: image ``i`` is the same in every corpus size."""
    import numpy as np
    from PIL import Image

    from curate.demo.corpus import photographs

    folder = root / f"images-{n}"
    if folder.exists() and len(os.listdir(folder)) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    photos = [p for _, p in sorted(photographs().items()) if min(p.shape[:2]) >= 256]
    for i in range(n):
        rng = np.random.default_rng(i)
        src = photos[i % len(photos)]
        h, w = src.shape[:2]
        ch, cw = rng.integers(h // 2, h + 1), rng.integers(w // 2, w + 1)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = src[y : y + ch, x : x + cw].astype(np.int16) + rng.integers(-40, 40, 3)
        size = (int(rng.integers(300, 701)), int(rng.integers(300, 701)))
        img = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
        img.save(folder / f"i{i:06d}.jpg", quality=90)
    return folder


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds, and CPU seconds of the processes it waited for (Ray's workers are not among them)."""
    cpu = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return wall, _children_cpu() - cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_plain(root: Path, corpus: Path, procs: int, tag: str) -> tuple[tuple[float, float], Path]:
    script = root / "plain_loop.py"
    script.write_text(PLAIN.format(size=SIZE, quality=QUALITY, per_tar=PER_TAR))
    out = root / f"out-{tag}"
    for old in out.glob("*.tar") if out.exists() else ():
        old.unlink()
    return timed([sys.executable, str(script), str(corpus), str(out), str(procs)]), out


def run_curate(root: Path, corpus: Path, executor: str, tag: str) -> tuple[tuple[float, float], Path]:
    out = root / f"out-{tag}"
    path = root / f"{tag}.toml"
    path.write_text(
        MANIFEST.format(per_tar=PER_TAR, executor=executor, out=out, corpus=corpus, size=SIZE, quality=QUALITY)
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # this checkout's code, whichever is installed
    return timed(
        [sys.executable, "-m", "curate", "run", str(path), "--force", "--quiet"], env
    ), out / "shards" / "image"


STARTUP = {
    "local": "import curate.__main__, curate.config, curate.pipeline, curate.stages.images",
    "plain1": "import multiprocessing, PIL.Image, webdataset",
}


def startup(repeat: int = 3) -> dict[str, float]:
    """Seconds of a fresh interpreter importing what each contender needs before its first image (best of
    ``repeat``); a bare interpreter's start is not subtracted."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return {
        name: min(timed([sys.executable, "-c", code], env)[0] for _ in range(repeat)) for name, code in STARTUP.items()
    }


def outputs(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Source file stem -> (width, height, JPEG bytes) of every sample in a folder of tars."""
    from PIL import Image

    found, sources = {}, {}
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for member in tf:
                key, _, field = member.name.partition(".")
                data = tf.extractfile(member).read()
                if field == "jpg":
                    with Image.open(io.BytesIO(data)) as img:
                        found[key] = (*img.size, len(data))
                elif field == "json":
                    sources[key] = Path(json.loads(data)["source"]).stem
    return {sources.get(k, k): v for k, v in found.items()}


def compare(plain: dict, ours: dict, name: str) -> str:
    if set(plain) != set(ours):
        return f"{name}: kept {len(ours)} images, plain loop {len(plain)}: NOT the same set"
    sized = sum(plain[k][:2] == ours[k][:2] for k in plain)
    mean_plain = sum(v[2] for v in plain.values()) / len(plain)
    mean_ours = sum(v[2] for v in ours.values()) / len(ours)
    off = mean_ours / mean_plain - 1
    verdict = "same" if sized == len(plain) and abs(off) <= 0.05 else "DIFFERENT"
    return (
        f"{name}: {len(ours)} kept as in the plain loop, {sized} of them at the same pixel size; "
        f"mean JPEG {mean_ours / 1024:.1f} KiB vs {mean_plain / 1024:.1f} KiB ({off:+.1%}): {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[1000, 3000])
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest counts")
    parser.add_argument("--only", default="plain1,plain2,local,ray")
    parser.add_argument("--out", default="/tmp/bench-images")
    args = parser.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    load, started = os.getloadavg()[0], time.perf_counter()
    corpora = {n: build_corpus(root, n) for n in args.sizes}
    print(f"corpora of {args.sizes} images ready in {time.perf_counter() - started:.0f}s")
    cases = {
        "plain1": lambda c, t: run_plain(root, c, 1, t),
        "plain2": lambda c, t: run_plain(root, c, 2, t),
        "local": lambda c, t: run_curate(root, c, "local", t),
        "ray": lambda c, t: run_curate(root, c, "ray", t),
    }
    chosen = [c for c in args.only.split(",") if c]
    runs, folders = {}, {}
    for _ in range(args.repeat):  # interleaved, so a burst of load elsewhere hits every case alike
        for name in chosen:
            for n in args.sizes:
                times, folders[name, n] = cases[name](corpora[n], f"{name}-{n}")
                runs.setdefault((name, n), []).append(times)
                print(f"  {name:<7} {n:>6} images: {times[0]:6.1f} s wall, {times[1]:6.1f} s CPU", flush=True)
    walls = {k: min(t[0] for t in v) for k, v in runs.items()}
    cpus = {k: min(t[1] for t in v) for k, v in runs.items()}
    imports = startup()
    small, big = args.sizes
    marginal = {name: 1000 * (walls[name, big] - walls[name, small]) / (big - small) for name in chosen}
    marginal_cpu = {name: 1000 * (cpus[name, big] - cpus[name, small]) / (big - small) for name in chosen}
    print(machine(f"load average {load:.1f} before the runs, {os.getloadavg()[0]:.1f} after"))
    print(f"| run | {small} images | {big} images | marginal ms/image (wall) | marginal CPU ms/image |")
    print("|---|---|---|---|---|")
    for name in chosen:
        cpu = "" if name == "ray" else f"{marginal_cpu[name]:.2f}"  # Ray's workers: not children it waits for
        print(f"| {name} | {walls[name, small]:.1f} s | {walls[name, big]:.1f} s | {marginal[name]:.2f} | {cpu} |")
    print(
        f"start-up, imports before the first image: local {imports['local']:.2f} s, plain loop {imports['plain1']:.2f} s"
    )
    for ours, plain in (("local", "plain1"), ("ray", "plain2")):
        if ours in marginal and plain in marginal:
            cpu = f", marginal CPU {marginal_cpu[ours] / marginal_cpu[plain]:.2f}" if ours == "local" else ""
            print(
                f"{ours} / {plain}: marginal {marginal[ours] / marginal[plain]:.2f} (goal <= 1.2){cpu}, "
                f"whole run of {big}: {walls[ours, big] / walls[plain, big]:.2f}, of {small}: "
                f"{walls[ours, small] / walls[plain, small]:.2f}"
            )
            print("  " + compare(outputs(folders[plain, big]), outputs(folders[ours, big]), ours))


if __name__ == "__main__":
    main()
