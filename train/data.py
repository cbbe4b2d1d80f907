"""The training data stream: WebDataset shards -> packed micro-batches, resumable mid-epoch.

Each rank reads its own shards (a per-epoch permutation of the shard list, split by rank),
one shard after another, in tar order, through webdataset's plain pipeline. The resume state
is (epoch, cursor in this rank's shard list, samples consumed in that shard); every batch
carries the state after its last sample, so a checkpoint restores the exact next sample.
Decoding runs on a small thread pool (order kept) and one batch-builder thread prefetches.
A later issue replaces this module with the project's shared reader; keep its surface small:
``Stream(...)``, ``next(stream)`` -> ``Batch``, ``Batch.state``.
"""

from __future__ import annotations

import glob
import io
import json
import queue
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from shards.format import decode_npy
from train.config import DataConfig
from train.packing import Packed, codec_tokens, normalise, pack, patchify

CODEC_PATCH = 16


@dataclass
class Batch:
    packed: Packed
    modality: list[str]
    labels: torch.Tensor  # (B, k) int64, -1 padded
    keys: list[str]
    state: dict  # stream state after this batch


def expand_shards(patterns: tuple[str, ...]) -> list[str]:
    urls = []
    for p in patterns:
        hits = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
        urls += hits
    if not urls:
        raise ValueError(f"data.shards {list(patterns)} matches no shard")
    return urls


def image_size_at(cfg: DataConfig, step: int) -> int:
    size = cfg.image_size
    for start, s in sorted(cfg.resolution_schedule):
        if step >= start:
            size = s
    return size


def _rgb(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _square(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` and centre-crop: uint8 (3, size, size)."""
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def frame_images(sample: dict, meta: dict, count: int, size: int) -> tuple[list[torch.Tensor], list[float]]:
    """Up to ``count`` of the stored whole frames, evenly spaced, squared to ``size``; their clip times."""
    img = _rgb(sample["frames.jpg"])
    ids = list(meta.get("frames", {}).get("ids", []))
    n = len(ids) or max(1, img.height // img.width)
    ids = ids or list(range(n))
    fh = img.height // n
    keep = np.unique(np.linspace(0, n - 1, min(n, count)).round().astype(int))
    frames = [_square(img.crop((0, i * fh, img.width, (i + 1) * fh)), size) for i in keep]
    return frames, [float(ids[i]) for i in keep]


def codec_input(sample: dict, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A video sample's codec tokens (mosaic + positions) -> (patches, (t, h, w) positions)."""
    pos = torch.from_numpy(decode_npy(sample["pos.npy"]).astype(np.float32))
    mosaic = np.asarray(_rgb(sample["patches.jpg"]))
    p = CODEC_PATCH
    rows, cols = mosaic.shape[0] // p, mosaic.shape[1] // p  # MOSAIC_COLS per row by contract
    grid = mosaic.reshape(rows, p, cols, p, 3).transpose(0, 2, 4, 1, 3).reshape(-1, 3, p, p)
    return codec_tokens(normalise(torch.from_numpy(grid[: pos.shape[0]].copy())), pos, patch)


def frames_input(frames: list[torch.Tensor], times: list[float], patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole frames, each at its own t: every patch of every frame."""
    parts = [patchify(normalise(f), patch, t) for f, t in zip(frames, times, strict=True)]
    return torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])


def image_input(data: bytes, size: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    return patchify(normalise(_square(_rgb(data), size)), patch)


def decode(sample: dict, cfg: DataConfig, patch: int, size: int, mode_rng: float, num_classes: dict[str, int],
           label_fields: dict[str, str] | None = None):  # fmt: skip
    """One raw sample -> (patches, positions, modality, labels); errors name the shard and key.

    ``label_fields``: per modality ``cls`` (concept ids, default) or ``words`` (OCR word ids, may be none).
    """
    where = f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"
    meta = json.loads(sample["json"])
    modality = meta.get("modality")
    if modality not in num_classes:
        raise ValueError(f"{where}: modality {modality!r} has no head in this run (heads take {sorted(num_classes)})")
    field = (label_fields or {}).get(modality, "cls")
    if f"{field}.npy" not in sample:
        need = (
            "the ocr_labels stage writes them"
            if field == "words"
            else "training needs labelled shards (or a sidecar label set)"
        )
        raise ValueError(f"{where}: no {field}.npy labels; {need}")
    labels = decode_npy(sample[f"{field}.npy"]).astype(np.int64).reshape(-1)
    if (labels.size == 0 and field == "cls") or (
        labels.size and (labels.min() < 0 or labels.max() >= num_classes[modality])
    ):
        raise ValueError(
            f"{where}: labels {labels.tolist()[:10]} outside the {modality} head's {num_classes[modality]} classes"
        )
    if modality in ("image", "ocr"):
        tokens = image_input(sample["jpg"], size, patch)
    else:
        shares = np.array([cfg.codec_share, cfg.frames_share, cfg.collage_share])
        mode = int(np.searchsorted(np.cumsum(shares) / shares.sum(), mode_rng, side="right"))
        if "frames.jpg" not in sample:
            mode = 0
        if "patches.jpg" not in sample or "pos.npy" not in sample:
            mode = max(mode, 1)
        if mode == 0:
            tokens = codec_input(sample, patch)
        else:
            frames, ts = frame_images(sample, meta, cfg.max_frames, cfg.video_size)
            if mode == 1:
                tokens = frames_input(frames, ts, patch)
            else:
                tokens = patchify(normalise(torch.cat(frames, dim=1)), patch)
    return tokens, modality, labels


class Stream:
    """Packed micro-batches for one rank, exactly resumable from ``state``."""

    def __init__(self, cfg: DataConfig, patch: int, num_classes: dict[str, int], seed: int = 0, rank: int = 0,
                 world: int = 1, accum: int = 1, state: dict | None = None,
                 label_fields: dict[str, str] | None = None):  # fmt: skip
        self.cfg, self.patch, self.num_classes, self.seed = cfg, patch, num_classes, seed
        self.label_fields = label_fields
        self.rank, self.world, self.accum = rank, world, accum
        self.urls = expand_shards(cfg.shards)
        if len(self.urls) < world:
            raise ValueError(f"{len(self.urls)} shard(s) for {world} ranks: every rank needs at least one shard")
        self.state = dict(state or {"epoch": 0, "cursor": 0, "offset": 0, "batch": 0})
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, cfg.prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True)
        self._thread.start()

    def _rank_shards(self, epoch: int) -> list[str]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.urls))
        return [self.urls[i] for i in order[self.rank :: self.world]]

    def _samples(self):
        st = dict(self.state)
        while True:
            mine = self._rank_shards(st["epoch"])
            while st["cursor"] < len(mine):
                pipe = wds.DataPipeline(wds.SimpleShardList([mine[st["cursor"]]]), wds.tarfile_to_samples())
                for i, sample in enumerate(pipe):
                    if i < st["offset"]:
                        continue
                    st["offset"] = i + 1
                    yield sample, st["epoch"], dict(st)
                st["cursor"], st["offset"] = st["cursor"] + 1, 0
            st["epoch"], st["cursor"] = st["epoch"] + 1, 0

    def _fill(self):
        try:
            samples = self._samples()
            batch_no = self.state["batch"]
            with ThreadPoolExecutor(self.cfg.decode_threads) as pool:
                while not self._stop.is_set():
                    raw = [next(samples) for _ in range(self.cfg.batch_size)]
                    size = image_size_at(self.cfg, batch_no // self.accum)
                    rngs = [
                        np.random.default_rng([self.seed, ep, zlib.crc32(s["__key__"].encode())]).random()
                        for s, ep, _ in raw
                    ]
                    args = [
                        (s, self.cfg, self.patch, size, r, self.num_classes, self.label_fields)
                        for (s, _, _), r in zip(raw, rngs, strict=True)
                    ]
                    out = list(pool.map(lambda a: decode(*a), args))
                    k = max(lab.size for _, _, lab in out)
                    labels = torch.full((len(out), k), -1, dtype=torch.long)
                    for i, (_, _, lab) in enumerate(out):
                        labels[i, : lab.size] = torch.from_numpy(lab)
                    batch_no += 1
                    state = dict(raw[-1][2], batch=batch_no)
                    batch = Batch(pack([t for t, _, _ in out]), [m for _, m, _ in out], labels,
                                  [s["__key__"] for s, _, _ in raw], state)  # fmt: skip
                    while not self._stop.is_set():
                        try:
                            self._queue.put(batch, timeout=0.1)
                            break
                        except queue.Full:
                            continue
        except BaseException as exc:  # surfaced in the consumer, with the data error's own message
            self._queue.put(exc)

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        self.state = item.state
        return item

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
