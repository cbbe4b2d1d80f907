"""The one adapter from stages to Ray Data: tasks for stateless stages, actors for ``setup()``/GPU.

Cluster settings (joining, S3 for workers, shuffle width) live in :mod:`curate.cluster`."""

from __future__ import annotations

import pyarrow as pa

from curate.cluster import cluster_cpus, worker_env
from curate.stage import BOOKKEEPING, Stage, apply_chain


def to_arrow(batch: dict) -> pa.Table:
    """Typed columns, so an all-None payload column never becomes float and breaks schema unification."""
    types = {c: pa.string() for c in BOOKKEEPING} | {"partition": pa.int64()}
    return pa.table({c: pa.array(list(v), type=types.get(c, pa.binary())) for c, v in batch.items()})


class _StageActor:
    """Holds one stage whose ``setup()`` ran once in this worker."""

    def __init__(self, stage: Stage):
        stage.setup()
        self.stage = stage

    def __call__(self, batch):
        return to_arrow(apply_chain([self.stage], batch))


def chains(stages: list[Stage]) -> list[list[Stage]]:
    """The stages as Ray sees them: each run of consecutive task stages (no ``setup()``, no GPU, no
    concurrency of their own) is one task, so a picture is decoded once for all of them and rows
    cross no Arrow table between them; every other stage is alone (an actor pool, or its own limit)."""
    out: list[list[Stage]] = []
    for stage in stages:
        alone = stage.stateful or stage.concurrency
        if out and not alone and not (out[-1][-1].stateful or out[-1][-1].concurrency):
            out[-1].append(stage)
        else:
            out.append([stage])
    return out


def map_stage(ds, stage: Stage | list[Stage], pools: int = 1):
    """Append ``stage`` (or a chain of task stages, see :func:`chains`) to a Ray dataset of bookkeeping rows.

    Whole blocks are batches (a block holds whole partitions; see ``curate.pipeline``), and each
    stage sees them in slices of its own ``batch_size``. ``pools``: how many auto-sized actor
    pools the pass holds (see :func:`pool_plan`).
    """
    chain = stage if isinstance(stage, list) else [stage]
    stage = chain[0]
    common = {"batch_size": None, "batch_format": "numpy", "num_cpus": max(s.cpus for s in chain), **worker_env()}
    if stage.gpus:
        common["num_gpus"] = stage.gpus
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    if stage.stateful:
        actor = type(f"{type(stage).__name__}Actor", (_StageActor,), {})  # names the progress bar
        if stage.concurrency:
            pool = ActorPoolStrategy(size=stage.concurrency)
        else:
            size, common["num_cpus"] = pool_plan(stage.cpus, pools, cluster_cpus())
            pool = ActorPoolStrategy(min_size=1, max_size=size)
        return ds.map_batches(actor, fn_constructor_kwargs={"stage": stage}, compute=pool, **common)

    def run(batch, _chain=chain):
        return to_arrow(apply_chain(_chain, batch))

    run.__name__ = run.__qualname__ = "+".join(type(s).__name__ for s in chain)
    if stage.concurrency:
        common["compute"] = TaskPoolStrategy(size=stage.concurrency)
    return ds.map_batches(run, **common)


def pool_plan(cpus_per_actor: float, pools: int, cluster_cpus: int) -> tuple[int, float]:
    """(most actors, CPUs each) for one of ``pools`` auto-sized actor pools on ``cluster_cpus`` CPUs.

    One CPU always stays with the task stages: actors holding every CPU would sit idle waiting for
    input that the starved task stages upstream never produce. The pools split the rest; where a
    pool's share is under one actor's request, its single actor asks for the share (a fraction of
    a CPU, so it shares a core: slower on a tiny cluster, never stuck).
    """
    share = max(0, cluster_cpus - 1) / max(1, pools)
    cpus = min(cpus_per_actor, share)
    return (max(1, int(share // cpus)) if cpus > 0 else 1), cpus
