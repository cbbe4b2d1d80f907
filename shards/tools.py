"""``inspect`` and ``verify`` for shard sets, local or on S3."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter

from webdataset import tariterators

from shards import format as fmt
from shards import storage
from shards.index import ShardSetError, find_sets, read_index, shard_uris


def iter_tar(data: bytes, uri: str):
    """Yield ``(key, {field: bytes})`` per sample of a tar held in memory (webdataset's own grouping)."""
    members = (dict(m, __url__=uri) for m in tariterators.tar_file_iterator(io.BytesIO(data)))
    try:
        for sample in tariterators.group_by_keys(members):
            yield sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")}
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ShardSetError(f"{uri}: not a readable tar ({exc})") from None


def inspect(root: str, samples: int = 3) -> dict:
    """Counts, bytes, modality mix and a few sample keys of every shard set under ``root``."""
    report = {"root": root, "sets": []}
    for folder in find_sets(root):
        index = read_index(folder)
        first = shard_uris(folder, index)[:1]
        preview = []
        for uri in first:
            for key, fields in iter_tar(storage.read_bytes(uri), uri):
                meta = json.loads(fields["json"])
                preview.append({"key": key, "fields": sorted(fields), "source": meta.get("source")})
                if len(preview) >= samples:
                    break
        report["sets"].append(
            {
                "folder": folder,
                "set": index["set"],
                "version": index["version"],
                "modality": index.get("modality"),
                "shards": len(index["shards"]),
                "samples": index["samples"],
                "bytes": index["bytes"],
                "preview": preview,
            }
        )
    if not report["sets"]:
        raise ShardSetError(f"{root}: no shard set (no index.json) found")
    return report


def verify(root: str) -> dict:
    """Index against tars: every listed tar exists, checksums and counts match, every sample obeys the contract."""
    problems, checked = [], Counter()
    for folder in find_sets(root):
        index = read_index(folder)
        for entry, uri in zip(index["shards"], shard_uris(folder, index), strict=True):
            try:
                data = storage.read_bytes(uri)
            except FileNotFoundError:
                problems.append(f"{uri}: listed in the index but missing")
                continue
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                problems.append(f"{uri}: sha256 differs from the index")
            if len(data) != entry["bytes"]:
                problems.append(f"{uri}: {len(data)} bytes, the index says {entry['bytes']}")
            n = 0
            try:
                for key, fields in iter_tar(data, uri):
                    n += 1
                    try:
                        fmt.check_sample(fields)
                    except (ValueError, KeyError) as exc:
                        problems.append(f"{uri}: sample {key}: {exc}")
            except ShardSetError as exc:
                problems.append(str(exc))
            if n != entry["samples"]:
                problems.append(f"{uri}: {n} samples, the index says {entry['samples']}")
            checked["shards"] += 1
            checked["samples"] += n
    if not checked and not problems:
        raise ShardSetError(f"{root}: no shard set (no index.json) found")
    return {"root": root, "ok": not problems, "problems": problems, **checked}
