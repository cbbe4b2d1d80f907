"""Listing that scales: each unit of the sources (a folder, a tar, a table or a parquet row group)
is listed in a task of its own, which forms its partitions and writes its inputs to
``_work/listing/unit-{n}.parquet``, a row group per partition; the driver keeps, per partition,
where its inputs are, how many there are and the hash of their keys (what completion markers are
compared with).

Units come in a fixed order and each one's partitions are numbered after the previous unit's, so a
rerun over the same inputs forms the same partitions and resumes exactly the unfinished ones.
"""

from __future__ import annotations

import io
import json
import os
import socket
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.cluster import init_ray, worker_env
from curate.sink import keys_digest
from curate.sources import SourceError, anchor, assign_partitions, list_unit, plan_units, rename_repeats
from shards import storage


def list_run(cfg, out: str, in_ray: bool) -> tuple[dict[int, dict], Counter]:
    """Partition number -> ``{"listing", "local", "count", "keys_sha256"}``, and files passed over.

    Relative source paths resolve here, on the driver, against its working directory: tasks read
    absolute paths, whatever their own working directory (see ``sources.as_written`` for keys)."""
    bases = [anchor(src, os.getcwd()) for src in cfg.sources]
    units, skipped = plan_units(cfg.sources, bases)
    work = [{"unit": n, "source": i, "spec": json.dumps(unit)} for n, (i, unit) in enumerate(units)]
    sources, size, cap = cfg.sources, cfg.partition_size, cfg.partition_bytes

    def one(task: dict) -> dict:
        try:
            if in_ray:
                _check_seen(sources[task["source"]], json.loads(task["spec"]))
            return {"result": json.dumps(_list_unit(sources, bases, task, out, size, cap))}
        except SourceError as exc:  # a unit that cannot be listed at all (a table without its columns)
            return {"result": json.dumps({"unit": task["unit"], "error": str(exc)})}

    # one unit on a cluster started here has no parallelism to gain and nowhere else to read from:
    # listing it in this process saves a Ray job (seconds of start-up) before the first input
    if in_ray and (len(work) > 1 or (work and cfg.ray.address)):
        import ray

        init_ray(cfg.ray)
        ds = ray.data.from_items(work, override_num_blocks=len(work))
        results = [json.loads(r["result"]) for r in ds.map(one, **worker_env()).take_all()]
    else:
        results = [json.loads(one(task)["result"]) for task in work]
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise SourceError(errors[0] + (f" (and {len(errors) - 1} more units)" if len(errors) > 1 else ""))
    partitions, p = {}, 0
    for r in results:
        skipped.update(r["passed"])  # counted by extension
    for result in sorted(results, key=lambda r: r["unit"]):
        for local, count, digest in result["partitions"]:
            partitions[p] = {"listing": result["uri"], "local": local, "count": count, "keys_sha256": digest}
            p += 1
    inputs = sum(d["count"] for d in partitions.values())
    _rename_repeats(partitions, _holding_repeats([r["uri"] for r in results], inputs, in_ray))
    return partitions, skipped


KEYS_ON_DRIVER = 250_000  # up to this many inputs the driver counts their keys itself (~20 MB in Arrow)


def _holding_repeats(listings: list[str], inputs: int, in_ray: bool) -> set[str]:
    """The listing files holding a key that more than one input of the run has. Beyond
    ``KEYS_ON_DRIVER`` inputs a Ray shuffle counts the keys (the driver gets only the few repeated
    ones); below, the driver counts them in Arrow, sparing a small run the shuffle's start-up."""
    if not listings:
        return set()
    if not in_ray or inputs <= KEYS_ON_DRIVER:
        keys = {uri: pa.array(_keys(uri), pa.string()) for uri in listings}
        counts = pc.value_counts(pa.concat_arrays(list(keys.values())))
        repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        return {uri for uri, ks in keys.items() if pc.any(pc.is_in(ks, repeated)).as_py()}
    import ray
    from ray.data.expressions import col

    ds = ray.data.read_parquet(listings, include_paths=True, filesystem=storage.arrow_filesystem(listings[0]))
    ds = ds.select_columns(["key", "path"])
    repeated = [r["key"] for r in ds.groupby("key").count().filter(expr=col("count()") > 1).take_all()]
    if not repeated:
        return set()
    paths = {r["path"] for r in ds.filter(expr=col("key").is_in(repeated)).take_all()}  # s3: without s3://
    return {uri for uri in listings if uri.removeprefix("s3://") in paths}


def _keys(listing: str, row_group: int | None = None) -> list[str]:
    source = storage.open_media(listing)
    try:
        f = pq.ParquetFile(source)
        table = f.read(columns=["key"]) if row_group is None else f.read_row_group(row_group, columns=["key"])
    finally:
        if not isinstance(source, str):
            source.close()
    return table["key"].to_pylist()


def _rename_repeats(partitions: dict[int, dict], holding: set[str]) -> None:
    """Give each input whose key an earlier one has its own key (``sources.rename_repeats``): its
    partition's descriptor lists the renamed rows, which ``partition_items`` applies, and its key
    hash covers the new keys. Only the partitions of ``holding`` are read."""
    seen: Counter = Counter()
    for p in sorted(partitions):
        desc = partitions[p]
        if desc["listing"] not in holding:
            continue
        keys = _keys(desc["listing"], desc["local"])
        renamed = rename_repeats(keys, seen)
        if renamed:
            desc["renamed"] = {str(n): key for n, key in renamed.items()}
            desc["keys_sha256"] = keys_digest(renamed.get(n, key) for n, key in enumerate(keys))


def _check_seen(src, unit: dict) -> None:
    """In a listing task: the unit the driver found (it planned the units) must be here too."""
    if not storage.is_s3(unit["uri"]) and not os.path.exists(unit["uri"]):
        raise SourceError(
            f"source {src.modality} {src.uri}: the driver sees {unit['uri']} but the workers cannot (not on node "
            f"{socket.gethostname()}); put the corpus where every node reads it at the same path (a shared "
            "filesystem) or on s3://"
        )


def _list_unit(sources, bases, task: dict, out: str, size: int, cap: int) -> dict:
    i = task["source"]
    items, passed = list_unit(sources[i], json.loads(task["spec"]), bases[i])
    assign_partitions(items, 0, size, cap)
    uri = storage.join(out, "_work", "listing", f"unit-{task['unit']:06d}.parquet")
    table = pa.table(
        {
            "key": [it["key"] for it in items],
            "uri": [it["uri"] for it in items],
            "modality": [it["modality"] for it in items],
            "meta": [json.dumps(it["meta"], sort_keys=True) for it in items],
            "error": pa.array([json.dumps(it["error"]) if it.get("error") else None for it in items], pa.string()),
        }
    )
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, table.schema) as writer:  # row group n = local partition n: read alone
        start = 0
        for local in range(items[-1]["partition"] + 1 if items else 0):
            stop = start
            while stop < len(items) and items[stop]["partition"] == local:
                stop += 1
            writer.write_table(table.slice(start, stop - start), row_group_size=max(1, stop - start))
            start = stop
    storage.write_bytes(uri, buf.getvalue())
    by_local: dict[int, list[str]] = {}
    for it in items:
        by_local.setdefault(it["partition"], []).append(it["key"])
    summary = [[local, len(keys), keys_digest(keys)] for local, keys in sorted(by_local.items())]
    return {"unit": task["unit"], "uri": uri, "partitions": summary, "passed": passed}


def partition_items(desc: dict, partition: int) -> list[dict]:
    """The inputs of one partition, read back from its unit's listing (in a pipeline task): one row
    group, read by ranged reads where the output is on S3."""
    source = storage.open_media(desc["listing"])
    try:
        rows = pq.ParquetFile(source).read_row_group(desc["local"]).to_pylist()
    finally:
        if not isinstance(source, str):
            source.close()
    items = [
        {
            "key": r["key"],
            "uri": r["uri"],
            "modality": r["modality"],
            "meta": json.loads(r["meta"]),
            **({"error": json.loads(r["error"])} if r["error"] else {}),
            "partition": partition,
        }
        for r in rows
    ]
    for n, key in desc.get("renamed", {}).items():
        item = items[int(n)]
        item["meta"]["renamed_from"], item["key"] = item["key"], key
    return items
