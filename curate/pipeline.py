"""Run a curation manifest: list inputs (a task per source unit, see ``curate.listing``), process
pending partitions, publish indexes, account.

Stages run through Ray Data (``executor = "ray"``) or in this process (``"local"``); either way
every partition ends in ``write_partition``. Global steps (dedup grouping, k-means) split the
stage list into passes: each pass but the last leaves its rows as parquet per partition (with a
marker, so resume works per pass), the step reads them (through Ray, or in this process for the
local executor, which imports no Ray) and returns the stage that
heads the next pass. After all partitions, each modality's shard index
is published (last, so a reader never sees a partial set) and the ledger is checked against the
listing's count per partition: every input is kept, dropped or failed exactly once.

Before any partition runs, the output folder is reconciled with the current inputs
(``curate.run_folder``): partitions that no longer exist leave it. A run whose first inputs all
fail stops early (``stop_after_failing``): that is a configuration problem, not a corpus property.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import manifests
from curate import run_folder
from curate.cluster import cluster_cpus, init_ray, worker_env
from curate.config import RunConfig
from curate.console import Console
from curate.ledger import account, projected_cost, read_ledger, stage_throughput
from curate.listing import list_run, partition_items
from curate.ray_runner import chains, map_stage, to_arrow
from curate.sink import (
    pass_files,
    read_marker,
    read_pass_marker,
    write_partition,
    write_pass,
)
from curate.stage import LIVE, GlobalStep, Stage, new_rows, run_in_process
from shards import storage


class RunStopped(RuntimeError):
    """The first inputs all failed: a configuration problem (a source path the workers cannot see, a
    wrong setting), not a property of the corpus. The next run redoes the partitions this one finished."""


def run(
    cfg: RunConfig, stages: list, force: bool = False, progress: bool | Console = True, report: bool = True
) -> dict:
    """``progress``: a :class:`Console` to show the run on, True for one on stdout, False for none."""
    console = progress if isinstance(progress, Console) else Console(quiet=not progress)
    started = time.time()
    out = cfg.output.dir
    storage.configure(cfg.s3.endpoint_url)
    if force:  # before listing, which writes into the run folder
        run_folder.clear(out, [src.uri for src in cfg.sources])
    stopped = storage.join(out, "_work", "stopped.txt")  # a stopped run's outcomes are not the corpus's
    redo = force or storage.exists(stopped)
    by_partition, skipped = list_run(cfg, out, cfg.executor == "ray")  # partition -> where, count, keys hash
    storage.write_bytes(storage.join(out, "manifest.resolved.toml"), manifests.resolved_toml(cfg).encode())

    digests = {p: d["keys_sha256"] for p, d in by_partition.items()}
    markers, todo = {}, []
    for p in sorted(by_partition):
        marker = None if redo else read_marker(out, p)
        if marker and marker["keys_sha256"] == digests[p]:
            markers[p] = marker
        else:
            todo.append(p)
    gone = run_folder.forget(out, set(by_partition), todo)
    inputs = sum(d["count"] for d in by_partition.values())
    console.line(f"{inputs} inputs in {len(by_partition)} partitions; {len(markers)} already done, {len(todo)} to run")
    if gone:
        console.line(f"{len(gone)} partitions of an earlier run no longer exist (fewer inputs): removed")
    steps_cost: dict[str, float] = {}
    if todo:
        segments, steps = split_passes(stages)
        for k, segment in enumerate(segments):
            last = k == len(segments) - 1
            # a global step needs every partition's rows, so earlier passes cover all partitions
            need, live = (todo, {}) if last else _pass_todo(out, k, digests, redo)
            if need:
                if k == 0:
                    source = [{"partition": p, "items": json.dumps(by_partition[p]), "uri": ""} for p in need]
                else:
                    source = [
                        {"partition": p, "items": "", "uri": u}
                        for p, u in zip(need, pass_files(out, k - 1, need), strict=True)
                    ]
                label = f"pass {k + 1}/{len(segments)}"
                console.line(f"{label}: {len(segment)} stages over {len(need)} partitions")
                executor = _run_local if cfg.executor == "local" else _run_ray
                fail_fast = _FailFast(cfg.stop_after_failing, stopped)  # per pass: each sees the inputs once
                shown = console.progress(label, len(need), sum(by_partition[p]["count"] for p in need))

                def watch(finished: dict, fail_fast=fail_fast, shown=shown) -> None:
                    shown.update(finished)
                    fail_fast(finished)

                try:
                    done = executor(source, segment, cfg, None if last else k, watch)
                finally:
                    shown.close()
                if last:
                    markers.update({m["partition"]: m for m in done})
                else:
                    live.update({m["partition"]: m["rows"] for m in done})
            if not last:
                step_rows = sum(live.values())
                stage, seconds = _global_step(steps[k], out, k, sorted(by_partition), step_rows, cfg, console)
                segments[k + 1].insert(0, stage)
                steps_cost[steps[k].name] = steps_cost.get(steps[k].name, 0.0) + seconds

    indexes = run_folder.publish(out, cfg.name, cfg.output.set_name, cfg.output.version, markers)
    ledger = read_ledger(out)
    counts = {p: d["count"] for p, d in by_partition.items()}
    summary = account(counts, ledger, indexes, skipped, time.time() - started)
    storage.remove(stopped)
    throughput = stage_throughput(markers.values())
    order = [s.name for s in stages] + sorted(throughput)  # manifest order; steps' apply stages last
    summary["stages"] = {name: throughput[name] for name in dict.fromkeys(order) if name in throughput}
    summary["cost"] = projected_cost(summary["stages"], steps_cost, summary["inputs"])
    storage.write_bytes(storage.join(out, "summary.json"), json.dumps(summary, indent=2).encode())
    if report:
        from curate.report import build_report

        build_report(out)
    return summary


def split_passes(stages: list) -> tuple[list[list[Stage]], list[GlobalStep]]:
    """Stages between global steps form passes: [[s1, s2], [s3]], [step] for s1 s2 step s3."""
    segments, steps = [[]], []
    for stage in stages:
        if isinstance(stage, GlobalStep):
            steps.append(stage)
            segments.append([])
        else:
            segments[-1].append(stage)
    return segments, steps


def _pass_todo(out: str, k: int, digests: dict[int, str], redo: bool) -> tuple[list[int], dict[int, int]]:
    """Partitions whose pass ``k`` is still to run, and the live rows of those it finished (their markers')."""
    need, live = [], {}
    for p in sorted(digests):
        marker = None if redo else read_pass_marker(out, k, p)
        if marker and marker["keys_sha256"] == digests[p]:
            live[p] = marker["rows"]
        else:
            need.append(p)
    return need, live


def _global_step(
    step: GlobalStep, out: str, k: int, partitions: list[int], rows: int, cfg: RunConfig, console: Console
) -> tuple[Stage, float]:
    """The stage ``step`` returns, and the core-seconds it took: this process's CPU time in process;
    on Ray, its wall time times the cluster's CPUs (an upper bound: the workers' CPU is not measured).
    ``rows``: the live rows of pass ``k``, counted by its markers."""
    workdir = storage.join(out, "_work", f"step{k}-{step.name}")
    columns = sorted(set(step.columns) | {"status"})
    files = pass_files(out, k, partitions)
    started, cpu = time.perf_counter(), time.process_time()
    with console.phase(f"global step {step.name} over the rows of pass {k + 1}"):
        if cfg.executor == "local":
            return step.run_local(_live_rows(files, columns), workdir), time.process_time() - cpu
        import ray

        init_ray(cfg.ray)
        ds = ray.data.read_parquet(files, columns=columns, filesystem=storage.arrow_filesystem(out))
        ds = ds.filter(lambda row: row["status"] == LIVE)
        stage = step.run(ds, workdir, rows)
    return stage, (time.perf_counter() - started) * cluster_cpus()


def _live_rows(files: list[str], columns: list[str]) -> pa.Table:
    """The live rows of a pass's files as one table, in this process (the local executor's global steps)."""
    tables = []
    for uri in files:
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=columns)
        tables.append(table.filter(pc.equal(table["status"], LIVE)))
    return pa.concat_tables(tables, promote_options="default")


def _finish(batch: dict, cfg: RunConfig, pass_index: int | None) -> dict:
    """End of a pass for one partition: shards and ledger, or the rows for the next pass."""
    if pass_index is None:
        return write_partition(batch, cfg.output.dir, cfg.output.set_name, cfg.output.version)
    return write_pass(batch, cfg.output.dir, pass_index)


def load_partition(desc: dict) -> dict[str, np.ndarray]:
    """One partition's rows: fresh rows from its listed items, or the previous pass's parquet."""
    if desc["items"]:
        return new_rows(partition_items(json.loads(desc["items"]), desc["partition"]))
    table = pq.read_table(io.BytesIO(storage.read_bytes(desc["uri"])))
    return {c: _objects(table[c].to_pylist()) for c in table.column_names}


def _objects(values: list) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


class _FailFast:
    """Watches partitions as they finish; raises RunStopped when the first ``limit`` inputs all failed."""

    def __init__(self, limit: int, stopped: str):
        self.limit, self.stopped, self.inputs, self.reasons, self.examples = limit, stopped, 0, Counter(), {}

    def __call__(self, finished: dict) -> None:
        if not self.limit or self.inputs >= self.limit:
            return
        failures = finished["failures"]
        self.inputs += failures["inputs"]
        self.reasons.update(failures["by_reason"])
        self.examples.update({r: d for r, d in failures["examples"].items() if r not in self.examples})
        if self.inputs >= self.limit and sum(self.reasons.values()) == self.inputs:
            top = self.reasons.most_common(3)
            message = (
                f"the first {self.inputs} inputs all failed, so the run stops: a configuration problem "
                "(a source path the workers cannot see, a wrong setting) rather than a property of the "
                f"corpus; top reasons: {', '.join(f'{r} x{n}' for r, n in top)}; "
                f"e.g. {top[0][0]}: {self.examples[top[0][0]]}"
            )
            storage.write_bytes(self.stopped, message.encode())
            raise RunStopped(message)


def _run_local(source: list[dict], stages: list[Stage], cfg: RunConfig, pass_index: int | None, watch):
    """Partition by partition in this process: memory holds one partition at a time."""
    for stage in stages:
        stage.setup()
    done = []
    for desc in source:
        done.append(_finish(run_in_process(stages, load_partition(desc), setup=False), cfg, pass_index))
        watch(done[-1])
    return done


def _run_ray(source: list[dict], stages: list[Stage], cfg: RunConfig, pass_index: int | None, watch):
    """A pass on Ray: as Ray's own tasks where every stage is a task stage, else through Ray Data."""
    if all(not (s.stateful or s.concurrency or s.gpus) for s in stages):
        return _run_ray_tasks(source, stages, cfg, pass_index, watch)
    return _run_ray_data(source, stages, cfg, pass_index, watch)


def _run_ray_tasks(source: list[dict], stages: list[Stage], cfg: RunConfig, pass_index: int | None, watch):
    """One Ray task per partition (load, every stage, sink), a few per CPU in flight.

    A pass of task stages needs none of Ray Data's operators: no actor pools, no exchange between
    stages. Ray's own tasks cost about 0.01 s each against Ray Data's 0.1 s (RESULTS.md, Image curation
    against a plain loop), a fifth of a core at partitions of ~0.5 s. Partitions finish in any order,
    each reported as it does, so a run that fails from the start stops early.
    """
    import ray

    init_ray(cfg.ray)
    cpus = max([s.cpus for s in stages] or [1])

    @ray.remote(num_cpus=cpus, **worker_env())
    def partition(desc):
        return _finish(run_in_process(stages, load_partition(desc), setup=False), cfg, pass_index)

    todo, running, done = list(reversed(source)), [], []
    limit = 2 * max(1, int(cluster_cpus() / cpus))
    try:
        while todo or running:
            while todo and len(running) < limit:
                running.append(partition.remote(todo.pop()))
            ready, running = ray.wait(running, num_returns=1)
            done.append(ray.get(ready[0]))
            watch(done[-1])
    finally:  # a failed partition or an early stop: the rest need not run on
        for ref in running:
            ray.cancel(ref)
    return done


def _run_ray_data(source: list[dict], stages: list[Stage], cfg: RunConfig, pass_index: int | None, watch):
    """Stream partitions through the stages, ``partitions_per_task`` of them to a block, load to sink.

    Blocks are never split (``target_max_block_size = None``), so no shuffle is needed to bring a
    partition's rows back together; the sink splits a block by partition, and a partition that
    arrives incomplete stops the run with a clear error.
    """
    import ray
    from ray.data import DataContext

    init_ray(cfg.ray)
    expected = {d["partition"]: json.loads(d["items"])["count"] for d in source if d["items"]}

    def load(batch):
        descs = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        return pa.concat_tables([to_arrow(load_partition(d)) for d in descs])

    def finish(batch):
        results = []
        for p in sorted(set(batch["partition"].tolist())):
            mask = batch["partition"] == p
            inputs = int((mask & _no_parent(batch)).sum())  # samples an input became are extra rows
            if p in expected and inputs != expected[p]:
                raise RuntimeError(f"partition {p} arrived split ({inputs} of {expected[p]} inputs)")
            results.append(json.dumps(_finish({c: v[mask] for c, v in batch.items()}, cfg, pass_index)))
        return {"result": np.array(results, dtype=object)}

    load.__name__ = "LoadPartitions"
    finish.__name__ = "WriteShards" if pass_index is None else f"WritePass{pass_index + 1}"
    ctx = DataContext.get_current()
    saved, ctx.target_max_block_size = ctx.target_max_block_size, None
    try:
        ds = ray.data.from_items(source, override_num_blocks=-(-len(source) // partitions_per_task(len(source))))
        ds = ds.map_batches(load, batch_size=1, batch_format="numpy", **worker_env())
        pools = sum(stage.stateful and not stage.concurrency for stage in stages)
        for chain in chains(stages):
            ds = map_stage(ds, chain, pools)
        out = ds.map_batches(finish, batch_size=None, batch_format="numpy", **worker_env())
        done = []
        for row in out.iter_rows():  # as partitions finish, so a run that fails from the start stops early
            done.append(json.loads(row["result"]))
            watch(done[-1])
        return done
    finally:
        ctx.target_max_block_size = saved


TASKS_PER_CPU = 4  # tasks per cluster CPU a pass keeps, so uneven tasks still share out the cores
MAX_PARTITIONS_PER_TASK = 8


def partitions_per_task(partitions: int) -> int:
    """Partitions one Ray Data task runs, one after another (their rows as one block).

    Ray Data costs about 0.1 s per task where Ray's own tasks cost 0.01 s (measured: RESULTS.md, Image
    curation against a plain loop), a fifth of a core at partitions of ~0.5 s of work; so a pass with
    partitions to spare gives each task several, while keeping ``TASKS_PER_CPU`` tasks per CPU.
    """
    return max(1, min(MAX_PARTITIONS_PER_TASK, partitions // (TASKS_PER_CPU * cluster_cpus())))


def _no_parent(batch: dict) -> np.ndarray:
    parent = batch.get("parent")
    return np.ones(len(batch["key"]), bool) if parent is None else np.array([not p for p in parent], bool)
