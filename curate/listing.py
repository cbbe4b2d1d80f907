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
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from curate.cluster import init_ray, worker_env
from curate.sink import keys_digest
from curate.sources import SourceError, assign_partitions, list_unit, plan_units
from shards import storage


def list_run(cfg, out: str, in_ray: bool) -> tuple[dict[int, dict], Counter]:
    """Partition number -> ``{"listing", "local", "count", "keys_sha256"}``, and files passed over."""
    units, skipped = plan_units(cfg.sources)
    work = [{"unit": n, "source": i, "spec": json.dumps(unit)} for n, (i, unit) in enumerate(units)]
    sources, size, cap = cfg.sources, cfg.partition_size, cfg.partition_bytes

    def one(task: dict) -> dict:
        try:
            return {"result": json.dumps(_list_unit(sources, task, out, size, cap))}
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
    return partitions, skipped


def _list_unit(sources, task: dict, out: str, size: int, cap: int) -> dict:
    items, passed = list_unit(sources[task["source"]], json.loads(task["spec"]))
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
    return [
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
