"""Embeddings as sharded arrays keyed by sample key: ``part-*.npy`` + ``part-*.parquet`` + ``embeddings.json``.

Parts are named by a digest of their keys, so rewriting the same rows gives the same files and a
stale part from an earlier attempt is simply not listed. ``embeddings.json`` is written last and lists
the parts, their sizes and the embedding model; readers trust only the index. A fit loads a seeded
sample of rows part by part, so the whole set never has to fit in one process.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pandas as pd

from shards import format as fmt
from shards import storage

INDEX = "embeddings.json"  # not index.json: shards.index.find_sets looks for that name


def write_part(folder: str, keys: list[str], modalities: list[str], emb: np.ndarray) -> dict:
    order = np.argsort(np.asarray(keys, dtype=object), kind="stable")
    keys = [keys[i] for i in order]
    name = "part-" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    storage.write_bytes(storage.join(folder, name + ".npy"), fmt.encode_npy(np.ascontiguousarray(emb[order])))
    buf = io.BytesIO()
    pd.DataFrame({"key": keys, "modality": [modalities[i] for i in order]}).to_parquet(buf, index=False)
    storage.write_bytes(storage.join(folder, name + ".parquet"), buf.getvalue())
    return {"name": name, "rows": len(keys), "dim": int(emb.shape[1]), "dtype": str(emb.dtype)}


def write_index(folder: str, parts: list[dict], embedding: dict) -> dict:
    dims = {p["dim"] for p in parts}
    if len(dims) != 1:
        raise ValueError(
            f"embeddings of different widths {sorted(dims)} cannot share one bank; "
            "fit one bank per modality (the concepts step's `modalities`)"
        )
    parts = sorted(parts, key=lambda p: p["name"])
    index = {"rows": sum(p["rows"] for p in parts), "dim": dims.pop(), "embedding": embedding, "parts": parts}
    storage.write_bytes(storage.join(folder, INDEX), fmt.encode_json(index))
    return index


def read_index(folder: str) -> dict:
    data = storage.try_read(storage.join(folder, INDEX))
    if data is None:
        raise FileNotFoundError(f"{folder}: no {INDEX}; not an embeddings folder written by the concepts step")
    return json.loads(data)


def read_part(folder: str, part: dict) -> tuple[list[str], np.ndarray]:
    keys = pd.read_parquet(io.BytesIO(storage.read_bytes(storage.join(folder, part["name"] + ".parquet"))))
    emb = fmt.decode_npy(storage.read_bytes(storage.join(folder, part["name"] + ".npy")))
    return keys["key"].tolist(), emb


def load_rows(folder: str, index: dict, rows: np.ndarray | None = None) -> tuple[list[str], np.ndarray]:
    """Keys and embeddings of the global row numbers ``rows`` (sorted; None = all), part by part."""
    keys, arrays, start = [], [], 0
    for part in index["parts"]:
        end = start + part["rows"]
        if rows is None:
            take = slice(None)
        else:
            lo, hi = np.searchsorted(rows, [start, end])
            take = rows[lo:hi] - start
            if not len(take):
                start = end
                continue
        k, e = read_part(folder, part)
        keys += np.asarray(k, dtype=object)[take].tolist()
        arrays.append(e[take])
        start = end
    emb = np.concatenate(arrays) if arrays else np.zeros((0, index["dim"]), np.float32)
    return keys, emb
