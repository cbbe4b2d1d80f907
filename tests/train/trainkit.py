"""Small labelled shards that follow the contract, with labels that carry real signal.

Image class = dominant colour (with noise and a random shape); OCR class = number of dark
text bars on a page (its words.npy: ids tied to that number, none for a one-bar page); video class = colour of a square moving over a noisy background, stored
as codec tokens (patch mosaic + positions) and whole frames.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from shards.format import MOSAIC_COLS, encode_json, encode_npy, shard_name
from shards.writer import write_index, write_shard

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 210, 40)]


def _jpg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def image_sample(rng, size=48):
    c = int(rng.integers(len(COLOURS)))
    arr = np.clip(np.array(COLOURS[c]) + rng.normal(0, 25, (size, size, 3)), 0, 255)
    img = Image.fromarray(arr.astype(np.uint8))
    x, y = rng.integers(0, size // 2, 2)
    ImageDraw.Draw(img).ellipse(
        [x, y, x + size // 3, y + size // 3], fill=tuple(int(v) for v in rng.integers(0, 255, 3))
    )
    return c, {"jpg": _jpg(np.asarray(img))}


def ocr_words(n: int) -> np.ndarray:
    """The word ids of a page with ``n`` text bars: none for one bar, else ids tied to the count."""
    return np.array([] if n == 1 else [n - 1, n + 3], dtype=np.int32)


def ocr_sample(rng, size=48):
    n = int(rng.integers(1, 4))
    arr = np.full((size, size, 3), 235.0) + rng.normal(0, 8, (size, size, 3))
    for i in range(n):
        y = 6 + i * 14
        arr[y : y + 6, 6 : size - 6] = 20
    return n - 1, {"jpg": _jpg(arr), "txt": ("word " * n).encode(), "words.npy": encode_npy(ocr_words(n))}


def video_sample(rng, frames=4, grid=4, k=24):
    c = int(rng.integers(len(COLOURS)))
    size = grid * 16
    video = np.clip(128 + rng.normal(0, 20, (frames, size, size, 3)), 0, 255)
    for t in range(frames):
        x = 4 + t * 8
        video[t, 16:36, x : x + 20] = COLOURS[c]
    # codec tokens: k patches, moving ones first, as (t, h, w) positions
    cells = [(t, h, w) for t in range(frames) for h in range(grid) for w in range(grid)]
    order = rng.permutation(len(cells))[:k]
    pos = np.array(sorted(cells[i] for i in order), dtype=np.int16)
    rows = -(-k // MOSAIC_COLS)
    mosaic = np.zeros((rows * 16, MOSAIC_COLS * 16, 3))
    for i, (t, h, w) in enumerate(pos):
        r, q = divmod(i, MOSAIC_COLS)
        mosaic[r * 16 : (r + 1) * 16, q * 16 : (q + 1) * 16] = video[t, h * 16 : (h + 1) * 16, w * 16 : (w + 1) * 16]
    fields = {
        "patches.jpg": _jpg(mosaic),
        "pos.npy": encode_npy(pos),
        "frames.jpg": _jpg(np.concatenate(list(video), axis=0)),
    }
    return c, fields, {"frames": {"ids": list(range(frames))}}


def write_shards(folder: Path, n_shards=2, per_shard=16, modalities=("image",), seed=0, labels=True, name="demo"):
    """One published shard set per modality under ``folder`` (``folder/<modality>``), each of ``n_shards``
    tars of ``per_shard`` samples; returns the set folders (what ``data.shards`` takes)."""
    rng = np.random.default_rng(seed)
    sets = []
    for modality in modalities:
        out = folder / modality
        infos = []
        for s in range(n_shards):
            samples = []
            for i in range(per_shard):
                extra = {}
                if modality == "image":
                    c, fields = image_sample(rng)
                elif modality == "ocr":
                    c, fields = ocr_sample(rng)
                else:
                    c, fields, extra = video_sample(rng)
                sample = {
                    "__key__": f"{modality}{s:03d}_{i:05d}",
                    "json": encode_json({"modality": modality, **extra}),
                    **fields,
                }
                if labels:
                    # top-3 labels: the class and two classes tied to it (a concept bank's near neighbours)
                    sample["cls.npy"] = encode_npy(np.array([c, c + 4, c + 8], dtype=np.int32))
                samples.append(sample)
            infos.append(write_shard(samples, str(out / shard_name(f"{name}_{modality}", "v1", s))))
        write_index(str(out), f"{name}_{modality}", "v1", infos, {"modality": modality})
        sets.append(str(out))
    return sets


def base_config(tmp_path, shards, **over) -> dict:
    """A debug-flavour run manifest as a dict (to write as TOML or build directly)."""
    cfg = {
        "name": "t",
        "out_dir": str(tmp_path / "runs"),
        "steps": 6,
        "model": {"flavour": "debug", "patch": 16},
        "data": {"shards": list(shards), "batch_size": 4, "image_size": 32, "video_size": 32, "workers": 0},
        "heads": [{"name": "image", "modalities": ["image"], "num_classes": 12, "sample_rate": 1.0}],
        "optim": {"lr": 2e-3, "warmup_steps": 1},
        "parallel": {"dtype": "fp32"},
    }
    for k, v in over.items():
        if isinstance(v, dict):
            cfg.setdefault(k, {}).update(v)
        else:
            cfg[k] = v
    return cfg


def write_toml(path: Path, data: dict) -> Path:
    from manifests.loader import _dumps

    path.write_text(_dumps(data))
    return path


def read_metrics(path: Path) -> dict[int, dict]:
    out = {}
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec
    return out


def bf16_below(x: torch.Tensor) -> torch.Tensor:
    """The bf16 value next to each fp32 value towards zero (its top 16 bits), as fp32."""
    return (x.view(torch.int32) & -(1 << 16)).view(torch.float32)


def bf16_above(x: torch.Tensor) -> torch.Tensor:
    """The bf16 value next to each fp32 value away from zero, as fp32."""
    return (bf16_below(x).view(torch.int32) + (1 << 16)).view(torch.float32)
