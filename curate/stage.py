"""The stage abstraction: frozen-dataclass parameters, a per-row or per-batch transform, no Ray.

A batch is Ray Data's default: a dict of equal-length NumPy arrays (object arrays for bytes,
strings and JSON). Every row carries the bookkeeping columns ``key``, ``uri``, ``modality``,
``partition``, ``status`` (``live`` until it is ``dropped`` or ``failed``), ``reason`` (a short,
countable ``stage/code``), ``detail`` (the full message) and ``meta`` (a JSON object that stages
extend). :func:`apply_stage` is the single place that
shows a stage only the live rows of its modalities, turns ``keep``/``drop_reason`` into
``dropped`` rows and turns exceptions into ``failed`` rows, so a bad input never stops a run.
The same function runs in-process (tests, ``run_in_process``) and inside Ray (``curate.ray_runner``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import traceback
from typing import Any, ClassVar

import numpy as np

from curate import decodes
from curate.isolation import IsolatedRunner, StageTimeout
from manifests import NonNegativeFloat, NonNegativeInt

BOOKKEEPING = ("key", "uri", "modality", "partition", "status", "reason", "detail", "meta", "parent")
LIVE, KEPT, DROPPED, FAILED = "live", "kept", "dropped", "failed"
SPLIT = "split"  # an input that became several samples (a video's clips); the sink settles it from them
TIMING = "_seconds"  # meta key holding {stage: seconds} for one row


@dataclasses.dataclass(frozen=True)
class Stage:
    """Base class. Subclasses are frozen dataclasses whose fields are the manifest's parameters.

    Override ``process_row(row) -> row`` (rows are dicts; ``meta`` is a dict) or, for vectorised
    work, ``process_batch(rows) -> rows``. A filter subclasses :class:`Filter` (or sets
    ``row["keep"] = False`` and ``row["drop_reason"] = "code: detail"``). Heavy state is
    loaded in ``setup()`` once per worker and kept with ``self.hold(name, value)``; it is never
    pickled with the stage.

    Every stage also takes the fault policy fields below from its manifest table.
    """

    name: ClassVar[str] = ""
    modalities: ClassVar[tuple[str, ...]] = ("image", "video", "ocr")
    outputs: ClassVar[tuple[str, ...]] = ()  # columns this stage adds (None for rows it does not touch)
    # a fan-out stage's process_row returns a list: [row] to pass it on, or the samples it became
    fans_out: ClassVar[bool] = False
    cpus: ClassVar[float] = 1.0
    gpus: ClassVar[float] = 0.0
    batch_size: ClassVar[int] = 16
    concurrency: ClassVar[int | None] = None
    # transient errors (I/O, connection, timeouts of remote stores) are retried this many times
    retries: NonNegativeInt = dataclasses.field(default=0, kw_only=True)
    # run each row in a child process: a crash or hang fails that row, not the worker
    isolate: bool = dataclasses.field(default=False, kw_only=True)
    # with isolate: seconds a row may take before its process is killed (0 = no limit)
    timeout_s: NonNegativeFloat = dataclasses.field(default=0.0, kw_only=True)

    def __getstate__(self):
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __setstate__(self, state):
        for name, value in state.items():
            object.__setattr__(self, name, value)

    @property
    def stateful(self) -> bool:
        return type(self).setup is not Stage.setup or self.gpus > 0

    def setup(self) -> None:
        """Load models or matrices; called once per worker before the first batch."""

    def hold(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def process_batch(self, rows: list[dict]) -> list[dict]:
        return [self.process_row(row) for row in rows]

    def process_row(self, row: dict) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must define process_row or process_batch")


@dataclasses.dataclass(frozen=True)
class Filter(Stage):
    """A stage that keeps or drops rows: ``reason(row)`` is None to keep, or ``"code: detail"`` to drop.

    The code is what summaries count (``{stage}/{code}``); the detail goes to the ledger. ``reason``
    may also annotate ``row["meta"]``.
    """

    def reason(self, row: dict) -> str | None:
        raise NotImplementedError(f"{type(self).__name__} must define reason")

    def process_row(self, row: dict) -> dict:
        why = self.reason(row)
        if why is not None:
            row["keep"], row["drop_reason"] = False, why
        return row


@dataclasses.dataclass(frozen=True)
class GlobalStep:
    """A step that needs every row at once (dedup grouping, k-means fitting), between two passes.

    The pipeline ends the pass before it, writes that pass's rows to parquet per partition, and
    calls ``run(ds, workdir, rows)`` with a Ray dataset of those rows restricted to ``columns`` (live
    rows only; ``rows`` counts them, from the pass's markers: it sizes shuffles without a pass), or,
    for the local executor, ``run_local(table, workdir)`` with the same rows as one Arrow table (the
    data must fit in this process; no Ray is imported). Both drivers call the same functions of the
    domain code. The step writes what it computed under ``workdir`` and returns the stage that
    applies it (a ``Stage`` whose parameters name those files); the pipeline puts that stage at the
    head of the next pass. On Ray it never collects every row on the driver.
    """

    name: ClassVar[str] = ""
    columns: ClassVar[tuple[str, ...]] = ("key", "modality", "meta")

    def run(self, ds, workdir: str, rows: int) -> Stage:
        raise NotImplementedError

    def run_local(self, table, workdir: str) -> Stage:
        raise NotImplementedError(f"global step {self.name} has no in-process path; run it with executor = 'ray'")


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object addresses would make reruns' ledgers differ


# ---------------------------------------------------------------------------- batches and rows


def to_rows(batch: dict[str, Any]) -> list[dict]:
    columns = list(batch)
    n = len(batch[columns[0]]) if columns else 0
    rows = [{c: _scalar(batch[c][i]) for c in columns} for i in range(n)]
    for row in rows:
        row["meta"] = json.loads(row["meta"]) if row.get("meta") else {}
    return rows


def to_batch(rows: list[dict], columns: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for c in columns:
        col = np.empty(len(rows), dtype=object)
        for i, row in enumerate(rows):
            value = row.get(c)
            col[i] = json.dumps(value, sort_keys=True) if c == "meta" else value
        out[c] = col
    return out


def _scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
        return value.tobytes()  # Arrow binary columns may arrive as uint8 arrays
    return value


def new_rows(items: list[dict]) -> dict[str, np.ndarray]:
    """The first batch of a run: one row per input, status ``live``, or ``failed`` where listing
    already found the input unusable (``error``: reason code and detail)."""
    rows = [
        {
            "key": it["key"],
            "uri": it["uri"],
            "modality": it["modality"],
            "partition": it["partition"],
            "status": FAILED if it.get("error") else LIVE,
            "reason": it["error"][0] if it.get("error") else None,
            "detail": it["error"][1] if it.get("error") else None,
            "meta": dict(it.get("meta") or {}),
            "parent": None,
        }
        for it in items
    ]
    return to_batch(rows, list(BOOKKEEPING))


def apply_stage(stage: Stage, batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """Run ``stage`` over the live rows of its modalities; isolate failures row by row.

    The one place where an input may become several samples: a fan-out stage returns, per row,
    either that row or its samples. The row then stays as a ``split`` record (the sink settles it
    from its samples); each sample is a row of its own, with ``parent`` naming the input.
    """
    rows = to_rows(batch)
    columns = list(batch) + [c for c in (*stage.outputs, "parent") if c not in batch]
    todo = [i for i, r in enumerate(rows) if r["status"] == LIVE and r["modality"] in stage.modalities]
    started = time.perf_counter()
    results: dict[int, dict | list[dict]] = {}
    if todo and (stage.isolate or stage.retries or stage.fans_out):
        results = {i: _one(stage, rows[i]) for i in todo}
    elif todo:
        try:
            out = stage.process_batch([dict(rows[i]) for i in todo])
            if len(out) != len(todo):
                raise RuntimeError(f"{stage.name} returned {len(out)} rows for {len(todo)}")
        except Exception:  # noqa: BLE001  - isolate the bad row(s) instead of failing the batch
            out = [_one(stage, rows[i]) for i in todo]
        results = dict(zip(todo, out, strict=True))
    share = (time.perf_counter() - started) / max(1, len(todo))
    for i in todo:  # per-stage seconds, for the run's throughput stats (never in shards or the ledger)
        rows[i]["meta"].setdefault(TIMING, {})[stage.name] = share
    settled = []
    for i, row in enumerate(rows):
        result = results.get(i, row)
        settled += _fan_out(stage, row, result) if isinstance(result, list) else [_settle(stage, result)]
    for row in settled:
        if row["status"] != LIVE:
            for c in stage.outputs:  # dropped/failed rows carry no payload downstream
                row[c] = None
    return to_batch(settled, columns)


def _fan_out(stage: Stage, row: dict, samples: list[dict]) -> list[dict]:
    """The input row, or its ``split`` record followed by its samples (keys unique, bookkeeping inherited).

    A returned row with the input's key is the input itself: alone, it passes on; first of several,
    it is the record (its ``meta`` says what the input gave) and the rest are the samples.
    """
    if samples and samples[0]["key"] == row["key"]:
        if len(samples) == 1:
            return [_settle(stage, {**row, **samples[0]})]
        row, samples = {**row, **samples[0]}, samples[1:]
    keys = [s["key"] for s in samples]
    if len(set(keys)) != len(keys) or row["key"] in keys:
        raise RuntimeError(f"{stage.name}: the samples of {row['key']} need unique keys of their own, got {keys}")
    split = dict(row, status=SPLIT, reason=None, detail=None)
    split["meta"] = dict(row["meta"], samples=len(samples))
    inherited = {"uri": row["uri"], "modality": row["modality"], "partition": row["partition"], "parent": row["key"]}
    children = []
    for sample in samples:
        child = {"status": LIVE, "reason": None, "detail": None, **sample, **inherited}
        child["meta"] = {k: v for k, v in child.get("meta", {}).items() if k != TIMING}
        children.append(_settle(stage, child))
    return [split, *children]


TRANSIENT = (ConnectionError, TimeoutError, InterruptedError)


def _one(stage: Stage, row: dict) -> dict:
    attempt = 0
    while True:
        try:
            if stage.isolate:
                return _runner(stage)(dict(row))
            if stage.fans_out:
                return stage.process_row(dict(row))
            return stage.process_batch([dict(row)])[0]
        except TRANSIENT as exc:
            if attempt < stage.retries and not isinstance(exc, StageTimeout):
                attempt += 1
                time.sleep(min(0.1 * 2**attempt, 5.0))
                continue
            return _failed(stage, row, exc)
        except Exception as exc:  # noqa: BLE001
            return _failed(stage, row, exc)


def _runner(stage: Stage) -> IsolatedRunner:
    runner = getattr(stage, "_isolated_runner", None)
    if runner is None:
        runner = IsolatedRunner(stage)
        stage.hold("_isolated_runner", runner)
    return runner


def failed(stage: Stage, row: dict, exc: BaseException) -> dict:
    """``row`` as failed by ``exc`` in ``stage``: for a fan-out stage's samples that fail alone."""
    return _failed(stage, row, exc)


def _failed(stage: Stage, row: dict, exc: BaseException) -> dict:
    failed = dict(row)
    failed["status"] = FAILED
    code = getattr(exc, "code", None)  # an error that names its cause (MediaError) is counted by cause
    if not isinstance(code, str):  # an input gone since it was listed, or a JSONL row naming no file
        code = "not_found" if isinstance(exc, FileNotFoundError) else type(exc).__name__
    failed["reason"] = f"{stage.name}/{code}"
    failed["detail"] = _ADDRESS.sub("", str(exc))[:2000] or type(exc).__name__
    failed["meta"] = dict(row["meta"], traceback=_ADDRESS.sub("", traceback.format_exc(limit=4))[-2000:])
    return failed


def _settle(stage: Stage, row: dict) -> dict:
    keep = row.pop("keep", True)
    drop_reason = row.pop("drop_reason", None)
    if row["status"] == LIVE and not keep:
        row["status"] = DROPPED
        code, _, detail = str(drop_reason or "filtered").partition(":")
        row["reason"] = f"{stage.name}/{code.strip()}"
        row["detail"] = detail.strip() or None
    return row


def apply_in_chunks(stage: Stage, batch: dict[str, Any], size: int | None = None) -> dict[str, np.ndarray]:
    """``apply_stage`` over slices of ``size`` rows (default: the stage's batch size), concatenated.

    Slices never span two partitions, so a stage sees the same batches whichever executor runs it
    and however Ray merged blocks: batched float math (embeddings) then gives the same bits.
    """
    n = len(batch["key"])
    size = size or stage.batch_size
    partition = np.asarray(batch["partition"])
    bounds = [0, *(np.flatnonzero(partition[1:] != partition[:-1]) + 1).tolist(), n]
    starts = [(i, min(i + size, hi)) for lo, hi in zip(bounds, bounds[1:], strict=False) for i in range(lo, hi, size)]
    parts = [apply_stage(stage, {c: v[a:b] for c, v in batch.items()}) for a, b in starts]
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]} if parts else batch


def apply_chain(stages: list[Stage], batch: dict[str, Any], batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Stages one after the other over one partition's batch, each picture decoded once for all of
    them (``curate.decodes``): a run's local executor and each Ray task of consecutive task stages."""
    with decodes.shared():
        for stage in stages:
            batch = apply_in_chunks(stage, batch, batch_size)
    return batch


def run_in_process(
    stages: list[Stage], batch: dict[str, Any], batch_size: int | None = None, setup: bool = True
) -> dict[str, np.ndarray]:
    """Run a stage list on an in-memory batch without Ray (tests, small jobs, debugging)."""
    for stage in stages if setup else ():
        stage.setup()
    return apply_chain(stages, batch, batch_size)
