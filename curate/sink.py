"""Finish one partition: its shards (one per modality), its ledger part, then its completion marker.
The marker is written last and records a hash of the partition's input keys, so a rerun skips
exactly the partitions that finished with the same inputs and redoes the rest; everything a
partition writes is deterministic, so redoing it yields the same bytes.

Shard numbers are contiguous within a set (``demo_image-v1-{000000..000005}.tar`` names every
shard), though partitions finish in any order and many keep nothing of a modality. So a partition
stages its tars under ``_work/shards/<modality>/part-<partition>.tar.staged`` and names its ledger rows'
``shard`` after them; the set's final step, :func:`place_shards`, numbers each modality's staged
tars in partition order, places them in the set folder under those names (a hard link locally, a
server-side copy on S3), records the partition of each in ``index.json`` and rewrites the ledger's
``shard`` column to the published names. The numbering is a function of the finished partitions
alone, so a killed run, rerun, publishes the same bytes; a rerun whose partitions changed renumbers
from the staged tars, which stay as the partitions' own record.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.ray_runner import to_arrow
from curate.stage import DROPPED, FAILED, KEPT, LIVE, SPLIT, TIMING, to_rows
from shards import fields as shard_fields
from shards import format as fmt
from shards import storage
from shards.writer import write_shard

# Ray column -> shard field (columns cannot hold dots comfortably)
FIELD_OF_COLUMN = {
    "jpg": "jpg",
    "txt": "txt",
    "patches_jpg": "patches.jpg",
    "pos_npy": "pos.npy",
    "frames_jpg": "frames.jpg",
    "cls_npy": "cls.npy",
    "words_npy": "words.npy",
}
# one declared schema for every part, so the ledger folder reads as one table even where a part's
# column is all null (a partition without failures has no reason or detail)
LEDGER_SCHEMA = pa.schema(
    [
        (c, pa.int64() if c == "partition" else pa.string())
        for c in ("key", "uri", "modality", "partition", "status", "reason", "detail", "shard", "meta", "parent")
    ]
)
# a caption is the sample's txt, not json; the URI as the manifest writes it is the json's source
NOT_IN_SAMPLE = ("traceback", "text_uri", "caption", "uri_as_written", TIMING)


def keys_digest(keys) -> str:
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def input_keys(rows: list[dict]):
    """The keys of a partition's inputs (not of the samples an input became): what markers compare."""
    return (r["key"] for r in rows if not r.get("parent"))


def settle_splits(rows: list[dict]) -> None:
    """A split input ends as kept when any of its samples is, else dropped (some dropped) or failed."""
    children = defaultdict(list)
    for row in rows:
        if row.get("parent"):
            children[row["parent"]].append(row)
    for row in rows:
        if row["status"] != SPLIT:
            continue
        counts = Counter(child["status"] for child in children[row["key"]])
        row["meta"]["samples"] = dict(sorted(counts.items()))
        reasons = Counter(child["reason"] for child in children[row["key"]] if child["reason"])
        if counts[KEPT]:
            row.update(status=KEPT, reason=None, detail=None)
        elif counts[DROPPED]:
            row.update(status=DROPPED, reason="samples/none_kept", detail=_counted(reasons))
        else:
            row.update(status=FAILED, reason="samples/all_failed", detail=_counted(reasons) or "no sample")


def _counted(reasons: Counter) -> str:
    return ", ".join(f"{reason} x{n}" for reason, n in sorted(reasons.items()))


def failures(rows: list[dict]) -> dict:
    """How many of a partition's inputs failed and why (one example detail per reason): what the run
    watches to stop early when everything fails."""
    inputs = [r for r in rows if not r.get("parent")]
    failed = [r for r in inputs if r["status"] == FAILED]
    examples = {}
    for r in failed:
        examples.setdefault(r["reason"], str(r["detail"] or "")[:300])
    return {"inputs": len(inputs), "by_reason": dict(Counter(r["reason"] for r in failed)), "examples": examples}


def outcomes(rows: list[dict]) -> dict:
    """A partition's inputs by outcome, for the progress display: before the last pass, live (and
    split) inputs count as kept so far."""
    counts = Counter(r["status"] for r in rows if not r.get("parent"))
    return {"kept": counts[KEPT] + counts[LIVE] + counts[SPLIT], "dropped": counts[DROPPED], "failed": counts[FAILED]}


def marker_uri(out: str, partition: int) -> str:
    return storage.join(out, "_partitions", f"{partition:06d}.json")


def read_marker(out: str, partition: int) -> dict | None:
    data = storage.try_read(marker_uri(out, partition))
    try:
        return None if data is None else json.loads(data)
    except json.JSONDecodeError:
        return None  # a torn marker means the partition did not finish


def shard_folder(out: str, modality: str) -> str:
    return storage.join(out, "shards", modality)


def staged_shard(modality: str, partition: int) -> str:
    """Where a partition writes its tar of a modality (relative to the run folder), before the set's
    final step numbers it; named ``.tar.staged``, so a glob for a run's ``*.tar`` finds each shard once."""
    return f"_work/shards/{modality}/part-{partition:06d}.tar.staged"


def place_shards(out: str, set_name: str, version: str, markers: dict[int, dict]) -> dict[str, list[dict]]:
    """The set's final step (see the module docstring): {modality: index entries} of the placed tars.

    Placing is idempotent (a tar already in place is left), so the step can be redone whole."""
    entries, published = defaultdict(list), defaultdict(dict)  # partition -> {modality: ledger shard}
    for partition in sorted(markers):
        for shard in markers[partition]["shards"]:
            modality = shard["modality"]
            name = fmt.shard_name(f"{set_name}_{modality}", version, len(entries[modality]))
            folder, staged = shard_folder(out, modality), staged_shard(modality, partition)
            source = storage.join(out, *staged.split("/"))
            if shard["name"] != staged.rsplit("/", 1)[-1] and not storage.exists(source):
                storage.place(storage.join(folder, shard["name"]), source)  # a marker from before staging
            storage.place(source, storage.join(folder, name))
            facts = {k: shard[k] for k in ("samples", "bytes", "sha256")}
            entries[modality].append({"name": name, **facts, "partition": partition})
            published[partition][modality] = f"{modality}/{name}"
    for partition, names in published.items():
        _name_ledger_shards(storage.join(out, "ledger", f"part-{partition:06d}.parquet"), names)
    return dict(entries)


def _name_ledger_shards(uri: str, names: dict[str, str]) -> None:
    """Rewrite a ledger part's ``shard`` column to the published names, when it does not hold them yet."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    modality, shard = table.column("modality").to_pylist(), table.column("shard").to_pylist()
    named = [s if s is None else names[m] for m, s in zip(modality, shard, strict=True)]
    if named != shard:
        table = table.set_column(LEDGER_SCHEMA.get_field_index("shard"), "shard", pa.array(named, pa.string()))
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(uri, buf.getvalue())


def pass_uri(out: str, pass_index: int, partition: int, ext: str) -> str:
    return storage.join(out, "_work", f"pass{pass_index}", f"part-{partition:06d}.{ext}")


def pass_files(out: str, pass_index: int, partitions) -> list[str]:
    return [pass_uri(out, pass_index, p, "parquet") for p in partitions]


def read_pass_marker(out: str, pass_index: int, partition: int) -> dict | None:
    """``{"keys_sha256", "rows"}`` of a partition's finished pass (rows: its live rows), or None."""
    data = storage.try_read(pass_uri(out, pass_index, partition, "done"))
    try:
        return None if data is None else json.loads(data)
    except json.JSONDecodeError:
        return None  # torn, or a marker of an older layout: the partition's pass is redone


def write_pass(batch: dict, out: str, pass_index: int) -> dict:
    """Keep one partition's rows (payload included) for the next pass; the marker goes last."""
    rows = sorted(to_rows(batch), key=lambda r: r["key"])
    partition = rows[0]["partition"]
    columns = list(batch)
    table = to_arrow(
        {c: [json.dumps(r[c], sort_keys=True) if c == "meta" else r.get(c) for r in rows] for c in columns}
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(pass_uri(out, pass_index, partition, "parquet"), buf.getvalue())
    marker = {"keys_sha256": keys_digest(input_keys(rows)), "rows": sum(r["status"] == LIVE for r in rows)}
    storage.write_bytes(pass_uri(out, pass_index, partition, "done"), json.dumps(marker).encode())
    return {"partition": partition, **marker, "failures": failures(rows), "outcomes": outcomes(rows)}


def write_partition(batch: dict, out: str, set_name: str, version: str) -> dict:
    """Write shards, ledger part and marker for all rows of one partition; return the marker."""
    rows = sorted(to_rows(batch), key=lambda r: r["key"])
    partitions = {r["partition"] for r in rows}
    if len(partitions) != 1:
        raise ValueError(f"write_partition got rows of partitions {sorted(partitions)}")
    partition = partitions.pop()
    shards, by_modality = [], {}
    for row in rows:
        if row["status"] == LIVE:
            row["status"] = KEPT
            by_modality.setdefault(row["modality"], []).append(row)
    for modality, kept in sorted(by_modality.items()):
        staged = staged_shard(modality, partition)
        samples = []
        for row in kept:
            try:
                samples.append(_sample(row, set_name, version))
                row["shard"] = staged
            except ValueError as exc:  # the contract refused it: account for it, never lose it
                row.update(status=FAILED, reason="shard_writer/ContractError", detail=str(exc))
        if samples:
            info = write_shard(samples, storage.join(out, *staged.split("/")))
            shards.append({**info, "modality": modality, "partition": partition})
    settle_splits(rows)  # after the shard writer: a sample the contract refuses is failed first
    stats = defaultdict(lambda: [0, 0.0])
    for row in rows:
        for stage, seconds in row["meta"].pop(TIMING, {}).items():
            stats[stage][0] += 1
            stats[stage][1] += seconds
    records = [
        {c: row.get(c) for c in LEDGER_SCHEMA.names} | {"meta": fmt.encode_json(_ledger_meta(row["meta"])).decode()}
        for row in rows
    ]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records, schema=LEDGER_SCHEMA), buf)
    storage.write_bytes(storage.join(out, "ledger", f"part-{partition:06d}.parquet"), buf.getvalue())
    marker = {
        "partition": partition,
        "keys_sha256": keys_digest(input_keys(rows)),
        "shards": shards,
        "failures": failures(rows),
        "outcomes": outcomes(rows),
        "stage_stats": {stage: {"rows": n, "seconds": round(sec, 6)} for stage, (n, sec) in sorted(stats.items())},
    }
    storage.write_bytes(marker_uri(out, partition), fmt.encode_json(marker))
    return marker


def _ledger_meta(meta: dict) -> dict:
    """The ledger keeps a caption's BLAKE3 and length, not the text (the shard's ``txt`` holds it)."""
    caption = meta.get("caption")
    if caption is None:
        return meta
    rest = {k: v for k, v in meta.items() if k != "caption"}
    return rest | {"caption_blake3": storage.digest(caption.encode()), "caption_chars": len(caption)}


def _sample(row: dict, set_name: str, version: str) -> dict:
    meta = {k: v for k, v in row["meta"].items() if k not in NOT_IN_SAMPLE}
    shown = row["meta"].get("uri_as_written", row["uri"])  # not the absolute path a task read: see sources.list_unit
    meta.update(key=row["key"], modality=row["modality"], source=shown, set=set_name, version=version)
    meta["partition"] = row["partition"]  # the shard's number is the set's, not the partition's
    sample = {"__key__": fmt.check_key(row["key"]), "json": fmt.encode_json(meta)}
    for column, field in FIELD_OF_COLUMN.items():
        value = row.get(column)
        if value is not None:
            sample[field] = bytes(value) if not isinstance(value, np.ndarray) else value.tobytes()
    caption = row["meta"].get("caption")
    if caption is not None and "txt" not in sample:  # images and video clips: the caption (OCR: its transcript)
        sample["txt"] = caption.encode("utf-8")
    shard_fields.check_sample(sample)
    return sample
