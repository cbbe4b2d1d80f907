"""Run a curation manifest: list inputs, process pending partitions, publish indexes, account.

Stages run through Ray Data (``executor = "ray"``) or in this process (``"local"``); either way
every partition ends in ``write_partition``. After all partitions, each modality's shard index
is published (last, so a reader never sees a partial set) and the ledger is checked against the
input list: every input is kept, dropped or failed exactly once.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections import defaultdict

import pandas as pd
from tqdm import tqdm

import manifests
from curate.config import RunConfig
from curate.sink import keys_digest, read_marker, shard_folder, write_partition
from curate.sources import list_inputs
from curate.stage import Stage, new_rows, run_in_process
from shards import format as fmt
from shards import storage
from shards.writer import write_index


class AccountingError(RuntimeError):
    """The ledger does not account for every input exactly once."""


def run(cfg: RunConfig, stages: list[Stage], force: bool = False, progress: bool = True) -> dict:
    started = time.time()
    out = cfg.output.dir
    if cfg.s3.endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = cfg.s3.endpoint_url
    if force and not storage.is_s3(out) and os.path.isdir(out):
        shutil.rmtree(out)
    items, skipped = list_inputs(cfg.sources, cfg.partition_size)
    storage.write_bytes(storage.join(out, "manifest.resolved.toml"), manifests.resolved_toml(cfg).encode())

    by_partition = defaultdict(list)
    for it in items:
        by_partition[it["partition"]].append(it)
    markers, todo = {}, []
    for p, group in sorted(by_partition.items()):
        marker = None if force else read_marker(out, p)
        if marker and marker["keys_sha256"] == keys_digest(it["key"] for it in group):
            markers[p] = marker
        else:
            todo.append(p)
    if progress:
        print(f"{len(items)} inputs in {len(by_partition)} partitions; {len(markers)} already done, {len(todo)} to run")
    if todo:
        pending = [it for p in todo for it in by_partition[p]]
        if cfg.executor == "local":
            done = _run_local(pending, todo, stages, cfg, progress)
        else:
            done = _run_ray(pending, stages, cfg)
        markers.update({m["partition"]: m for m in done})

    indexes = _publish_indexes(out, cfg, markers)
    ledger = read_ledger(out)
    summary = account(items, ledger, indexes, skipped, time.time() - started)
    storage.write_bytes(storage.join(out, "summary.json"), json.dumps(summary, indent=2).encode())
    return summary


def _run_local(pending: list[dict], todo: list[int], stages: list[Stage], cfg: RunConfig, progress: bool):
    batch = new_rows(pending)
    for stage in tqdm(stages, desc="stages", disable=not progress):
        batch = run_in_process([stage], batch)
    markers = []
    for p in todo:
        mask = batch["partition"] == p
        markers.append(
            write_partition(
                {c: v[mask] for c, v in batch.items()}, cfg.output.dir, cfg.output.set_name, cfg.output.version
            )
        )
    return markers


def _run_ray(pending: list[dict], stages: list[Stage], cfg: RunConfig):
    import ray

    from curate.ray_runner import init_ray, map_stage, to_arrow, worker_env

    init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.object_store_gb)
    table = to_arrow(new_rows(pending))
    blocks = max(1, min(len(pending), 4 * _cpus()))
    step = -(-len(pending) // blocks)
    ds = ray.data.from_arrow([table.slice(i, step) for i in range(0, len(pending), step)])
    for stage in stages:
        ds = map_stage(ds, stage)
    out, set_name, version = cfg.output.dir, cfg.output.set_name, cfg.output.version

    def sink(group):
        marker = write_partition(group, out, set_name, version)
        return {"marker": [json.dumps(marker)]}

    sink.__name__ = "WriteShards"
    groups = min(len({it["partition"] for it in pending}), 8 * _cpus())
    result = ds.groupby("partition", num_partitions=groups).map_groups(sink, batch_format="numpy", **worker_env())
    return [json.loads(m) for m in result.to_pandas()["marker"]]


def _cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _publish_indexes(out: str, cfg: RunConfig, markers: dict[int, dict]) -> dict[str, dict]:
    """One index per modality, from the markers; tars no marker names are removed."""
    by_modality = defaultdict(list)
    for marker in markers.values():
        for shard in marker["shards"]:
            by_modality[shard["modality"]].append({k: shard[k] for k in ("name", "samples", "bytes", "sha256")})
    indexes = {}
    for modality, shards in sorted(by_modality.items()):
        folder = shard_folder(out, modality)
        listed = {s["name"] for s in shards}
        for uri, _ in storage.list_files(folder):
            name = uri.replace("\\", "/").rsplit("/", 1)[-1]
            if name.endswith(".tar") and name not in listed:
                storage.remove(uri)  # left by an earlier run over other inputs
        extra = {"modality": modality, "run": cfg.name}
        indexes[modality] = write_index(folder, f"{cfg.output.set_name}_{modality}", cfg.output.version, shards, extra)
    return indexes


def read_ledger(out: str) -> pd.DataFrame:
    parts = [uri for uri, _ in storage.list_files(storage.join(out, "ledger")) if uri.endswith(".parquet")]
    return pd.concat([pd.read_parquet(io.BytesIO(storage.read_bytes(u))) for u in parts], ignore_index=True)


def account(items: list[dict], ledger: pd.DataFrame, indexes: dict, skipped: int, seconds: float) -> dict:
    """Check inputs = kept + dropped + failed (by key), and summarise the run."""
    expected = {it["key"] for it in items}
    ledger = ledger[ledger["key"].isin(expected)]
    seen = ledger["key"].tolist()
    missing = expected - set(seen)
    if missing or len(seen) != len(set(seen)):
        dupes = len(seen) - len(set(seen))
        raise AccountingError(f"ledger lost {len(missing)} inputs (e.g. {sorted(missing)[:3]}) and repeats {dupes}")
    counts = ledger["status"].value_counts().to_dict()
    reasons = {
        status: ledger[ledger["status"] == status]["reason"].value_counts().sort_index().to_dict()
        for status in ("dropped", "failed")
    }
    kept_by_modality = ledger[ledger["status"] == "kept"]["modality"].value_counts().sort_index().to_dict()
    shard_samples = sum(ix["samples"] for ix in indexes.values())
    if shard_samples != counts.get("kept", 0):
        raise AccountingError(f"shards hold {shard_samples} samples but the ledger keeps {counts.get('kept', 0)}")
    return {
        "inputs": len(items),
        "kept": counts.get("kept", 0),
        "dropped": counts.get("dropped", 0),
        "failed": counts.get("failed", 0),
        "kept_by_modality": kept_by_modality,
        "dropped_by_reason": reasons["dropped"],
        "failed_by_reason": reasons["failed"],
        "files_passed_over": skipped,
        "shards": sum(len(ix["shards"]) for ix in indexes.values()),
        "shard_bytes": sum(ix["bytes"] for ix in indexes.values()),
        "seconds": round(seconds, 1),
        "format_version": fmt.FORMAT_VERSION,
    }


def format_summary(summary: dict) -> str:
    """The end-of-run table a person reads."""
    lines = [
        f"{'inputs':<34}{summary['inputs']:>10}",
        f"{'kept':<34}{summary['kept']:>10}   " + ", ".join(f"{m} {n}" for m, n in summary["kept_by_modality"].items()),
        f"{'dropped':<34}{summary['dropped']:>10}",
        *[f"  {r:<32}{n:>10}" for r, n in summary["dropped_by_reason"].items()],
        f"{'failed':<34}{summary['failed']:>10}",
        *[f"  {r:<32}{n:>10}" for r, n in summary["failed_by_reason"].items()],
        f"{'shards':<34}{summary['shards']:>10}",
        f"{'shard bytes':<34}{summary['shard_bytes']:>10,}",
        f"{'time (s)':<34}{summary['seconds']:>10}",
    ]
    rule = "-" * 46
    return "\n".join([rule, *lines, rule, "inputs = kept + dropped + failed: checked"])
