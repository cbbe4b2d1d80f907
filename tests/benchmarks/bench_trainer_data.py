"""T5 (issue 7): the trainer's step time reading real shards / the same run on synthetic tensors.

    python tests/benchmarks/bench_trainer_data.py [--smoke] [--steps 30] [--workers 8]

``train.loop.train`` runs twice with one config (ViT-L/16, 224 px, 128 images per step, per-block
compile, bf16, an image head of 100k classes at r = 0.1): once reading JPEG image shards written
here through the real reader (``shards.reader`` with DataLoader workers decoding, resizing and
patchifying), once with the stream replaced by one that hands out its first micro-batch again and
again, already on the device (no decoding, no host -> device copy). The ratio is the median of the
loop's own ``step_s`` (metrics.jsonl) after warm-up, real / synthetic; goal at most 1.03.
Checkpoint writing is skipped in both (it is not a data cost). ``--smoke``: debug flavour on CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import manifests  # noqa: E402
import train.loop as loop  # noqa: E402
from shards.format import encode_json, encode_npy, shard_name  # noqa: E402
from shards.writer import write_index, write_shard  # noqa: E402
from train.config import RunConfig  # noqa: E402


def photo(rng: np.random.Generator, size: int) -> bytes:
    """A JPEG with the entropy of a photograph more than of noise: gradients, a few shapes, mild grain."""
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([np.sin(6 * x * rng.random() + rng.random() * 6) * 60 + 128 + 50 * y * c for c in (1, -1, 0.5)], -1)
    for _ in range(4):
        cy, cx, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(8, size // 3))]
        img[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r] = rng.integers(0, 256, 3)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_image_shards(folder: Path, n_shards: int, per_shard: int, size: int, classes: int) -> str:
    rng = np.random.default_rng(0)
    infos = []
    for s in range(n_shards):
        samples = [
            {
                "__key__": f"img{s:03d}_{i:05d}",
                "json": encode_json({"modality": "image"}),
                "jpg": photo(rng, size),
                "cls.npy": encode_npy(rng.integers(0, classes, 10).astype(np.int32)),
            }
            for i in range(per_shard)
        ]
        infos.append(write_shard(samples, str(folder / shard_name("bench_image", "v1", s))))
    write_index(str(folder), "bench_image", "v1", infos, {"modality": "image"})
    return str(folder)


class RepeatFirst:
    """A stand-in for ``train.data.Stream``: its first micro-batch, on the device, every time."""

    device = torch.device("cpu")
    real = None  # the Stream class it stands in for

    def __init__(self, *args, **kwargs):
        real = self.real(*args, **kwargs)
        self.batch = next(real)
        self.state = real.state
        real.close()
        self.batch.packed = self.batch.packed.to(self.device)

    def __next__(self):
        return self.batch

    def close(self):
        pass


def run(cfg: RunConfig, synthetic: bool) -> list[float]:
    saved_stream, saved_save = loop.Stream, loop.Checkpointer.save
    loop.Checkpointer.save = lambda *a, **k: None
    if synthetic:
        RepeatFirst.real = saved_stream
        loop.Stream = RepeatFirst
    try:
        records = loop.train(cfg)
    finally:
        loop.Stream, loop.Checkpointer.save = saved_stream, saved_save
    return [r["step_s"] for r in records]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="debug flavour on the CPU, a few steps; no timing value")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=8, help="steps left out of the median (compilation, loader start)")
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    smoke = args.smoke or not torch.cuda.is_available()
    steps, warmup = (4, 2) if smoke else (args.steps, args.warmup)
    root = Path(tempfile.mkdtemp(prefix="bench_t5_"))
    classes = 100_000
    size, image, batch = (48, 32, 4) if smoke else (256, 224, 128)
    shards = write_image_shards(root / "shards", 16, 8 if smoke else 64, size, classes)
    data = {
        "shards": [shards],
        "batch_size": batch,
        "image_size": image,
        "workers": 0 if smoke else args.workers,
        "prefetch": 4,
        "resample": True,
        "shuffle_buffer": 64,
    }
    spec = {
        "name": "t5",
        "out_dir": str(root / "runs"),
        "steps": steps,
        "log_every": 1,
        "model": {"flavour": "debug" if smoke else "large", "patch": 16},
        "data": data,
        "heads": [{"name": "image", "modalities": ["image"], "num_classes": classes, "sample_rate": 0.1}],
        "parallel": {"compile": not smoke, "dtype": "bf16"},
    }
    RepeatFirst.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "cpus": os.cpu_count()}
    for name, synthetic in (("synthetic", True), ("real_shards", False), ("synthetic_again", True)):
        times = run(manifests.build(RunConfig, {**spec, "name": name}), synthetic)
        res[name] = {"median_step_s": statistics.median(times[warmup:]), "steps": times}
        print(name, f"{res[name]['median_step_s'] * 1e3:.1f} ms/step", flush=True)
    synth = min(res["synthetic"]["median_step_s"], res["synthetic_again"]["median_step_s"])
    res["T5_real_over_synthetic"] = res["real_shards"]["median_step_s"] / synth
    print(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}, indent=1))
    out = Path(os.environ.get("OUT", "out/bench"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_trainer_data.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
