"""Finish one partition: its shards (one per modality), its ledger part, then its completion marker.

The marker is written last and records a hash of the partition's input keys, so a rerun skips
exactly the partitions that finished with the same inputs and redoes the rest; everything a
partition writes is deterministic, so redoing it yields the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pandas as pd

from curate.stage import FAILED, KEPT, LIVE, to_rows
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
}
LEDGER_COLUMNS = ["key", "uri", "modality", "partition", "status", "reason", "detail", "shard"]


def keys_digest(keys) -> str:
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def marker_uri(out: str, partition: int) -> str:
    return storage.join(out, "_partitions", f"{partition:06d}.json")


def read_marker(out: str, partition: int) -> dict | None:
    try:
        return json.loads(storage.read_bytes(marker_uri(out, partition)))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    except Exception as exc:  # boto3 NoSuchKey
        if "NoSuchKey" in type(exc).__name__ or "404" in str(exc):
            return None
        raise


def shard_folder(out: str, modality: str) -> str:
    return storage.join(out, "shards", modality)


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
        name = fmt.shard_name(f"{set_name}_{modality}", version, partition)
        samples = []
        for row in kept:
            try:
                samples.append(_sample(row, set_name, version))
                row["shard"] = f"{modality}/{name}"
            except ValueError as exc:  # the contract refused it: account for it, never lose it
                row.update(status=FAILED, reason="shard_writer/ContractError", detail=str(exc))
        if samples:
            info = write_shard(samples, storage.join(shard_folder(out, modality), name))
            shards.append({**info, "modality": modality, "partition": partition})
    ledger = pd.DataFrame([{c: row.get(c) for c in LEDGER_COLUMNS} for row in rows], columns=LEDGER_COLUMNS)
    buf = io.BytesIO()
    ledger.to_parquet(buf, index=False)
    storage.write_bytes(storage.join(out, "ledger", f"part-{partition:06d}.parquet"), buf.getvalue())
    marker = {"partition": partition, "keys_sha256": keys_digest(r["key"] for r in rows), "shards": shards}
    storage.write_bytes(marker_uri(out, partition), fmt.encode_json(marker))
    return marker


def _sample(row: dict, set_name: str, version: str) -> dict:
    meta = {k: v for k, v in row["meta"].items() if k not in ("traceback", "text_uri")}
    meta.update(key=row["key"], modality=row["modality"], source=row["uri"], set=set_name, version=version)
    sample = {"__key__": fmt.check_key(row["key"]), "json": fmt.encode_json(meta)}
    for column, field in FIELD_OF_COLUMN.items():
        value = row.get(column)
        if value is not None:
            sample[field] = bytes(value) if not isinstance(value, np.ndarray) else value.tobytes()
    fmt.check_sample(sample)
    return sample
