"""Curation against a plain loop doing the same work (issue 30): images, OCR pages, video clips.

    python tests/benchmarks/bench_images.py [--work decode|dedup|ocr|video] [--sizes 1000 3000]
                                            [--repeat 1] [--out /tmp/bench-images]
                                            [--only plain1,plain2,local,ray] [--before CHECKOUT]

``--work`` picks the inputs and the work every contender does:

* ``decode``: 300-700 px JPEGs (crops of the demo photographs, re-sized and re-coloured so no two
  are alike), decoded, shorter side to 256 px (bicubic, never upscaled), re-encoded as JPEG q90
  into WebDataset tars of about 128 samples (``image_decode``);
* ``dedup``: the same, plus the image signatures: BLAKE3 of the source, the pixel digest, pHash and
  dHash, the tiny-image embedding (``dedup_signatures`` without MinHash, ``tiny_embed``); the plain
  loop computes them with the same functions from the picture it holds;
* ``ocr``: rendered pages of known text (640x480 PNG), decoded, shorter side to 448 px, JPEG q90,
  read by rapidocr ppocrv6-tiny on one thread, page, text and lines written to tars (``image_decode``,
  ``ocr`` with ``write_txt``; the plain loop reads the picture it holds, ours the curated ``jpg``);
* ``video``: 64-frame 640x360 H.264 clips (``curate.demo.synthetic_video``); ours runs
  ``video_probe`` and ``codec_patchify`` (defaults), the plain loop only decodes every frame with
  PyAV on one thread: the baseline is plain decode, as the issue asks, not the same work.

Contenders: ``plain1`` (one process), ``plain2`` (``multiprocessing.Pool`` of two), ``local``
(``python -m curate run``, ``executor = "local"``), ``ray`` (the same on a local cluster of 2
CPUs); with ``--before DIR``, also ``local-before`` and ``ray-before``: the same runs with the
code of another checkout. Each is a fresh process, timed from start to exit, over two corpus
sizes: the difference over the difference in inputs is the marginal cost per input, free of fixed
start-up. Runs are interleaved (each repeat: each size, every contender in turn), so load from
elsewhere hits all alike; every run is printed with the load average, and marginals and ratios
are given per repeat and as the median over repeats. CPU seconds are those of the processes the
benchmark waits for (Ray's workers are not among them). For image work the outputs are checked
to agree: the same inputs kept, each at the same size in pixels, mean JPEG size within 5 %.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from common import machine

ROOT = Path(__file__).resolve().parents[2]
SIZE, PAGE_SIZE, QUALITY, PER_TAR = 256, 448, 90, 128

PLAIN_HEAD = """
import io, json, os, sys
from multiprocessing import Pool
import numpy as np
from PIL import Image
import webdataset as wds

SIZE, QUALITY = {size}, {quality}

def resized(data):
    img = Image.open(io.BytesIO(data))
    scale = min(1.0, SIZE / min(img.size))
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    img.draft("RGB", (w, h))
    img = img.convert("RGB")
    if scale < 1.0:
        img = img.resize((w, h), Image.Resampling.BICUBIC)
    return img

def jpeg(img):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=QUALITY)
    return buf.getvalue()

def key(path):
    return os.path.basename(path).rsplit(".", 1)[0]
"""

PLAIN_WORK = {
    "decode": """
init = None

def one(path):
    with open(path, "rb") as f:
        img = resized(f.read())
    return {"__key__": key(path), "jpg": jpeg(img)}
""",
    "dedup": """
from curate.dedup import signatures as sg
from curate.dedup.semantic import tiny_image_embedding
from shards.storage import digest
init = None

def one(path):
    with open(path, "rb") as f:
        data = f.read()
    img = resized(data)
    grey = img.convert("L")
    bits = sg.image_bits([grey])[0]
    sigs = {"blake3": digest(data), "pixel": sg.pixel_digest(img), "phash": sg.pack(bits[:64]).hex(),
            "dhash": sg.pack(bits[64:]).hex()}
    embedding = tiny_image_embedding(grey).astype("<f4").tobytes()
    return {"__key__": key(path), "jpg": jpeg(img), "json": json.dumps(sigs).encode(), "embedding": embedding}
""",
    "ocr": """
from curate.ocr.engines import load_engine
engine = None

def init():
    global engine
    engine = load_engine("rapidocr", threads=1, min_conf=0.5, models="ppocrv6-tiny")

def one(path):
    with open(path, "rb") as f:
        img = resized(f.read())
    lines = engine(np.asarray(img))
    text = "\\n".join(line.text for line in lines)
    meta = {"lines": [line.compact() for line in lines]}
    return {"__key__": key(path), "jpg": jpeg(img), "txt": text.encode(), "json": json.dumps(meta).encode()}
""",
    "video": """
import av
init = None

def one(path):
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_count = 1
        return {"__key__": key(path), "frames": str(sum(1 for _ in c.decode(s))).encode()}
""",
}

PLAIN_MAIN = """
if __name__ == "__main__":
    src, out, procs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    paths = sorted(os.path.join(src, n) for n in os.listdir(src) if not n.endswith(".txt"))
    os.makedirs(out, exist_ok=True)
    with wds.ShardWriter(os.path.join(out, "plain-%06d.tar"), maxcount={per_tar}, verbose=0) as sink:
        if procs == 1:
            init and init()
            results = map(one, paths)
        else:
            results = Pool(procs, initializer=init).imap(one, paths, chunksize=4)
        for sample in results:
            sink.write(sample)
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
modality = "{modality}"
uri = "{corpus}"
"""

STAGES = {
    "decode": f"""
[[stages]]
name = "image_decode"
size = {SIZE}
quality = {QUALITY}
""",
    "ocr": f"""
[[stages]]
name = "image_decode"
size = {PAGE_SIZE}
quality = {QUALITY}

[[stages]]
name = "ocr"
write_txt = true
threads = 1
""",
    "video": """
[[stages]]
name = "video_probe"

[[stages]]
name = "codec_patchify"
""",
}
STAGES["dedup"] = (
    STAGES["decode"]
    + """
[[stages]]
name = "dedup_signatures"
minhash = false

[[stages]]
name = "tiny_embed"
"""
)
MODALITY = {"decode": "image", "dedup": "image", "ocr": "ocr", "video": "video"}


def build_corpus(root: Path, n: int, work: str) -> Path:
    """``n`` distinct inputs for ``work``: input ``i`` is the same in every corpus size."""
    kind = {"decode": "images", "dedup": "images", "ocr": "pages", "video": "clips"}[work]
    folder = root / f"{kind}-{n}"
    ext = {"images": ".jpg", "pages": ".png", "clips": ".mp4"}[kind]
    if folder.exists() and sum(name.endswith(ext) for name in os.listdir(folder)) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    {"images": _images, "pages": _pages, "clips": _clips}[kind](folder, n)
    return folder


def _images(folder: Path, n: int) -> None:
    """300-700 px JPEGs: crops of the demo photographs, re-sized and re-coloured."""
    import numpy as np
    from PIL import Image

    from curate.demo.corpus import photographs

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


def _pages(folder: Path, n: int) -> None:
    """Rendered pages of 30-70 Zen-of-Python words (the OCR tests' pages), PNG, the text beside them."""
    from PIL import Image

    sys.path.insert(0, str(ROOT / "tests" / "curate"))
    from ocr_kit import pages

    for i, (rgb, text) in enumerate(pages(n, seed=7)):
        Image.fromarray(rgb).save(folder / f"p{i:06d}.png")
        (folder / f"p{i:06d}.txt").write_text(text)


def _clips(folder: Path, n: int) -> None:
    """64-frame 640x360 H.264 clips: a moving object over a textured background, every third panned."""
    from curate.demo.synthetic_video import make_clip

    for i in range(n):
        make_clip(folder / f"c{i:06d}.mp4", size=(640, 360), pan=(1, 0) if i % 3 == 0 else None, seed=i)


def timed(cmd: list[str], env: dict | None = None, cwd: Path = ROOT) -> tuple[float, float]:
    """Wall seconds, and CPU seconds of the processes it waited for (Ray's workers are not among them)."""
    cpu = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return wall, _children_cpu() - cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _env(code: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1")  # that checkout's code, whichever is installed
    return env


def run_plain(root: Path, corpus: Path, procs: int, tag: str, work: str) -> tuple[tuple[float, float], Path]:
    script = root / f"plain_{work}.py"
    text = (
        PLAIN_HEAD.format(size=PAGE_SIZE if work == "ocr" else SIZE, quality=QUALITY)
        + PLAIN_WORK[work]
        + PLAIN_MAIN.format(per_tar=PER_TAR)
    )
    script.write_text(text)
    out = root / f"out-{tag}"
    for old in out.glob("*.tar") if out.exists() else ():
        old.unlink()
    return timed([sys.executable, str(script), str(corpus), str(out), str(procs)], _env(ROOT)), out


def run_curate(
    root: Path, corpus: Path, executor: str, tag: str, work: str, code: Path = ROOT
) -> tuple[tuple[float, float], Path]:
    out = root / f"out-{tag}"
    path = root / f"{tag}.toml"
    modality = MODALITY[work]
    text = MANIFEST.format(per_tar=PER_TAR, executor=executor, out=out, corpus=corpus, modality=modality)
    path.write_text(text + STAGES[work])
    cmd = [sys.executable, "-m", "curate", "run", str(path), "--force", "--quiet"]
    return timed(cmd, _env(code), code), out / "shards" / modality  # -m puts the working folder first


STARTUP = {
    "local": "import curate.__main__, curate.config, curate.pipeline, curate.stages.images",
    "plain1": "import multiprocessing, PIL.Image, webdataset",
}


def startup(repeat: int = 3) -> dict[str, float]:
    """Seconds of a fresh interpreter importing what each contender needs before its first image (best of
    ``repeat``); a bare interpreter's start is not subtracted."""
    return {
        name: min(timed([sys.executable, "-c", code], _env(ROOT))[0] for _ in range(repeat))
        for name, code in STARTUP.items()
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
                elif field == "json" and "source" in json.loads(data):
                    sources[key] = Path(json.loads(data)["source"]).stem
    return {sources.get(k, k): v for k, v in found.items()}


def samples(folder: Path) -> int:
    keys = set()
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as tf:
            keys |= {m.name.partition(".")[0] for m in tf}
    return len(keys)


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


PAIRS = (("local", "plain1"), ("ray", "plain2"), ("local-before", "plain1"), ("ray-before", "plain2"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", choices=sorted(STAGES), default="decode")
    parser.add_argument("--sizes", type=int, nargs=2, default=[1000, 3000])
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds of every case")
    parser.add_argument("--only", default="plain1,plain2,local,ray")
    parser.add_argument("--before", type=Path, help="another checkout: adds local-before and ray-before")
    parser.add_argument("--out", default="/tmp/bench-images")
    args = parser.parse_args()
    root, work = Path(args.out), args.work
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    corpora = {n: build_corpus(root, n, work) for n in args.sizes}
    print(f"{work}: corpora of {args.sizes} inputs ready in {time.perf_counter() - started:.0f}s", flush=True)
    chosen = [c for c in args.only.split(",") if c]
    if args.before:
        chosen += [f"{c}-before" for c in ("local", "ray") if c in chosen]

    def case(name: str, n: int, tag: str):
        if name.startswith("plain"):
            return run_plain(root, corpora[n], int(name[-1]), tag, work)
        executor, _, before = name.partition("-")
        return run_curate(root, corpora[n], executor, tag, work, args.before if before else ROOT)

    runs, folders, loads = {}, {}, []
    for _ in range(args.repeat):  # interleaved: each size, every contender in turn
        for n in args.sizes:
            for name in chosen:
                load = os.getloadavg()[0]
                times, folders[name, n] = case(name, n, f"{work}-{name}-{n}")
                runs.setdefault((name, n), []).append(times)
                loads.append(load)
                print(
                    f"  {name:<13} {n:>6}: {times[0]:6.1f} s wall, {times[1]:6.1f} s CPU (load {load:.1f})", flush=True
                )
    small, big = args.sizes
    per = big - small

    def marginal(name: str, i: int, what: int) -> float:
        return 1000 * (runs[name, big][i][what] - runs[name, small][i][what]) / per

    print(machine(f"load average {min(loads):.1f}-{max(loads):.1f} at the starts of the runs"))
    print(f"| run | {small} inputs | {big} inputs | marginal ms/input (wall) | marginal CPU ms/input |")
    print("|---|---|---|---|---|")
    for name in chosen:
        walls = [f"{runs[name, small][i][0]:.1f} / {runs[name, big][i][0]:.1f}" for i in range(args.repeat)]
        wall_m = " / ".join(f"{marginal(name, i, 0):.2f}" for i in range(args.repeat))
        cpu_m = "" if "ray" in name else " / ".join(f"{marginal(name, i, 1):.2f}" for i in range(args.repeat))
        print(
            f"| {name} | {'; '.join(w.split(' / ')[0] for w in walls)} s | "
            f"{'; '.join(w.split(' / ')[1] for w in walls)} s | {wall_m} | {cpu_m} |"
        )
    if work in ("decode", "dedup"):
        imports = startup()
        print(
            f"start-up, imports before the first input: local {imports['local']:.2f} s, plain {imports['plain1']:.2f} s"
        )
    for ours, plain in PAIRS:
        if ours not in chosen or plain not in chosen:
            continue
        walls = [marginal(ours, i, 0) / marginal(plain, i, 0) for i in range(args.repeat)]
        line = f"{ours} / {plain}: marginal wall {' '.join(f'{r:.2f}' for r in walls)} (median {statistics.median(walls):.2f})"
        if "ray" not in ours:
            cpus = [marginal(ours, i, 1) / marginal(plain, i, 1) for i in range(args.repeat)]
            line += f", marginal CPU {' '.join(f'{r:.2f}' for r in cpus)} (median {statistics.median(cpus):.2f})"
        print(line)
        if work in ("decode", "dedup"):
            print("  " + compare(outputs(folders[plain, big]), outputs(folders[ours, big]), ours))
        else:
            print(f"  {ours}: {samples(folders[ours, big])} samples written, plain loop {samples(folders[plain, big])}")


if __name__ == "__main__":
    main()
