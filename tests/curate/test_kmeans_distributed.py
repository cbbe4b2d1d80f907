"""k-means over a process group: two gloo ranks on the CPU, each holding a slice of the points.

One spawn of two ranks runs every case; the reference is the single-process run on all the points,
in this process. Sums are reduced in another order on two ranks; on the CPU they are fp64, so the
centroids come out the same (with fp32 sums, one near-tie point flipping cluster after a rounding
difference moved a centroid by 0.04 on an AMD EPYC VM). Objectives agree to float rounding
(rtol 1e-6) and centroids to 5e-5.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ports import free_port

from curate.concepts.config import KMeansConfig
from curate.concepts.kmeans import fit, kmeans, nearest

K, D = 8, 16
SPLIT = 1100  # rank 0 holds rows [0, 1100), rank 1 the other 900: unequal slices


def _blobs(n_per=250, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((K, D)).astype(np.float32) * 10
    truth = np.repeat(np.arange(K), n_per)
    x = centres[truth] + rng.standard_normal((K * n_per, D)).astype(np.float32) * 0.5
    perm = rng.permutation(len(x))
    return x[perm], truth[perm], centres


def _empty_init(x):
    # a duplicate and a far-away centroid: two clusters come out empty and take over half of a populous one
    return np.concatenate([x[: K - 2], x[:1], np.full((1, D), 1e4, np.float32)])


CASES = {
    "random": {"init": "random", "seed": 5, "iters": 6},
    "kmeans++": {"init": "kmeans++", "seed": 3, "iters": 10},
    "empty": {"iters": 6},
}


def _run(x, case, group=None):
    kw = dict(CASES[case])
    if case == "empty":
        kw["init_centroids"] = _empty_init(x)
    return kmeans(x, K, device="cpu", chunk_n=256, chunk_k=3, group=group, **kw)


def _worker(rank, world, port, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    x, _, _ = _blobs()
    mine = x[:SPLIT] if rank == 0 else x[SPLIT:]
    group = dist.group.WORLD
    res = {}
    for case in CASES:
        kw = dict(CASES[case])
        if case == "empty":  # an explicit init counts as the group's first rank gives it: rank 1's is ignored
            kw["init_centroids"] = _empty_init(x) if rank == 0 else np.zeros((K, D), np.float32)
        r = kmeans(mine, K, device="cpu", chunk_n=256, chunk_k=3, group=group, **kw)
        res[case] = (r.centroids, r.objective, r.counts)
    # a rank may hold no points at all
    r = kmeans(x if rank == 0 else x[:0], K, device="cpu", group=group, **CASES["kmeans++"])
    res["one-sided"] = (r.centroids, r.objective, r.counts)
    # backend "auto" picks torch when there is a group
    r = fit(mine, KMeansConfig(k=K, iters=10, seed=3, init="kmeans++", device="cpu", top_k=1), group=group)
    res["fit"] = (r.centroids, r.objective, r.counts, r.backend)
    out[rank] = res
    dist.destroy_process_group()


def test_two_ranks_reach_the_single_process_objective_and_centroids():
    world = 2
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(world, free_port(), out), nprocs=world, join=True)
    x, truth, centres = _blobs()
    for case in CASES:
        ref = _run(x, case)
        for rank in range(world):
            cents, objective, counts = out[rank][case]
            np.testing.assert_allclose(objective, ref.objective, rtol=1e-6, err_msg=case)
            np.testing.assert_allclose(cents, ref.centroids, rtol=1e-6, atol=5e-5, err_msg=case)
            np.testing.assert_array_equal(counts, ref.counts, err_msg=case)  # global counts on every rank
        # the ranks hold bit-identical centroids: they take identical updates and empty-cluster splits
        np.testing.assert_array_equal(out[0][case][0], out[1][case][0])
    assert (out[0]["empty"][2] > 0).all() and out[0]["empty"][2].sum() == len(x)
    ref = kmeans(x, K, device="cpu", **CASES["kmeans++"])
    for rank in range(world):
        cents, objective, counts = out[rank]["one-sided"]
        np.testing.assert_allclose(objective, ref.objective, rtol=1e-6)
        np.testing.assert_allclose(cents, ref.centroids, rtol=1e-6, atol=5e-5)
        np.testing.assert_array_equal(counts, ref.counts)

    # ground truth: k-means++ on two ranks finds every blob (centre within noise / sqrt(n)) and its points
    cents = out[1]["kmeans++"][0]
    dist_to_truth = np.linalg.norm(centres[:, None] - cents[None], axis=2)
    assert np.sort(dist_to_truth.min(1)).max() < 0.2, dist_to_truth.min(1)
    assert len(set(dist_to_truth.argmin(1))) == K  # one centroid per blob
    labels = nearest(x, cents, 1, device="cpu")[:, 0]
    assert all(len(set(labels[truth == t])) == 1 for t in range(K))

    # fit() with a group runs the torch backend and equals the single-process fit
    cents, objective, _, backend = out[0]["fit"]
    ref = fit(x, KMeansConfig(k=K, iters=10, seed=3, init="kmeans++", device="cpu", backend="torch", top_k=1))
    assert backend == "torch"
    np.testing.assert_allclose(objective, ref.objective, rtol=1e-6)
    np.testing.assert_allclose(cents, ref.centroids, rtol=1e-6, atol=5e-5)
