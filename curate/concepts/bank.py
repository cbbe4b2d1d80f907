"""A concept bank as a versioned artifact: ``{root}/{version}/centroids.npy`` + ``bank.json``.

The version is ``{name}-{sha256(centroids)[:12]}``: content-addressed, so refitting the same data
with the same settings reproduces the version, and any change gives a new one. ``bank.json`` is
written after the centroids and is the bank's completion marker; labels name the version they came
from, so a shard's ``cls.npy`` or a sidecar label set can always be traced to its bank.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from manifests.loader import git_revision
from shards import format as fmt
from shards import storage

BANK_JSON = "bank.json"
CENTROIDS = "centroids.npy"


class BankError(ValueError):
    """A bank that cannot be used as asked (missing, torn, or of another width than the embeddings)."""


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def save_bank(root: str, name: str, centroids: np.ndarray, info: dict) -> tuple[str, dict]:
    """Write the bank under ``root``; return its folder and bank.json contents."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    version = f"{name}-{hashlib.sha256(centroids.tobytes()).hexdigest()[:12]}"
    folder = storage.join(root, version)
    meta = {
        "version": version,
        "name": name,
        "k": int(centroids.shape[0]),
        "dim": int(centroids.shape[1]),
        "git_revision": git_revision(),
        **info,
    }
    storage.write_bytes(storage.join(folder, CENTROIDS), fmt.encode_npy(centroids))
    storage.write_bytes(storage.join(folder, BANK_JSON), json.dumps(meta, indent=2, sort_keys=True).encode())
    return folder, meta


def load_bank(folder: str) -> tuple[dict, np.ndarray]:
    data = storage.try_read(storage.join(folder, BANK_JSON))
    if data is None:
        raise BankError(f"{folder}: no {BANK_JSON}; the bank is missing or its write did not finish")
    meta = json.loads(data)
    centroids = fmt.decode_npy(storage.read_bytes(storage.join(folder, CENTROIDS)))
    if centroids.shape != (meta["k"], meta["dim"]):
        raise BankError(f"{folder}: centroids are {centroids.shape}, bank.json says ({meta['k']}, {meta['dim']})")
    return meta, centroids


def check_dim(meta: dict, dim: int, what: str) -> None:
    if dim != meta["dim"]:
        model = (meta.get("embedding") or {}).get("model", "?")
        raise BankError(
            f"bank {meta['version']} has {meta['dim']}-d centroids (model {model}) but {what} are {dim}-d: "
            "the embeddings come from another model or video reduction; refit the bank on these embeddings"
        )


def unusable_rows(emb: np.ndarray) -> np.ndarray:
    """Rows that cannot be clustered or labelled: any NaN or inf, or all zero (no direction)."""
    return ~np.isfinite(emb).all(axis=1) | ~emb.any(axis=1)


def fit_bank(embeddings: str, cfg, bank_root: str, config_sha256: str, progress=None) -> tuple[str, dict]:
    """Fit ``cfg`` (a KMeansConfig) on a seeded sample of a stored embeddings folder; save the bank."""
    from curate.concepts import kmeans, store

    index = store.read_index(embeddings)
    n = index["rows"]
    if n < cfg.k:
        raise BankError(f"k={cfg.k} centroids need at least k embeddings; {embeddings} holds {n}")
    rows = kmeans.sample_rows(n, cfg.k, cfg.max_points_per_centroid, cfg.seed)
    keys, x = store.load_rows(embeddings, index, rows)
    bad = np.flatnonzero(unusable_rows(x))
    if bad.size:
        raise BankError(
            f"{embeddings}: {bad.size} of {len(x)} sampled embeddings are NaN, inf or all zero "
            f"(e.g. {keys[bad[0]]}); re-embed or drop them before fitting a bank"
        )
    result = kmeans.fit(x, cfg, progress=progress)
    info = {
        "n": n,
        "n_fit": int(len(x)),
        "objective": result.objective[-1] if result.objective else None,
        "objective_per_point": result.objective[-1] / len(x) if result.objective else None,
        "objective_per_iteration": result.objective,
        "empty_clusters": int((result.counts == 0).sum()),
        "iters": cfg.iters,
        "seed": cfg.seed,
        "init": cfg.init,
        "spherical": cfg.spherical,
        "backend": result.backend,
        "precision": result.precision,
        "fit_seconds": round(sum(result.seconds), 3),
        "embedding": index["embedding"],
        "embeddings": embeddings,
        "config_sha256": config_sha256,
    }
    return save_bank(bank_root, cfg.bank_name, result.centroids, info)


def assign_labels(meta: dict, assigner, emb: np.ndarray, top_k: int) -> np.ndarray:
    """(N, top_k) int32 ids of each embedding's nearest centroids, nearest first (a kmeans.Assigner)."""
    check_dim(meta, emb.shape[1], "the embeddings")
    if top_k > meta["k"]:
        raise BankError(f"top_k={top_k} exceeds the {meta['k']} centroids of bank {meta['version']}")
    return assigner(emb, top_k).astype(np.int32)
