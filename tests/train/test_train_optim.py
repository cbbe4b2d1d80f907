"""The heads' sampled-row AdamW: it is torch's AdamW when every row is scored, and moves nothing else."""

import torch
from trainkit import bf16_above, bf16_below

from train.config import HeadConfig, OptimConfig
from train.loss import ConceptHeads
from train.optim import SampledRowAdamW, build_optimizer, set_lr, step_if_finite

C, D, B = 200, 16, 12


def _heads(rate: float, sampled: bool) -> ConceptHeads:
    return ConceptHeads(
        (HeadConfig(num_classes=C, sample_rate=rate, draw=3, filter=2.0),), D, seed=3, sampled_update=sampled
    )


def _batches(steps: int, accum: int):
    g = torch.Generator().manual_seed(0)
    return [
        [(torch.randn(B, D, generator=g), torch.randint(0, C, (B, 5), generator=g)) for _ in range(accum)]
        for _ in range(steps)
    ]


def _run(heads, cfg, batches, after_step=None):
    """The trainer's head update (accumulate, clip, step) with an empty encoder."""
    encoder = torch.nn.Linear(1, 1)
    opt = build_optimizer(encoder, heads, cfg)
    optimizers = [opt] + ([SampledRowAdamW(heads, cfg)] if heads.sampled_update else [])
    norms = []
    for step, micro_batches in enumerate(batches):
        set_lr(optimizers, step, len(batches), cfg)
        for micro, (emb, labels) in enumerate(micro_batches):
            loss, _ = heads(emb, ["image"] * B, labels, seed=0, step=step, micro=micro)
            (loss / len(micro_batches)).backward()
        if heads.sampled_update:
            norm = optimizers[1].clip(cfg.clip)
        else:
            norm = torch.nn.utils.clip_grad_norm_(list(heads.parameters()), cfg.clip)
        norms.append(float(norm))
        before = heads.heads["image"].weight.detach().clone()
        assert step_if_finite(optimizers, norm)
        if after_step:
            after_step(before, heads.heads["image"].weight.detach().clone())
    return opt, norms


def lr_tol(cfg: OptimConfig) -> float:
    return 1e-4 * cfg.lr


def test_at_sample_rate_one_it_is_adamw_with_clipping_decay_and_accumulation():
    cfg = OptimConfig(lr=3e-2, warmup_steps=1, clip=0.2, head_weight_decay=0.05)
    batches = _batches(steps=4, accum=2)
    dense, sampled = _heads(1.0, sampled=False), _heads(1.0, sampled=True)
    init = dense.heads["image"].weight.detach().clone()
    assert torch.equal(init, sampled.heads["image"].weight)
    opt, dense_norms = _run(dense, cfg, batches)
    _, sampled_norms = _run(sampled, cfg, batches)
    assert min(dense_norms) > cfg.clip  # the clip acted on every step
    torch.testing.assert_close(sampled_norms, dense_norms, rtol=1e-5, atol=0)
    d, s = dense.heads["image"], sampled.heads["image"]
    assert (d.weight - init).abs().max() > 1e-3  # the centres moved
    # Adam divides by sqrt(v): a coordinate with a near-zero gradient turns 1e-7 rounding (another summation
    # order, fused kernel against eager ops) into up to ~1e-6, far below the lr-sized steps (3e-2)
    torch.testing.assert_close(s.weight, d.weight, rtol=1e-5, atol=lr_tol(cfg))
    state = opt.state[d.weight]
    for name in ("exp_avg", "exp_avg_sq"):  # the gradients differ by summation rounding (~1e-7 relative)
        ref = state[name]
        torch.testing.assert_close(getattr(s, name), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    assert int(s.updates) == int(state["step"]) == 4


def test_below_rate_one_only_scored_rows_move_and_their_gradient_is_the_dense_one():
    head_cfg = HeadConfig(num_classes=C, sample_rate=0.25, draw=3, filter=2.0)
    dense = ConceptHeads((head_cfg,), D, seed=3).heads["image"]
    sampled = ConceptHeads((head_cfg,), D, seed=3, sampled_update=True).heads["image"]
    ((emb, labels),) = _batches(1, 1)[0]
    for head in (dense, sampled):
        head(emb, labels, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)).backward()
    rows, grad = sampled.take_grad()
    assert rows.numel() == 50 and torch.equal(rows, rows.sort().values)  # a quarter of the rows, sorted
    assert sampled.weight.grad is None and sampled.pending == []
    torch.testing.assert_close(grad, dense.weight.grad[rows])
    off = torch.ones(C, dtype=torch.bool)
    off[rows] = False
    assert torch.count_nonzero(dense.weight.grad[off]) == 0

    # three steps: rows outside each step's sample keep weights and moments exactly
    cfg = OptimConfig(lr=1e-2, clip=100.0)
    heads = _heads(0.25, sampled=True)
    head = heads.heads["image"]
    seen = torch.zeros(C, dtype=torch.bool)
    rows_of_step = []
    real_take = head.take_row_grad

    def take():
        grad = real_take()
        rows_of_step.append(grad.rows)
        return grad

    head.take_row_grad = take

    def check(before, after):
        moved = (before != after).any(dim=1)
        scored = torch.zeros(C, dtype=torch.bool)
        scored[rows_of_step[-1]] = True
        assert torch.equal(moved, scored)
        seen[scored] = True

    _run(heads, cfg, _batches(steps=3, accum=1), after_step=check)
    assert 50 < int(seen.sum()) < C  # several samples, not every row
    assert torch.count_nonzero(head.exp_avg[~seen]) == 0 and torch.count_nonzero(head.exp_avg_sq[~seen]) == 0
    assert int(head.updates) == 3


def test_a_skipped_step_drops_the_row_gradients():
    cfg = OptimConfig(lr=1e-2)
    heads = _heads(0.5, sampled=True)
    head = heads.heads["image"]
    rows_opt = SampledRowAdamW(heads, cfg)
    ((emb, labels),) = _batches(1, 1)[0]
    heads(emb, ["image"] * B, labels, seed=0, step=0)[0].backward()
    before = head.weight.detach().clone()
    rows_opt.clip(1.0)
    assert not step_if_finite([rows_opt], torch.tensor(float("nan")))
    assert torch.equal(head.weight, before) and int(head.updates) == 0
    rows_opt.step()  # nothing pending: nothing moves
    assert torch.equal(head.weight, before)


def _neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bf16 values just below and above each fp32 value in magnitude (equal where ``x`` is one)."""
    low = bf16_below(x)
    return low, torch.where(low == x, low, bf16_above(x))


def test_bf16_moments_round_stochastically_without_bias():
    from train.optim import round_bf16

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, generator=g).repeat(4000, 1)  # 64 values, each rounded 4000 times
    noise = torch.randint(0, 1 << 16, x.shape, generator=g)
    r = round_bf16(x, noise).float()
    low, high = _neighbours(x)
    assert torch.all((r == low) | (r == high))  # always one of the two neighbours
    share_up = ((r == high) & (high != low)).float().mean(0)
    want = ((x - low) / (high - low)).nan_to_num()[0]  # rounded up with probability of the distance below
    assert (share_up - want).abs().max() < 0.03  # 4000 draws: sd <= 0.008
    assert (r.mean(0) - x[0]).abs().max() < 0.03 * float((high - low).abs().max())  # unbiased


def test_bf16_moments_track_fp32_where_nearest_rounding_stalls():
    """Rows whose gradient grows by 40 % after a long steady phase: v's increments (1 - b2) (g^2 - v) are under
    half a bf16 step of v, so round-to-nearest leaves v where it was; stochastic rounding follows the fp32
    moments, and the weights with them."""
    from train.optim import _adamw_rows_torch
    from train.scored_rows import RowGrad

    g = torch.Generator().manual_seed(0)
    n, d = 64, 256
    p = (torch.randn(n, d, generator=g) * 1e-2).bfloat16().float()
    grad = RowGrad(torch.arange(n), 1.4 * p, torch.zeros(n))
    w0 = torch.randn(n, d, generator=g)
    runs = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("nearest", torch.float32)):
        w, m, v = w0.clone(), p.to(dtype, copy=True), p.square().bfloat16().to(dtype)  # the steady phase's moments
        for t in range(1000, 1200):
            _adamw_rows_torch(w, m, v, grad, torch.tensor(1.0), 1e-3, 0.0, 0.9, 0.999, 1e-8, torch.tensor(t))
            if name == "nearest":
                m.copy_(m.bfloat16()), v.copy_(v.bfloat16())
        runs[name] = w, m.float(), v.float()
    ratio = {k: float(runs[k][2].mean() / runs["fp32"][2].mean()) for k in ("bf16", "nearest")}
    assert abs(ratio["bf16"] - 1) < 0.005, ratio
    assert ratio["nearest"] < 0.9, ratio  # what stochastic rounding is for
    torch.testing.assert_close(runs["bf16"][1], runs["fp32"][1], rtol=2**-6, atol=0)
    step = (runs["fp32"][0] - w0).abs().mean()
    assert (runs["bf16"][0] - runs["fp32"][0]).abs().mean() < 0.01 * step


def test_bf16_moments_train_like_fp32_and_resume_to_the_same_bits():
    cfg = OptimConfig(lr=3e-2, clip=0.2)
    batches = _batches(steps=4, accum=1)

    def heads(moments):
        return ConceptHeads(
            (HeadConfig(num_classes=C, sample_rate=0.5, draw=3, filter=2.0),), D, 3, None, True, moments=moments
        )

    def steps(h, opt, part):
        for step, ((emb, labels),) in part:
            h(emb, ["image"] * B, labels, seed=0, step=step)[0].backward()
            opt.clip(cfg.clip)
            opt.step()

    fp32, bf16 = heads(torch.float32), heads(torch.bfloat16)
    for h in (fp32, bf16):
        steps(h, SampledRowAdamW(h, cfg), list(enumerate(batches)))
    a, b = fp32.heads["image"], bf16.heads["image"]
    assert b.exp_avg.dtype == b.exp_avg_sq.dtype == torch.bfloat16 and b.weight.dtype == torch.float32
    moved = (a.weight - heads(torch.float32).heads["image"].weight).abs().mean()
    assert (a.weight - b.weight).abs().mean() < 0.01 * moved
    for name in ("exp_avg", "exp_avg_sq"):  # apart by bf16 steps (2^-8) and the weights' drift they cause
        ours, ref = getattr(b, name).float(), getattr(a, name)
        assert (ours - ref).abs().mean() < 0.01 * ref.abs().mean(), name

    # two steps, a checkpoint (state dict) into fresh heads and optimizer, two more: the same bits
    first = heads(torch.bfloat16)
    steps(first, SampledRowAdamW(first, cfg), list(enumerate(batches))[:2])
    resumed = heads(torch.bfloat16)
    resumed.load_state_dict(first.state_dict())
    steps(resumed, SampledRowAdamW(resumed, cfg), list(enumerate(batches))[2:])
    for name, t in bf16.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], t), name
    # fp32 moments of an earlier run load into bf16 ones (rounded to nearest)
    resumed.load_state_dict(fp32.state_dict())
    assert torch.equal(resumed.heads["image"].exp_avg, a.exp_avg.bfloat16())


def test_the_cuda_kernels_equal_the_torch_formulas(tmp_path):
    """The Triton kernels themselves (row gather, gradient norm, AdamW), run by Triton's CPU interpreter
    (on before triton is imported), ragged shapes, a factored gradient with a norm term."""
    script = """
import torch
from trainkit import bf16_above, bf16_below
from train.optim import _adamw_rows_torch, rounding_seed
from train.row_kernels import adamw_rows_cuda, gather_rows_cuda, row_squares
from train.scored_rows import RowGrad, rows_for_gemm
g = torch.Generator().manual_seed(0)
n, d = 53, 300  # neither a multiple of the kernels' blocks
w, m, v = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), torch.rand(n, d, generator=g)
w[7] = 0.0  # a zero row: its inverse norm is clamped, as F.normalize clamps
rows = torch.randperm(n, generator=g)[:19].sort().values
rows[0] = 7
rows = rows.sort().values
for dtype in (torch.float32, torch.bfloat16):
    got, s = gather_rows_cuda(w, rows, dtype)
    want, s_ref = rows_for_gemm(w, rows, dtype)
    # the interpreter truncates to bf16 where the GPU rounds to nearest (exact there: test_train_gpu.py)
    assert got.dtype == dtype and torch.allclose(got.float(), want.float(), rtol=2**-7, atol=0)
    torch.testing.assert_close(s, s_ref, rtol=1e-6, atol=0)
grad = RowGrad(rows, torch.randn(19, d, generator=g), torch.randn(19, generator=g))
torch.testing.assert_close(row_squares(w, grad).sum(), grad.materialize(w).square().sum(), rtol=1e-5, atol=0)
scored = RowGrad(rows, grad.p, grad.b, w[rows].bfloat16())  # the norm from the GEMM's copy of the rows
torch.testing.assert_close(row_squares(w, scored).sum(), scored.for_norm(w).square().sum(), rtol=1e-5, atol=0)
assert not torch.equal(scored.for_norm(w), grad.materialize(w))  # it did read the copy
hyper = (1e-2, 0.05, 0.9, 0.999, 1e-8, torch.tensor(3))
coef = torch.tensor(0.7)
orig = w.clone()
ref = [t.clone() for t in (w, m, v)]
_adamw_rows_torch(*ref, grad, coef, *hyper)
adamw_rows_cuda(w, m, v, grad, coef, *hyper, rounding_seed(hyper[-1], 0))
for got, want in zip((w, m, v), ref):
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
moved = (w != orig).any(dim=1)
assert moved.sum() == 19 and moved[rows].all()  # the indexed rows moved, no other
# bf16 moments: the same weights (computed from the fp32 moments), moments stochastically rounded
w, m16, v16 = orig.clone(), m.bfloat16(), v.bfloat16()
ref = [orig.clone(), m16.float(), v16.float()]
_adamw_rows_torch(*ref, grad, coef, *hyper)
adamw_rows_cuda(w, m16, v16, grad, coef, *hyper, rounding_seed(hyper[-1], 0))
torch.testing.assert_close(w, ref[0], rtol=1e-6, atol=1e-6)
for got, want in ((m16, ref[1]), (v16, ref[2])):
    low, high = bf16_below(want), bf16_above(want)
    got = got.float()
    assert torch.all((got == low) | (got == high))
    up = (got == high)[rows] & (high != low)[rows]
    assert 0.3 < float(up.float().mean()) < 0.7  # both ways, about half (the dropped bits are ~uniform)
for step, same in ((3, True), (4, False)):  # the same update count draws the same bits, another other bits
    again = [orig.clone(), m.bfloat16(), v.bfloat16()]
    adamw_rows_cuda(*again, grad, coef, *hyper[:5], torch.tensor(step), rounding_seed(torch.tensor(step), 0))
    assert torch.equal(again[2], v16) == same
print("ok")
"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join((str(root), str(root / "tests/train"))))
    rc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0 and rc.stdout.strip() == "ok", rc.stderr[-3000:]
