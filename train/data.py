"""The training data stream: the shards reader -> packed micro-batches, resumable mid-epoch.

``shards.reader.ShardStream`` does the reading: modality sets mixed by weight, a seeded shuffle,
shards split over ranks and DataLoader workers, bad samples skipped and counted, sidecar labels,
S3, and an exact resume state. This module adds what training needs on top: labels, the
per-modality decode into tokens (``train.inputs.sample_tokens``, run in the DataLoader workers),
packing into one token sequence per micro-batch, and the micro-batch count. A checkpoint stores
``Batch.state`` (the reader's state plus that count); a change of image size
(``resolution_schedule``) reopens the loader from the reader's state, so the switch is exact too. Surface: ``Stream(...)``, ``next(stream)`` -> ``Batch``.
"""

from __future__ import annotations

import functools
import sys
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from shards import fields, storage
from shards.index import ShardSetError, find_sets, read_index
from shards.reader import ShardStream
from train.config import DataConfig
from train.inputs import image_size_at, sample_meta, sample_tokens
from train.packing import Packed, pack


@dataclass
class Batch:
    packed: Packed
    modality: list[str]
    labels: torch.Tensor  # (B, k) int64, -1 padded
    keys: list[str]
    state: dict  # stream state after this batch


def modality_sets(paths: tuple[str, ...]) -> dict[str, str]:
    """``data.shards`` (set folders, or folders holding sets) -> {modality: set folder}, from each index."""
    sets: dict[str, str] = {}
    for path in paths:
        found = find_sets(path) if storage.is_s3(path) or storage.exists(path) else []
        if not found:
            raise ValueError(f"data.shards: {path} holds no shard set (no index.json under it)")
        for folder in found:
            modality = read_index(folder).get("modality")
            if modality is None:
                raise ShardSetError(f"{folder}: its index names no modality (one set per modality)")
            if modality in sets and sets[modality] != folder:
                raise ValueError(f"data.shards: two {modality} sets, {sets[modality]} and {folder}; name one")
            sets[modality] = folder
    if not sets:
        raise ValueError("data.shards is empty: name the curated shard sets (e.g. out/demo/shards/image)")
    return sets


def _where(sample: dict) -> str:
    """``shard: sample key: `` for an error message; empty under the reader, which names both itself."""
    return f"{sample['__url__']}: sample {sample.get('__key__', '?')}: " if "__url__" in sample else ""


def sample_labels(sample: dict, num_classes: dict[str, int], field: str = "cls") -> np.ndarray:
    """A sample's label ids from ``cls.npy`` (concept ids, at least one) or ``words.npy`` (OCR word ids, may be none)."""
    modality = sample_meta(sample).get("modality")
    if modality not in num_classes:
        raise ValueError(
            f"{_where(sample)}modality {modality!r} has no head in this run (heads take {sorted(num_classes)})"
        )
    if f"{field}.npy" not in sample:
        need = (
            "the ocr_labels stage writes them"
            if field == "words"
            else "training needs labelled shards (or a sidecar label set)"
        )
        raise ValueError(f"{_where(sample)}no {field}.npy labels; {need}")
    try:
        labels = fields.labels(sample[f"{field}.npy"], field).astype(np.int64)
    except ValueError as exc:
        raise ValueError(f"{_where(sample)}{exc}") from None
    if (labels.size == 0 and field == "cls") or (
        labels.size and (labels.min() < 0 or labels.max() >= num_classes[modality])
    ):
        raise ValueError(
            f"{_where(sample)}labels {labels.tolist()[:10]} outside the {modality} head's "
            f"{num_classes[modality]} classes"
        )
    return labels


def decode(
    sample: dict,
    cfg: DataConfig,
    patch: int,
    size: int,
    mode_rng: float,
    num_classes: dict[str, int],
    label_fields: dict[str, str] | None = None,
):
    """One raw sample -> (tokens, modality, labels); errors name the shard and key."""
    modality = sample_meta(sample).get("modality")
    labels = sample_labels(sample, num_classes, (label_fields or {}).get(modality, "cls"))
    return sample_tokens(sample, cfg, patch, size, mode_rng), modality, labels


ENDLESS = sys.maxsize  # "epochs" of a training stream: exact epochs, one after another, until the run stops


def _tokens(
    sample: dict,
    cfg: DataConfig,
    patch: int,
    size: int,
    seed: int,
    num_classes: dict[str, int],
    label_fields: dict[str, str],
) -> dict:
    """The reader's per-sample transform (in a DataLoader worker): tokens and labels for one sample.

    The video mode is drawn from (seed, key, the worker's sample count), which the resume state
    restores, so a resumed run draws the same modes.
    """
    rng = np.random.default_rng([seed, zlib.crc32(sample["__key__"].encode()), sample["__index__"]]).random()
    field = label_fields.get(sample["meta"]["modality"], "cls")
    out = {"tokens": sample_tokens(sample, cfg, patch, size, rng)}
    if field == "words" or not cfg.labels:  # with a sidecar set (cfg.labels) the reader supplies ``cls``
        out["labels"] = sample_labels(sample, num_classes, field)
    return out


@dataclass
class _Micro:
    packed: Packed
    modality: list[str]
    labels: torch.Tensor
    keys: list[str]

    def pin_memory(self) -> _Micro:  # the DataLoader's pin-memory thread calls this on each batch
        self.packed = self.packed.pin_memory()
        return self


def _collate(samples: list[dict]) -> _Micro:
    rows = [s["labels"] if "labels" in s else s["cls"].numpy() for s in samples]
    labels = torch.full((len(samples), max(r.size for r in rows)), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        labels[i, : r.size] = torch.from_numpy(r)
    return _Micro(
        pack([s["tokens"] for s in samples]), [s["modality"] for s in samples], labels, [s["__key__"] for s in samples]
    )


class Stream:
    """Packed micro-batches for one rank, exactly resumable from ``state``."""

    def __init__(
        self,
        cfg: DataConfig,
        patch: int,
        num_classes: dict[str, int],
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        accum: int = 1,
        state: dict | None = None,
        label_fields: dict[str, str] | None = None,
        pin_memory: bool = False,
    ):
        self.pin_memory = pin_memory  # page-locked batches (for a CUDA trainer): asynchronous host -> device copies
        self.cfg, self.patch, self.num_classes, self.seed, self.accum = cfg, patch, num_classes, seed, accum
        self.label_fields = dict(label_fields or {})
        sets = modality_sets(cfg.shards)
        headless = sorted(set(sets) - set(num_classes))
        if headless:
            raise ValueError(
                f"data.shards has {headless} set(s) ({[sets[m] for m in headless]}) but no head takes "
                f"{headless}; drop them from data.shards or add a head"
            )
        self.reader = ShardStream(
            sets,
            dict(cfg.weights) or None,
            seed=seed,
            rank=rank,
            world_size=world,
            epochs=None if cfg.resample else ENDLESS,
            shuffle_buffer=cfg.shuffle_buffer,
            labels=cfg.labels or None,
            max_bad_rate=cfg.max_bad_rate,
        )
        need = world * max(1, cfg.workers)
        few = {m: len(self.reader.shards[m]) for m in sets if len(self.reader.shards[m]) < need}
        if few and not cfg.resample:
            raise ValueError(
                f"exact epochs give each of {world} rank(s) x {max(1, cfg.workers)} worker(s) its own "
                f"shards, but {few} have fewer than {need}; set data.resample = true, or fewer "
                "data.workers"
            )
        self.batch = 0
        if state:
            if "reader" not in state:
                raise ValueError(
                    "this checkpoint's data position comes from the trainer's former reader; "
                    "start the run afresh (init_from keeps its weights)"
                )
            self.reader.load_state_dict(state["reader"])
            self.batch = state["batch"]
        self.state = {"reader": self.reader.snapshot(), "batch": self.batch}
        self._size, self._batches = None, None

    def _open(self, size: int) -> None:
        """A loader whose workers decode at ``size``, continuing from what the trainer has received."""
        self.close()
        transform = functools.partial(
            _tokens,
            cfg=self.cfg,
            patch=self.patch,
            size=size,
            seed=self.seed,
            num_classes=self.num_classes,
            label_fields=self.label_fields,
        )
        self.reader.transforms.update(dict.fromkeys(self.reader.modalities, transform))
        extra = {"prefetch_factor": self.cfg.prefetch} if self.cfg.workers else {}
        if self.pin_memory:
            extra["pin_memory"] = True
        self._batches = self.reader.loader(self.cfg.batch_size, self.cfg.workers, collate_fn=_collate, **extra)
        self._size = size

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        size = image_size_at(self.cfg, self.batch // self.accum)
        if size != self._size:
            self._open(size)
        micro = next(self._batches)
        self.batch += 1
        self.state = {"reader": self.reader.snapshot(), "batch": self.batch}
        return Batch(micro.packed, micro.modality, micro.labels, micro.keys, self.state)

    def close(self):
        if self._batches is not None:
            self._batches.close()  # ends the DataLoader and its workers
            self._batches = None
