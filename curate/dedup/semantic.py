"""Semantic dedup in the SemDeDup manner: faiss k-means on unit embeddings, then within each cluster
every pair with cosine >= 1 - eps is a duplicate edge.

The embedding is any float32 vector column (bytes). Centroids are fitted on the driver from a
deterministic, key-hashed sample of at most ``kmeans_sample`` vectors (bounded, never all rows);
assignment and the per-cluster pairwise step (cosine in row blocks) run on Ray through the same
hash shuffle as the band keys, the cluster id being the key (in one process, without Ray: the same
steps over one table, :func:`local_semantic_edges`).
Duplicates split across two clusters are missed, as in SemDeDup; more clusters = fewer comparisons.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from curate.cluster import worker_env
from curate.dedup import lsh
from curate.dedup.grouping import (
    EDGE,
    DedupConfig,
    _rows,
    partition_edges,
    partitions_for,
    shuffle_by_bucket,
    spanning_edges,
    upper_pairs,
)
from curate.dedup.keep import rank

VECTORS = pa.schema(
    [
        ("key", pa.string()),
        ("modality", pa.string()),
        ("vec", pa.binary()),
        ("r1", pa.float64()),
        ("r2", pa.float64()),
        ("uri", pa.string()),
    ]
)


def tiny_image_embedding(grey: Image.Image) -> np.ndarray:
    """A 16x16 grayscale thumbnail, zero-mean and unit-norm (Torralba's "tiny images"): 256 floats.

    A cheap stand-in until CLIP embeddings arrive; it finds near-identical pictures, not concepts.
    ``grey``: the picture in grey, at any size of at least 64x64 (``curate.pictures.reduced_grey``).
    """
    v = np.asarray(grey.resize((16, 16), Image.Resampling.BOX), dtype=np.float32).ravel()
    v = v - v.mean()
    return v / max(float(np.linalg.norm(v)), 1e-6)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _sampled(key: str, fraction: float) -> bool:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") < fraction * 2**64


def vector_records(batch, cfg: DedupConfig) -> pa.Table:
    out = []
    for row in _rows(batch):
        vec = row.get(cfg.semantic_column)
        if vec is None:
            continue
        r1, r2 = rank(row["meta"], cfg.keep)
        out.append(
            {"key": row["key"], "modality": row["modality"], "vec": bytes(vec), "r1": r1, "r2": r2, "uri": row["uri"]}
        )
    return pa.Table.from_pylist(out, schema=VECTORS)


def fit_centroids(vectors: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """Spherical faiss k-means; fewer clusters when there are few vectors."""
    import faiss

    k = max(1, min(clusters, len(vectors) // 39))  # faiss wants >= 39 points per centroid
    km = faiss.Kmeans(vectors.shape[1], k, niter=20, seed=seed + 1, spherical=True, verbose=False)
    km.train(np.ascontiguousarray(_unit(vectors), dtype=np.float32))
    return km.centroids


def assign(batch: pd.DataFrame, centroids: np.ndarray) -> pd.DataFrame:
    """Nearest centroid (inner product of unit vectors); the bucket is salted with the modality."""
    import faiss

    out = batch.copy()
    if len(out) == 0:
        return out.assign(bucket=pd.Series(dtype="int64"))
    vecs = _unit(np.stack([np.frombuffer(v, dtype=np.float32) for v in out["vec"]]))
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    _, nearest = index.search(np.ascontiguousarray(vecs, dtype=np.float32), 1)
    salts = [lsh.salt("semantic", m, int(c)) for m, c in zip(out["modality"], nearest[:, 0], strict=True)]
    out["bucket"] = np.array(salts, dtype=np.uint64).view(np.int64)
    return out


def cluster_edges(records: pd.DataFrame, cfg: DedupConfig, block: int = 1024) -> pa.Table:
    """``map_groups`` body: pairwise cosine inside one cluster, a spanning forest of the pairs above 1 - eps."""
    part = records.drop_duplicates("key").sort_values("key").reset_index(drop=True)
    if len(part) < 2:
        return EDGE.empty_table()
    vecs = _unit(np.stack([np.frombuffer(v, dtype=np.float32) for v in part["vec"]]))
    verified = []
    for start in range(0, len(vecs), block):  # (block x n) cosine slabs: a big cluster never needs n x n
        sim = vecs[start : start + block] @ vecs.T
        verified += upper_pairs(sim, sim >= 1.0 - cfg.semantic_eps, start)
    return pa.Table.from_pylist(spanning_edges(part, verified, "semantic"), schema=EDGE)


def ray_semantic_edges(ds, cfg: DedupConfig):
    """Sample -> k-means on the driver -> assign and pairwise on Ray. Returns the edge dataset."""
    vectors = ds.map_batches(vector_records, fn_kwargs={"cfg": cfg}, batch_format="pandas", **worker_env())
    vectors = vectors.materialize()
    total = vectors.count()
    if total < 2:
        return None
    fraction = min(1.0, cfg.kmeans_sample / total)
    sample = vectors.filter(lambda r: _sampled(r["key"], fraction)).to_pandas()
    if len(sample) < 2:
        sample = vectors.limit(cfg.kmeans_sample).to_pandas()
    centroids = sample_centroids(sample, cfg)
    assigned = vectors.map_batches(assign, fn_kwargs={"centroids": centroids}, batch_format="pandas", **worker_env())
    return shuffle_by_bucket(assigned, partitions_for(cfg, total), verify=cluster_edges, cfg=cfg)


def local_semantic_edges(table: pa.Table, cfg: DedupConfig) -> pa.Table | None:
    """:func:`ray_semantic_edges` in this process, over one table: the same sample, fit and pairs."""
    vectors = vector_records(table.to_pandas(), cfg).to_pandas()
    if len(vectors) < 2:
        return None
    fraction = min(1.0, cfg.kmeans_sample / len(vectors))
    sample = vectors[[_sampled(k, fraction) for k in vectors["key"]]]
    if len(sample) < 2:
        sample = vectors.head(cfg.kmeans_sample)
    return partition_edges(assign(vectors, sample_centroids(sample, cfg)), cfg, verify=cluster_edges)


def sample_centroids(sample: pd.DataFrame, cfg: DedupConfig) -> np.ndarray:
    """Centroids fitted on the sampled vector records, in key order (the same whatever order they came in)."""
    sample = sample.sort_values("key")
    return fit_centroids(
        np.stack([np.frombuffer(v, dtype=np.float32) for v in sample["vec"]]), cfg.semantic_clusters, cfg.seed
    )
