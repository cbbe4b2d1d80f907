"""k-means (faiss and torch paths), exact top-k assignment, empty clusters, banks and their width check."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from concepts_kit import rows
from sklearn.metrics import adjusted_rand_score

from curate.concepts.bank import load_bank, save_bank
from curate.concepts.config import KMeansConfig
from curate.concepts.kmeans import faiss_kmeans, fit, kmeans, nearest
from curate.stage import run_in_process
from curate.stages.concepts import AssignConcepts
from shards import format as fmt


def _blobs(n_per=60, k=20, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)).astype(np.float32) * 10
    truth = np.repeat(np.arange(k), n_per)
    x = centers[truth] + rng.standard_normal((k * n_per, d)).astype(np.float32) * 0.5
    perm = rng.permutation(len(x))
    return x[perm], truth[perm]


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_kmeans_recovers_well_separated_blobs(backend):
    x, truth = _blobs()
    cfg = KMeansConfig(k=20, iters=25, seed=3, init="kmeans++", backend=backend, device="cpu", top_k=1)
    result = fit(x, cfg)
    assert result.backend == backend and result.centroids.shape == (20, 32)
    labels = nearest(x, result.centroids, 1, device="cpu")[:, 0]
    assert adjusted_rand_score(truth, labels) > 0.999
    assert result.objective[-1] <= result.objective[0]


def test_torch_objective_matches_faiss_from_the_same_init():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4000, 24)).astype(np.float32)
    init = x[rng.choice(len(x), 40, replace=False)]
    ours = kmeans(x, 40, iters=8, init_centroids=init, device="cpu", chunk_n=512, chunk_k=16)
    ref = faiss_kmeans(x, 40, iters=8, init_centroids=init)
    np.testing.assert_allclose(ours.objective, ref.objective, rtol=1e-4)
    np.testing.assert_allclose(ours.centroids, ref.centroids, atol=1e-3)


def test_spherical_kmeans_keeps_unit_centroids_and_matches_faiss():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    init = x[:12]
    ours = kmeans(x, 12, iters=5, spherical=True, init_centroids=init, device="cpu")
    ref = faiss_kmeans(x, 12, iters=5, spherical=True, init_centroids=init)
    np.testing.assert_allclose(np.linalg.norm(ours.centroids, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(ours.objective, ref.objective, rtol=1e-4)


def test_empty_clusters_take_over_half_of_a_populous_one():
    x, _ = _blobs(n_per=30, k=6, d=8)
    init = np.concatenate([x[:4], x[:1], np.full((1, 8), 1e4, np.float32)])  # a duplicate and a far-away centroid
    result = kmeans(x, 6, iters=6, init_centroids=init, device="cpu")
    assert result.counts.sum() == len(x) and (result.counts > 0).all()


def test_topk_assignment_equals_brute_force_across_chunk_boundaries():
    rng = np.random.default_rng(4)
    x, c = rng.standard_normal((700, 20)).astype(np.float32), rng.standard_normal((97, 20)).astype(np.float32)
    d2 = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    expected = np.argsort(d2, axis=1, kind="stable")[:, :10]
    for chunk_n, chunk_k in [(None, None), (128, 13), (700, 7)]:
        got = nearest(x, c, 10, device="cpu", chunk_n=chunk_n, chunk_k=chunk_k)
        np.testing.assert_array_equal(got, expected)


def test_bank_round_trip_assign_stage_and_width_check(tmp_path):
    rng = np.random.default_rng(5)
    centroids = rng.standard_normal((16, 12)).astype(np.float32)
    folder, meta = save_bank(str(tmp_path), "unit", centroids, {"embedding": {"model": "m"}, "n": 16})
    again, _ = save_bank(str(tmp_path), "unit", centroids, {"embedding": {"model": "m"}, "n": 16})
    assert folder == again and meta["version"].startswith("unit-")  # content-addressed version
    loaded_meta, loaded = load_bank(folder)
    np.testing.assert_array_equal(loaded, centroids)
    emb = rng.standard_normal((9, 12)).astype(np.float16)
    batch = rows([{"key": f"k{i}", "modality": "image", "emb": fmt.encode_npy(e)} for i, e in enumerate(emb)])
    out = run_in_process([AssignConcepts(bank=folder, top_k=4, device="cpu")], batch)
    got = np.stack([fmt.decode_npy(b) for b in out["cls_npy"]])
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, nearest(emb.astype(np.float32), centroids, 4, device="cpu"))
    assert json.loads(out["meta"][0])["concepts"]["bank"] == meta["version"]
    wide = rows([{"key": "w", "modality": "image", "emb": fmt.encode_npy(np.ones(24, np.float16))}])
    bad = run_in_process([AssignConcepts(bank=folder, top_k=4, device="cpu")], wide)
    assert bad["status"][0] == "failed" and bad["reason"][0] == "assign_concepts/BankError"
    assert "12-d centroids" in bad["detail"][0] and "24-d" in bad["detail"][0]


def test_labels_from_a_random_weight_bank_are_flagged(tmp_path):
    centroids = np.eye(4, dtype=np.float32)
    folder, _ = save_bank(str(tmp_path), "rnd", centroids, {"embedding": {"model": "m", "random_weights": True}})
    batch = rows([{"key": "a", "modality": "image", "emb": fmt.encode_npy(np.ones(4, np.float16))}])
    out = run_in_process([AssignConcepts(bank=folder, top_k=2, device="cpu")], batch)
    assert json.loads(out["meta"][0])["concepts"]["random_weights"] is True


FUSED_CHECK = """
import numpy as np, torch
from curate.concepts import fused
rng = np.random.default_rng(6)
for n, d in ((200, 40), (256, 64)):  # ragged blocks (masked loads), then whole blocks (unmasked)
    x, c = rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((1500, d)).astype(np.float32)
    c[:100] = x[:100] + 0.01 * rng.standard_normal((100, d))  # found in the first tiles: later tiles improve no row
    xt, ct = torch.from_numpy(x), torch.from_numpy(c)
    got = fused.nearest1(xt, ct, -0.5 * (ct * ct).sum(1), splits=2, block_n=64, block_k=32, block_d=32, num_warps=4)
    expected = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(got.numpy(), expected)
print("fused ok")
"""


def test_fused_triton_assignment_equals_brute_force():
    """The Triton kernel itself, run by Triton's CPU interpreter (which must be on before triton is imported)."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", FUSED_CHECK], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "fused ok" in done.stdout, done.stderr[-2000:]


def test_bad_points_and_embeddings_are_refused_before_any_compute(tmp_path):
    from curate.concepts import store
    from curate.concepts.bank import BankError, fit_bank

    x, _ = _blobs(n_per=10, k=4, d=8)
    with pytest.raises(ValueError, match="need at least k points"):
        kmeans(x[:5], 6, iters=2, device="cpu")
    nan = x.copy()
    nan[17, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        kmeans(nan, 4, iters=2, device="cpu")
    # a stored embeddings folder with a NaN row and an all-zero row: the bank is not fitted
    emb = x.astype(np.float16)
    emb[3], emb[7] = np.nan, 0
    keys = [f"k{i:02d}" for i in range(len(emb))]
    folder = str(tmp_path / "emb")
    store.write_index(folder, [store.write_part(folder, keys, ["image"] * len(keys), emb)], {"model": "m"})
    cfg = KMeansConfig(k=4, iters=2, backend="torch", device="cpu", bank_name="b", top_k=2)
    with pytest.raises(BankError, match=r"2 of 40 sampled embeddings are NaN, inf or all zero \(e.g. k03\)"):
        fit_bank(folder, cfg, str(tmp_path / "banks"), "sha")
    assert not (tmp_path / "banks").exists()


def test_assign_fails_only_the_rows_whose_embedding_is_unusable(tmp_path):
    centroids = np.eye(6, dtype=np.float32)
    folder, _ = save_bank(str(tmp_path), "eye", centroids, {"embedding": {"model": "m"}, "n": 6})
    emb = np.eye(6, dtype=np.float16)[[0, 1, 2, 3]]
    emb[1, 0], emb[2] = np.inf, 0
    batch = rows([{"key": f"k{i}", "modality": "image", "emb": fmt.encode_npy(e)} for i, e in enumerate(emb)])
    out = run_in_process([AssignConcepts(bank=folder, top_k=2, device="cpu")], batch)
    assert list(out["status"]) == ["live", "failed", "failed", "live"]
    assert "k1: its embedding is NaN, inf or all zero" in out["detail"][1] and "k2:" in out["detail"][2]
    assert [fmt.decode_npy(out["cls_npy"][i])[0] for i in (0, 3)] == [0, 3]  # the good rows keep their labels
