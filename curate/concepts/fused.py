"""Fused nearest-centroid assignment in Triton: GEMM tiles reduced to (max, argmax) in registers.

The unfused path writes every (point, centroid) score to memory and reads it back for the max,
which at D = 512 costs about as much as the GEMM itself (performance-anchors.md 2.2). Here each
program holds a block of points, walks a slice of the centroids in tiles, adds the fp32 bias
-||c||^2/2 and keeps a running max and argmax, so only (splits x N) partial winners are written.
The argmax (a second, costlier reduction) runs only for tiles where some row of the block
improves, which after the first tiles of a long walk over the centroids is the exception.
Scores are fp32 (bf16 inputs, fp32 accumulation), so near-ties resolve as well as in tf32.
Triton is imported lazily: the module loads on machines without it.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def assign(
        X,
        C,
        B,
        OUT_V,
        OUT_I,
        N,
        K,
        k_per_split,
        sxn,
        scn,
        D: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
        EVEN_N: tl.constexpr,
        EVEN_D: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        pid_s = tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        k_start = pid_s * k_per_split
        k_end = tl.minimum(k_start + k_per_split, K)
        best_v = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        best_i = tl.zeros((BLOCK_N,), tl.int32)
        for k0 in range(k_start, k_end, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
            for d0 in range(0, D, BLOCK_D):
                rd = d0 + tl.arange(0, BLOCK_D)
                # masks only where a block can run past the data (EVEN_*: it cannot; fewer predicates)
                if EVEN_N and EVEN_D:
                    x = tl.load(X + rn[:, None] * sxn + rd[None, :])
                else:
                    x = tl.load(
                        X + rn[:, None] * sxn + rd[None, :], mask=(rn[:, None] < N) & (rd[None, :] < D), other=0.0
                    )
                if EVEN_D:
                    c = tl.load(C + rk[None, :] * scn + rd[:, None], mask=rk[None, :] < k_end, other=0.0)
                else:
                    c = tl.load(
                        C + rk[None, :] * scn + rd[:, None], mask=(rk[None, :] < k_end) & (rd[:, None] < D), other=0.0
                    )
                acc = tl.dot(x, c, acc)
            bias = tl.load(B + rk, mask=rk < k_end, other=float("-inf"))
            acc = acc + bias[None, :]
            v = tl.max(acc, axis=1)
            better = v > best_v
            if tl.max(better.to(tl.int32), axis=0) > 0:  # past the first tiles rare: the argmax only then
                _, i = tl.max(acc, axis=1, return_indices=True, return_indices_tie_break_left=True)
                best_v = tl.where(better, v, best_v)
                best_i = tl.where(better, i + k0, best_i)
        tl.store(OUT_V + pid_s * N + rn, best_v, mask=rn < N)
        tl.store(OUT_I + pid_s * N + rn, best_i, mask=rn < N)

    return assign


# tile shape and pipelining of the kernel; tests/benchmarks/bench_kmeans.py sweeps these on the GPU
CONFIG = {"block_n": 128, "block_k": 256, "block_d": 64, "num_warps": 8, "num_stages": 4}  # best of the H100 sweep


def available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        _kernel()
    except ImportError:
        return False
    return True


def nearest1(x: torch.Tensor, c: torch.Tensor, bias: torch.Tensor, splits: int | None = None, **config) -> torch.Tensor:
    """Index (n,) int64 of the highest ``x @ c.T + bias`` per row; x (n, D), c (K, D) bf16/fp16, bias fp32."""
    cfg = {**CONFIG, **config}
    block_n, block_k, block_d = cfg["block_n"], cfg["block_k"], cfg["block_d"]
    n, d = x.shape
    k = c.shape[0]
    x, c, bias = x.contiguous(), c.contiguous(), bias.contiguous().float()
    blocks_n = -(-n // block_n)
    if splits is None:  # enough programs to fill the GPU twice over
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 1
        splits = max(1, min(-(-k // block_k), -(-2 * sms // blocks_n)))
    per_split = -(-k // splits)
    k_per_split = -(-per_split // block_k) * block_k
    splits = -(-k // k_per_split)
    out_v = torch.empty(splits, n, dtype=torch.float32, device=x.device)
    out_i = torch.empty(splits, n, dtype=torch.int32, device=x.device)
    stages = cfg["num_stages"]
    while True:
        try:
            _kernel()[(blocks_n, splits)](
                x,
                c,
                bias,
                out_v,
                out_i,
                n,
                k,
                k_per_split,
                x.stride(0),
                c.stride(0),
                D=d,
                BLOCK_N=block_n,
                BLOCK_K=block_k,
                BLOCK_D=block_d,
                EVEN_N=n % block_n == 0,
                EVEN_D=d % block_d == 0,
                num_warps=cfg["num_warps"],
                num_stages=stages,
            )
            break
        except Exception as exc:  # a GPU with less shared memory than Hopper's: fewer pipeline stages
            if type(exc).__name__ != "OutOfResources" or stages <= 1:
                raise
            stages -= 1
    best = out_v.argmax(0)  # first split wins ties: lower centroid ids, like a full argmax
    return out_i.gather(0, best[None]).squeeze(0).long()
