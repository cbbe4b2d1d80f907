"""Write one shard deterministically and publish a shard set's index last.

Tars are byte-identical for identical samples (sorted keys, fixed mtime and owner), so a rerun
of a partition reproduces its shard and checksum exactly. Each tar is written to a temporary
file beside it (in the temporary folder for S3) and renamed (or uploaded) only when complete; the index is
published after every tar, so a reader that finds an index finds a whole set.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

from shards import fields as shard_fields
from shards import format as fmt
from shards import storage


def write_shard(samples: list[dict[str, bytes]], uri: str) -> dict:
    """Write samples (``__key__`` plus contract fields, bytes values) to ``uri``; return its index entry."""
    samples = sorted(samples, key=lambda s: s["__key__"])
    tmp = storage.temp_file(uri)
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as stream:
            with tarfile.open(fileobj=stream, mode="w|") as tar:
                for sample in samples:
                    fmt.check_key(sample["__key__"])
                    shard_fields.check_sample(sample)
                    _add(tar, sample)
        with open(tmp, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        size = os.path.getsize(tmp)
        storage.put_file(tmp, uri)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"name": uri.rsplit("/", 1)[-1], "samples": len(samples), "bytes": size, "sha256": digest.hexdigest()}


def _add(tar: tarfile.TarFile, sample: dict[str, bytes]) -> None:
    """One sample's members as webdataset's ``TarWriter`` writes them (fields in name order, read-only,
    fixed owner and mtime), so tars stay byte-identical; without importing webdataset, which imports
    torch (over a second of every run's start-up)."""
    for field in sorted(k for k in sample if not k.startswith("_")):
        info = tarfile.TarInfo(f"{sample['__key__']}.{field}")
        info.size, info.mtime, info.mode, info.uname, info.gname = len(sample[field]), 0, 0o444, "ovforge", "ovforge"
        tar.addfile(info, io.BytesIO(sample[field]))


def write_index(folder: str, set_name: str, version: str, shards: list[dict], extra: dict | None = None) -> dict:
    """Publish ``index.json`` for a shard set; call only after every listed tar exists.

    The index is also a wids dataset description (``wids_version``, ``shardlist`` of tar names
    relative to the index, with their sample counts), so ``wids.ShardListDataset(".../index.json")``
    opens a set without ovforge installed.
    """
    shards = sorted(shards, key=lambda s: s["name"])
    index = {
        "format_version": fmt.FORMAT_VERSION,
        "set": set_name,
        "version": version,
        "samples": sum(s["samples"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "shards": shards,
        **(extra or {}),
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": set_name,
        "shardlist": [{"url": s["name"], "nsamples": s["samples"]} for s in shards],
    }
    storage.write_bytes(storage.join(folder, fmt.INDEX_NAME), fmt.encode_json(index) + b"\n")
    return index
