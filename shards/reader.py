"""The training reader: shard sets per modality, mixed by weight, resumable mid-epoch sample for sample.

    stream = ShardStream({"image": "s3://b/shards/image", "video": "..."}, {"image": 0.7, "video": 0.3},
                         seed=0, rank=rank, world_size=world, epochs=None, shuffle_buffer=1000)
    stream.load_state_dict(ckpt["data"])          # optional: continue a run mid-epoch
    for batch in stream.loader(batch_size=32, num_workers=4):
        ...
        ckpt["data"] = stream.state_dict()        # what the trainer has *received*, per worker

Each (rank, DataLoader worker) pair is one logical worker. Its stream is a pure function of
(seed, epoch, rank, worker) and its own state: per modality the shard cursor, sample offset and
byte offset to continue from, the shuffle buffer as byte ranges of the samples it holds, and the
RNG state. Shards split across all logical workers (epochs: a seeded permutation per epoch and
modality, so give each set at least world_size x num_workers shards; ``epochs=None``: shards drawn
with replacement, an endless stream). Each sample's modality is drawn by ``weights`` (default: set
sizes) among the sets not yet exhausted this epoch. Resuming opens each
shard at its byte offset (a ranged GET on S3) and refills the buffer by ranged reads, so nothing is
re-read. DataLoader hands batches out round-robin; a resumed loader rotates the worker roles so
the worker whose turn was next goes first. Samples whose tar, fields or transform fail are skipped,
logged and counted; past ``bad_grace + max_bad_rate * seen`` the worker raises BadDataError.
Output samples: ``__key__``, ``__url__``, ``modality``, ``cls`` (int64 ids, from ``cls.npy`` or the
sidecar set of bank ``labels``; see shards.labels) and whatever the modality's transform returns.
A transform gets the sample's fields, its parsed ``meta`` and ``__index__``: how many samples this
logical worker emitted before it (part of the resume state, so a seeded per-sample choice made
from it repeats exactly after a resume).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import tarfile

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset import tariterators

from shards import fields, storage, tarmembers
from shards import format as fmt
from shards.index import ShardSetError, read_index
from shards.labels import read_labels_meta, shard_labels
from shards.transforms import DEFAULT_TRANSFORMS

log = logging.getLogger(__name__)
TAR_ERRORS = (tarfile.TarError, EOFError, ValueError, UnicodeDecodeError)


class BadDataError(RuntimeError):
    """Too many bad samples: the shards (or the transforms) need fixing, not skipping."""


# webdataset's member-name split, memoised: the span bookkeeping and group_by_keys ask for each name
_split = functools.lru_cache(maxsize=64)(tariterators.base_plus_ext)


def iter_samples(uri: str, start: int = 0, data: bytes | None = None, attempts: int = storage.READ_ATTEMPTS):
    """Yield ``(sample, start, end)`` per sample of a tar from byte ``start``; webdataset groups the members.

    ``[start, end)`` spans the sample's headers and padded data, so a ranged read of it is a valid tar.
    ``data``: the tar's bytes from ``start`` on, already read.
    """
    ranges: dict[str, list[int]] = {}
    if data is None:
        reopen = functools.partial(storage.open_stream, uri, attempts=attempts)
    else:
        reopen = tarmembers.bytes_reopener(data, start)

    broken: list[Exception] = []

    def grouped(stream):
        try:
            for name, payload, a, b in tarmembers.members(stream, start, reopen):
                ranges.setdefault(_split(name)[0], [a, 0])[1] = b
                yield {"fname": name, "data": payload, "__url__": uri}
        except TAR_ERRORS as exc:  # end the members here so the sample before the break is still yielded
            broken.append(exc)

    with reopen(start) as stream:
        for sample in tariterators.group_by_keys(grouped(stream), keys=_split):
            yield sample, *ranges.pop(sample["__key__"])
    if broken:
        raise broken[0]


def sample_ranges(uri: str) -> dict[str, tuple[int, int]]:
    """``{key: (start, end)}`` of every sample, from the tar headers (one sequential read)."""
    return {s["__key__"]: (a, b) for s, a, b in iter_samples(uri)}


def read_sample(uri: str, start: int, end: int) -> dict:
    """One sample by a ranged read (``sample_ranges`` or a resume state gives the range)."""
    data = storage.read_range(uri, start, end)
    return next(s for s, _, _ in iter_samples(uri, start, data=data))


def open_set(folder: str, attempts: int = storage.READ_ATTEMPTS) -> dict:
    """A published set's index; a clear error when it is missing, unpublished or unreachable."""
    uri = storage.join(folder, fmt.INDEX_NAME)
    if not storage.retrying(uri, lambda: storage.exists(uri), attempts):
        raise ShardSetError(f"{uri}: no index; the set is missing or was never published")
    return read_index(folder)


def _collate(fn, samples):
    state = [s.pop("__state__") for s in samples][-1]
    samples = [s for s in samples if "__end__" not in s]  # a worker's end carries only its final counts
    return (fn(samples) if fn and samples else samples), state, len(samples)


class ShardStream(IterableDataset):
    """One reader for all modalities; see the module docstring for the contract."""

    def __init__(
        self,
        sets: dict[str, str],
        weights: dict[str, float] | None = None,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epochs: int | None = 1,
        shuffle_buffer: int = 0,
        transforms: dict | None = None,
        labels: str | None = None,
        max_bad_rate: float = 0.01,
        bad_grace: int = 10,
        attempts: int = storage.READ_ATTEMPTS,
    ):
        unknown = set(sets) - set(fmt.MODALITIES)
        if unknown:
            raise ValueError(f"unknown modality {sorted(unknown)}; the contract has {fmt.MODALITIES}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.modalities = sorted(sets)
        self.folders = {m: str(sets[m]).rstrip("/") for m in self.modalities}
        self.shards = {m: open_set(self.folders[m], attempts)["shards"] for m in self.modalities}
        for m in self.modalities:
            if not self.shards[m]:
                raise ShardSetError(f"{self.folders[m]}: the index lists no shards")
            if labels:
                read_labels_meta(self.folders[m], labels)
        weights = weights or {m: sum(s["samples"] for s in self.shards[m]) for m in self.modalities}
        if set(weights) != set(sets) or min(weights.values()) < 0 or sum(weights.values()) <= 0:
            raise ValueError(f"weights {weights} must be >= 0 with a positive sum, one per set {sorted(sets)}")
        self.weights = np.array([weights[m] for m in self.modalities], float)
        self.seed, self.rank, self.world_size, self.epochs = seed, rank, world_size, epochs
        self.shuffle_buffer, self.labels, self.attempts = shuffle_buffer, labels, attempts
        self.transforms = {**DEFAULT_TRANSFORMS, **(transforms or {})}
        self.max_bad_rate, self.bad_grace = max_bad_rate, bad_grace
        self._seen: dict = {"workers": {}, "next": 0, "num_workers": None}
        self._resume = self._seen
        self._ident = self._identity()  # fixed once built: seed, rank, world, epochs, shard names

    # -- state: what the consumer has received --------------------------------------------------
    def _identity(self) -> dict:
        shards = {
            m: hashlib.sha256(" ".join(s["name"] for s in v).encode()).hexdigest()[:16] for m, v in self.shards.items()
        }
        return {
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "epochs": self.epochs,
            "shards": shards,
        }

    def state_dict(self) -> dict:
        """JSON-able; store it in the checkpoint next to the model."""
        return copy.deepcopy(self.snapshot())

    def snapshot(self) -> dict:
        """``state_dict`` without the deep copy, cheap enough for every batch: a worker's noted state
        is a new object each time and never changed afterwards, so copying the mapping suffices."""
        return {**self._ident, **self._seen, "workers": dict(self._seen["workers"])}

    def load_state_dict(self, state: dict) -> None:
        for k, v in self._ident.items():
            if state[k] != v:
                raise ValueError(f"resume state has {k}={state[k]}, this stream {v}; it continues only the same stream")
        self._seen = copy.deepcopy({k: state[k] for k in ("workers", "next", "num_workers")})

    def _start(self, num_workers: int) -> None:
        self._resume = copy.deepcopy(self._seen)
        saved = self._resume["num_workers"]
        if saved not in (None, max(1, num_workers)):
            raise ValueError(f"resume state was saved with {saved} DataLoader worker(s) per rank, not {num_workers}")

    def _note(self, logical: int, workers: int, state: dict) -> None:
        self._seen["workers"][str(logical)] = state
        self._seen["next"], self._seen["num_workers"] = (logical + 1) % workers, workers

    def stats(self) -> dict:
        """Samples emitted, seen and skipped as bad, summed over the workers the consumer heard from."""
        ws = self._seen["workers"].values()
        return {k: sum(w[k] for w in ws) for k in ("emitted", "seen", "bad")}

    def loader(self, batch_size: int, num_workers: int = 0, collate_fn=None, **kwargs):
        """Batches (lists of samples unless ``collate_fn``) from a torch DataLoader, tracked for ``state_dict``."""
        if not kwargs.get("in_order", True):
            raise ValueError("in_order=False breaks the exact resume; the loader relies on round-robin order")
        self._start(num_workers)
        dl = DataLoader(
            _Raw(self),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=functools.partial(_collate, collate_fn),
            **kwargs,
        )
        for batch, state, n in dl:
            self._note(*state)
            if n:
                yield batch

    def __iter__(self):
        self._start(0)
        for sample in self._generate():
            self._note(*sample.pop("__state__"))
            if "__end__" not in sample:
                yield sample

    # -- one logical worker ---------------------------------------------------------------------
    def _generate(self):
        info = get_worker_info()
        workers, wid = (1, 0) if info is None else (info.num_workers, info.id)
        logical = (wid + self._resume["next"]) % workers
        st = copy.deepcopy(self._resume["workers"].get(str(logical)))
        for sample, state in self._worker(logical, workers, st):
            sample = sample or {"__end__": True}
            sample["__state__"] = (logical, workers, state)
            yield sample

    def _shard(self, m: str, epoch: int, g: int, G: int, cursor: int) -> tuple[str, dict] | None:
        n, mi = len(self.shards[m]), self.modalities.index(m)
        if self.epochs is None:
            i = int(np.random.default_rng([self.seed, g, G, mi, cursor]).integers(n))
        else:
            mine = np.random.default_rng([self.seed, epoch, mi]).permutation(n)[g::G]
            if cursor >= len(mine):
                return None
            i = int(mine[cursor])
        return storage.join(self.folders[m], self.shards[m][i]["name"]), self.shards[m][i]

    def _source(self, m, epoch, g, G, cursor, offset, byte):
        """Yield ``(raw, ref, next position)``; raw is None (and ref the reason and how many samples were
        lost) for a shard that broke."""
        while (shard := self._shard(m, epoch, g, G, cursor)) is not None:
            (uri, entry), n = shard, offset
            try:
                for raw, a, b in iter_samples(uri, byte, attempts=self.attempts):
                    n += 1
                    yield raw, (m, cursor, n - 1, a, b), [cursor, n, b]
                if n != entry["samples"]:
                    reason = f"{uri}: {n} samples, the index says {entry['samples']}"
                    yield None, (reason, max(entry["samples"] - n, 1)), [cursor + 1, 0, 0]
            except FileNotFoundError:
                raise ShardSetError(f"{uri}: listed in the index but missing") from None
            except TAR_ERRORS as exc:  # the samples the index counts past the break are lost, each one bad
                reason = f"{uri}: unreadable tar after {n} samples ({exc}); rest of shard skipped"
                yield None, (reason, max(entry["samples"] - n, 1)), [cursor + 1, 0, 0]
            cursor, offset, byte = cursor + 1, 0, 0

    def _refill(self, refs, epoch, g, G) -> list[dict]:
        """The shuffle buffer of a saved state: one ranged read per shard over the samples it held."""
        by_shard, got = {}, {}
        for ref in refs:
            by_shard.setdefault(tuple(ref[:2]), []).append(tuple(ref))
        for (m, cursor), rs in by_shard.items():
            uri = self._shard(m, epoch, g, G, cursor)[0]
            lo, hi = min(r[3] for r in rs), max(r[4] for r in rs)
            data = storage.read_range(uri, lo, hi, self.attempts)
            for r in rs:
                got[r] = next(s for s, _, _ in iter_samples(uri, r[3], data=data[r[3] - lo : r[4] - lo]))
        return [got[tuple(r)] for r in refs]

    def _worker(self, logical: int, workers: int, st: dict | None):
        G, g = self.world_size * workers, self.rank * workers + logical

        def fresh():
            return {m: [0, 0, 0] for m in self.modalities}

        st = st or {"epoch": 0, "emitted": 0, "seen": 0, "bad": 0, "rng": None, "sources": fresh(), "buffer": []}
        while self.epochs is None or st["epoch"] < self.epochs:
            e = st["epoch"]
            rng = np.random.default_rng([self.seed, e, self.rank, logical, workers])
            if st["rng"] is not None:
                rng.bit_generator.state = st["rng"]
            refs, raws = [tuple(r) for r in st["buffer"]], self._refill(st["buffer"], e, g, G)  # the buffer
            pos = st["sources"]
            srcs = {m: self._source(m, e, g, G, *pos[m]) for m in self.modalities if pos[m] is not None}
            live, cum = None, None
            while srcs or raws:
                if srcs:
                    if live is None or len(live) != len(srcs):
                        live = [m for m in self.modalities if m in srcs]
                        cum = np.cumsum(self.weights[[self.modalities.index(m) for m in live]])
                    # one live set needs no draw; uniform draws below: random() is 3x cheaper than integers()
                    m = (
                        live[0]
                        if len(live) == 1
                        else live[min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(live) - 1)]
                    )
                    item = next(srcs[m], None)
                    if item is None:
                        del srcs[m]
                        pos[m] = None
                        continue
                    raw, ref, pos[m] = item
                    if raw is None:
                        self._bad(st, *ref)
                        continue
                    if len(raws) < self.shuffle_buffer:
                        refs.append(ref)
                        raws.append(raw)
                        continue
                    if raws:  # emit a random buffered sample, keep the new one in its place
                        i = int(rng.random() * len(raws))
                        ref, refs[i], raw, raws[i] = refs[i], ref, raws[i], raw
                else:  # the sources are done: drain the buffer in random order
                    i = int(rng.random() * len(raws))
                    ref, raw = refs[i], raws[i]
                    refs[i], raws[i] = refs[-1], raws[-1]
                    refs.pop()
                    raws.pop()
                try:
                    sample = self._finish(ref[0], raw, st["emitted"])
                except Exception as exc:  # a bad sample: skipped and counted, never a silent stop
                    self._bad(st, f"{raw.get('__url__')}: sample {raw.get('__key__')}: {type(exc).__name__}: {exc}")
                    continue
                st["emitted"] += 1
                st["seen"] += 1
                st["rng"], st["buffer"] = rng.bit_generator.state, list(refs)
                yield sample, {**st, "sources": {k: v and list(v) for k, v in pos.items()}}
            st = {**st, "epoch": e + 1, "rng": None, "sources": fresh(), "buffer": []}
        yield None, st  # the end: its counts include bad samples after the last good one

    def _bad(self, st: dict, reason: str, samples: int = 1) -> None:
        st["bad"] += samples
        st["seen"] += samples
        log.warning("skipped bad data (%d of %d so far): %s", st["bad"], st["seen"], reason)
        if st["bad"] > self.bad_grace + self.max_bad_rate * st["seen"]:
            raise BadDataError(
                f"{st['bad']} bad of {st['seen']} samples, past the allowed {self.bad_grace} + "
                f"{self.max_bad_rate:.1%}; last: {reason}"
            )

    def _finish(self, m: str, raw: dict, index: int) -> dict:
        fmt.check_key(raw["__key__"])  # a member named ../x or /x is a path: never handed to training
        sample = {k: v for k, v in raw.items() if k != "__url__"}
        meta = json.loads(sample["json"])  # the contract's checks that training needs; verify does the rest
        if meta.get("modality") != m:
            raise ValueError(f"json.modality {meta.get('modality')!r} inside the {m} set")
        missing = [f for f in fmt.REQUIRED[m] if f not in sample]
        if missing:
            raise ValueError(f"{m} sample lacks required field(s) {missing}")
        out = {"__key__": raw["__key__"], "__url__": raw["__url__"], "modality": m}
        if self.labels:
            table = shard_labels(self.folders[m], self.labels, raw["__url__"].rsplit("/", 1)[-1])
            if raw["__key__"] not in table:
                raise KeyError(f"no label in the sidecar set of bank {self.labels!r}")
            out["cls"] = torch.from_numpy(table[raw["__key__"]].astype(np.int64))
        elif "cls.npy" in raw:
            out["cls"] = torch.from_numpy(fields.labels(raw["cls.npy"]).astype(np.int64))
        out.update(self.transforms[m]({**sample, "meta": meta, "__index__": index}))
        return out


class _Raw(IterableDataset):
    """The stream with each sample's worker state attached, for the loader's collate to carry."""

    def __init__(self, stream: ShardStream):
        self.stream = stream

    def __iter__(self):
        return self.stream._generate()
