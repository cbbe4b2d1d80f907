"""Shard reader benchmarks on the CPU, one process, one core (DataLoader num_workers=0).

    .venv/bin/python tests/benchmarks/bench_reader.py [--repeat 3] [--no-s3] [--write --label NAME]

Figures, each against a baseline measured in the same run on the same shards:
* R1  ShardStream samples/s per core (tar streaming, mixing, shuffle buffer 256, contract check,
      resume bookkeeping, default transform) over decode-only samples/s per core (the same
      transform on sample bytes already in memory); goal >= 0.8 (W1), per modality;
* R2  reading from a loopback S3 server (moto, its own process) over reading local files,
      raw samples without decode: wall samples/s, and reader CPU per sample;
* R3  bytes per sample and decode ms per sample per modality; for video also the raw uint8
      patch array as the alternative to the JPEG mosaic.
Times are CPU seconds of this process (time.process_time, torch and BLAS on one thread), median
of --repeat rounds; R1 is the median (min-max) of per-round ratios, decode-only and loader run
back to back in each round. Other jobs still move CPU time on a shared VM; R2's wall figures more.
Shards: crops of the photographs that ship with scikit-image (image 256 px, video K=512 codec
patches as a 16x32 mosaic plus 4 whole 224 px frames, OCR 384 px rendered text pages with text).
--write replaces the "### NAME" subsection of RESULTS.md's "## Shard reader" section, nothing else.
"""

# ruff: noqa: E402
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import io
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import webdataset as wds
from PIL import Image, ImageDraw
from skimage import data as skdata

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common import cpu_seconds, machine

from shards import format as fmt
from shards import storage
from shards.reader import ShardStream, iter_samples
from shards.transforms import DEFAULT_TRANSFORMS
from shards.writer import write_index, write_shard

RESULTS = Path(__file__).with_name("RESULTS.md")
COUNTS = {"image": (3, 400), "video": (3, 150), "ocr": (3, 200)}  # shards x samples
K = 512


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


PHOTOS = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]


def crop(rng, size: int) -> np.ndarray:
    photo = PHOTOS[rng.integers(len(PHOTOS))]
    h, w = photo.shape[:2]
    scale = max(size / h, size / w, 1.0)
    img = Image.fromarray(photo).resize((int(w * scale) + 1, int(h * scale) + 1))
    y, x = rng.integers(img.height - size + 1), rng.integers(img.width - size + 1)
    return np.asarray(img.crop((x, y, x + size, y + size)))


def sample(modality: str, key: str, rng) -> dict:
    out = {
        "__key__": key,
        "json": fmt.encode_json({"modality": modality, "source": f"bench://{key}"}),
        "cls.npy": fmt.encode_npy(rng.integers(0, 1 << 20, 10).astype(np.int32)),
    }
    if modality == "image":
        out["jpg"] = jpeg(crop(rng, 256))
    elif modality == "ocr":
        page = Image.new("RGB", (384, 384), "white")
        words = [f"w{rng.integers(1000)}" for _ in range(60)]
        draw = ImageDraw.Draw(page)
        for line in range(12):
            draw.text((10, 10 + 30 * line), " ".join(words[5 * line : 5 * line + 5]), fill="black")
        out["jpg"], out["txt"] = jpeg(np.asarray(page)), " ".join(words).encode()
    else:
        frame = crop(rng, 256)
        mosaic = frame.reshape(16, 16, 16, 16, 3).transpose(0, 2, 1, 3, 4).reshape(256, 16, 16, 3)
        mosaic = np.concatenate([mosaic, mosaic[::-1]])[:K]  # K patches of a real frame
        out["patches.jpg"] = jpeg(mosaic.reshape(16, 32, 16, 16, 3).transpose(0, 2, 1, 3, 4).reshape(256, 512, 3))
        pos = np.stack([np.arange(K) // 64, (np.arange(K) // 8) % 8, np.arange(K) % 8], 1).astype(np.int16)
        out["pos.npy"] = fmt.encode_npy(pos)
        out["frames.jpg"] = jpeg(np.concatenate([crop(rng, 224) for _ in range(4)]))
    return out


class FloatMtimeTarWriter(wds.TarWriter):
    """Tars as other tools (and this project before) write them: a float mtime adds a pax header per member."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "mtime": 0.0})


def build(root: Path, modalities=tuple(COUNTS), suffix: str = "") -> dict[str, str]:
    rng = np.random.default_rng(0)
    folders = {}
    for m in modalities:
        shards, per = COUNTS[m]
        infos = []
        for i in range(shards):
            samples = [sample(m, f"{m}{i:02d}_{j:04d}", rng) for j in range(per)]
            infos.append(write_shard(samples, str(root / (m + suffix) / fmt.shard_name(f"b_{m}", "v1", i))))
        write_index(str(root / (m + suffix)), f"b_{m}", "v1", infos, {"modality": m})
        folders[m] = str(root / (m + suffix))
    return folders


def paired(fns: list, repeat: int, clock=time.process_time) -> list[list[float]]:
    """Seconds (CPU by default) of each of ``fns`` run back to back, ``repeat`` rounds (after a warm-up round).

    Ratios taken within a round cancel the slow drifts of a shared VM's speed.
    """
    for fn in fns:
        fn()
    rounds = []
    for _ in range(repeat):
        row = []
        for fn in fns:
            start = clock()
            fn()
            row.append(clock() - start)
        rounds.append(row)
    return rounds


def drain(folder: str, modality: str, transforms=None) -> int:
    return sum(1 for _ in ShardStream({modality: folder}, seed=0, shuffle_buffer=256, transforms=transforms))


def moto(port: int):
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto_server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="replace the Shard reader section of RESULTS.md")
    ap.add_argument("--no-s3", action="store_true", help="skip R2 (for a machine without boto3 and moto)")
    ap.add_argument("--label", default="this VM", help="subsection of the Shard reader section to replace")
    ap.add_argument("--results", default=str(RESULTS), help="the RESULTS.md to write into")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench_reader_"))
    folders = build(root)
    with mock.patch.object(wds, "TarWriter", FloatMtimeTarWriter):
        pax = build(root, ("image",), "_pax")
    no_decode = {m: (lambda s: {}) for m in folders}
    lines = [f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}", f"repeat: {args.repeat}", ""]

    lines += [
        "| modality | bytes/sample | decode ms/sample | decode-only samples/s/core | loader samples/s/core "
        "| R1 loader/decode, median (min-max) (goal >= 0.8) | raw read samples/s/core (no decode) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, folder in [*folders.items(), ("image", pax["image"])]:
        n = COUNTS[m][0] * COUNTS[m][1]
        raw = [
            {**s, "meta": {"modality": m}}
            for shard in sorted(Path(folder).glob("*.tar"))
            for s, _, _ in iter_samples(str(shard))
        ]
        nbytes = sum(p.stat().st_size for p in Path(folder).glob("*.tar")) / n
        fn = DEFAULT_TRANSFORMS[m]
        rounds = paired(
            [
                lambda raw=raw, fn=fn: [fn(s) for s in raw],
                lambda f=folder, m=m: drain(f, m),
                lambda f=folder, m=m: drain(f, m, no_decode),
            ],
            args.repeat,
        )
        t_dec, t_load, t_raw = (statistics.median(col) for col in zip(*rounds, strict=True))
        r1 = [d / load for d, load, _ in rounds]
        name = m if folder in folders.values() else f"{m}, tars with a pax header per member (read by tarfile)"
        lines.append(
            f"| {name} | {nbytes / 1e3:.1f} kB | {t_dec / n * 1e3:.2f} | {n / t_dec:.0f} | {n / t_load:.0f} "
            f"| **{statistics.median(r1):.2f}** ({min(r1):.2f}-{max(r1):.2f}) | {n / t_raw:.0f} |"
        )
        if m == "video":
            arrays = [fmt.encode_npy(fn(s)["patches"].numpy()) for s in raw]
            t_npy = cpu_seconds(lambda a=arrays: [torch.from_numpy(fmt.decode_npy(b)) for b in a], args.repeat)
            mosaic = np.mean([len(s["patches.jpg"]) for s in raw])
            lines.append(
                f"| video tokens: JPEG mosaic vs raw uint8 (K={K}) | {mosaic / 1e3:.1f} kB vs "
                f"{np.mean([len(a) for a in arrays]) / 1e3:.1f} kB | {t_dec / n * 1e3:.2f} vs "
                f"{t_npy / n * 1e3:.3f} | | | | |"
            )

    if args.no_s3:
        return report(lines, args)
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    server = moto(number)
    try:
        os.environ.update(
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{number}",
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        storage.s3_client().create_bucket(Bucket="bench")
        lines += [
            "",
            "| modality | local wall samples/s | S3 wall samples/s | R2 S3/local, median (min-max) | local CPU ms/sample "
            "| S3 CPU ms/sample (reader process only) |",
            "|---|---|---|---|---|---|",
        ]
        for m, folder in folders.items():
            n = COUNTS[m][0] * COUNTS[m][1]
            for p in Path(folder).glob("*"):
                storage.s3_client().upload_file(str(p), "bench", f"{m}/{p.name}")
            remote = f"s3://bench/{m}"
            pair = [lambda f=folder, m=m: drain(f, m, no_decode), lambda r=remote, m=m: drain(r, m, no_decode)]
            walls = paired(pair, args.repeat, time.perf_counter)
            w_local, w_s3 = (statistics.median(col) for col in zip(*walls, strict=True))
            r2 = [a / b for a, b in walls]
            c_local, c_s3 = (statistics.median(col) for col in zip(*paired(pair, args.repeat), strict=True))
            lines.append(
                f"| {m} | {n / w_local:.0f} | {n / w_s3:.0f} | **{statistics.median(r2):.2f}** "
                f"({min(r2):.2f}-{max(r2):.2f}) | {c_local / n * 1e3:.3f} | {c_s3 / n * 1e3:.3f} |"
            )
    finally:
        server.terminate()
        server.wait()
    report(lines, args)


def report(lines: list[str], args) -> None:
    """Print; with --write, replace this label's subsection of the "## Shard reader" section only."""
    text = "\n".join(lines)
    print(text)
    if not args.write:
        return
    results = Path(args.results)
    flags = f"--repeat {args.repeat}{' --no-s3' if args.no_s3 else ''} --write --label '{args.label}'"
    sub = f"### {args.label}\n\n`python tests/benchmarks/bench_reader.py {flags}`\n\n{text}\n"
    old = results.read_text()
    start = old.find("## Shard reader")
    if start < 0:
        old, start = old.rstrip("\n") + "\n\n## Shard reader\n\n", len(old.rstrip("\n")) + 2
    end = old.find("\n## ", start + 1)
    end = len(old) if end < 0 else end + 1
    section = old[start:end]
    at = section.find(f"### {args.label}\n")
    if at < 0:
        section = section.rstrip("\n") + "\n\n" + sub
    else:
        stop = section.find("\n### ", at + 1)
        section = section[:at] + sub + ("" if stop < 0 else section[stop:])
    results.write_text(old[:start] + section.rstrip("\n") + "\n" + ("\n" + old[end:] if end < len(old) else ""))


if __name__ == "__main__":
    main()
