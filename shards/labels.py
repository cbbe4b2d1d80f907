"""Sidecar concept labels: relabel a shard set for a new concept bank without rewriting its pixels.

Layout, next to the set's ``index.json``::

    {set folder}/labels/{bank_version}/{shard stem}.parquet   columns key (str), cls (list<int32>)
    {set folder}/labels/{bank_version}/labels.json            written last: bank version, parts, counts

One part per shard, so a reader loads only the labels of the shard it is reading. Like the
index, ``labels.json`` is published after every part: a label set without it does not exist.
"""

from __future__ import annotations

import functools
import io
import json

import numpy as np
import pandas as pd

from shards import format as fmt
from shards import storage
from shards.index import ShardSetError

LABELS_NAME = "labels.json"


def labels_folder(set_folder: str, bank_version: str) -> str:
    return storage.join(set_folder, "labels", bank_version)


def write_labels(set_folder: str, bank_version: str, parts: dict[str, dict[str, np.ndarray]]) -> dict:
    """Write ``{shard name: {key: top-k ids}}`` as a label set, parts first and ``labels.json`` last."""
    folder = labels_folder(set_folder, bank_version)
    names = []
    for shard, labels in sorted(parts.items()):
        keys = sorted(labels)
        table = pd.DataFrame({"key": keys, "cls": [np.asarray(labels[k], np.int32).tolist() for k in keys]})
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        name = shard.removesuffix(".tar") + ".parquet"
        storage.write_bytes(storage.join(folder, name), buf.getvalue())
        names.append({"name": name, "shard": shard, "samples": len(keys)})
    meta = {
        "format_version": fmt.FORMAT_VERSION,
        "bank_version": bank_version,
        "parts": names,
        "samples": sum(p["samples"] for p in names),
    }
    storage.write_bytes(storage.join(folder, LABELS_NAME), fmt.encode_json(meta) + b"\n")
    return meta


def read_labels_meta(set_folder: str, bank_version: str) -> dict:
    uri = storage.join(labels_folder(set_folder, bank_version), LABELS_NAME)
    if not storage.exists(uri):
        raise ShardSetError(f"{uri}: no label set for bank {bank_version!r} (missing or never published)")
    return json.loads(storage.read_bytes(uri))


@functools.lru_cache(maxsize=16)
def shard_labels(set_folder: str, bank_version: str, shard: str) -> dict[str, np.ndarray]:
    """``{key: int32 ids}`` for one shard; empty when the label set has no part for it."""
    uri = storage.join(labels_folder(set_folder, bank_version), shard.removesuffix(".tar") + ".parquet")
    if not storage.exists(uri):
        return {}
    table = pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))
    return {k: np.asarray(v, np.int32) for k, v in zip(table["key"], table["cls"], strict=True)}
