"""GPU-only checks of the fast paths (varlen / dense flash attention under bf16); run on the GPU machine."""

import pytest
import torch
from trainkit import bf16_above, bf16_below

from train import packing
from train.config import ModelConfig
from train.model import Encoder
from train.packing import pack, patchify

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("dense_runs", [0, 4], ids=["varlen", "dense-runs"])
def test_packed_batch_equals_each_sample_alone_on_gpu(monkeypatch, dense_runs):
    monkeypatch.setattr(packing, "DENSE_RUNS", dense_runs)
    torch.manual_seed(0)
    model = Encoder(ModelConfig("base")).cuda().eval()
    sizes = ((14, 14), (14, 14), (7, 21), (28, 14), (28, 14), (3, 5))  # 4 runs of equal length
    items = [patchify(torch.randn(3, 16 * h, 16 * w), 16) for h, w in sizes]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        together = model(pack(items).to("cuda")).float()
        alone = torch.cat([model(pack([it]).to("cuda")).float() for it in items])
    torch.testing.assert_close(together, alone, rtol=2e-2, atol=2e-2)


def test_gpu_forward_matches_cpu_fp32_reference():
    torch.manual_seed(0)
    model = Encoder(ModelConfig("debug")).eval()
    items = [patchify(torch.randn(3, 32, 48), 16), patchify(torch.randn(3, 64, 32), 16)]
    with torch.no_grad():
        cpu = model(pack(items))
        gpu = model.cuda()(pack(items).to("cuda")).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3)


def test_sampled_row_adamw_on_cuda_is_the_torch_update_and_adamw_at_rate_one():
    """The Triton row kernel against the same formulas in torch on the GPU; a head step against dense AdamW."""
    from train.config import HeadConfig, OptimConfig
    from train.loss import ConceptHeads
    from train.optim import SampledRowAdamW, _adamw_rows_torch, adamw_rows
    from train.scored_rows import RowGrad

    g = torch.Generator(device="cuda").manual_seed(0)
    n, d = 100_003, 1024
    w, m = torch.randn(n, d, device="cuda", generator=g), torch.randn(n, d, device="cuda", generator=g) * 1e-3
    v = torch.rand(n, d, device="cuda", generator=g) * 1e-6
    rows = torch.randperm(n, device="cuda", generator=g)[: n // 10].sort().values
    p = (torch.randn(len(rows), d, device="cuda", generator=g) * 1e-3).bfloat16()
    grad = RowGrad(rows, p, torch.randn(len(rows), device="cuda", generator=g) * 1e-4)
    hyper = (1e-3, 0.05, 0.9, 0.999, 1e-8, torch.tensor(5, device="cuda"))
    ref = [t.clone() for t in (w, m, v)]
    _adamw_rows_torch(*ref, grad, torch.tensor(0.5, device="cuda"), *hyper)
    adamw_rows(w, m, v, grad, torch.tensor(0.5, device="cuda"), *hyper)
    for got, want in zip((w, m, v), ref, strict=True):  # equal up to fp32 rounding (the kernel fuses multiply-adds)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))

    cfg = OptimConfig(lr=1e-2, clip=0.5, head_weight_decay=0.05)
    gen = torch.Generator().manual_seed(0)
    emb, labels = torch.randn(64, 128, generator=gen), torch.randint(0, 20_000, (64, 10), generator=gen)
    out = {}
    for sampled in (False, True):
        heads = ConceptHeads((HeadConfig(num_classes=20_000, sample_rate=1.0),), 128, 0, "cuda", sampled_update=sampled)
        head = heads.heads["image"]
        opt = (
            SampledRowAdamW(heads, cfg)
            if sampled
            else torch.optim.AdamW(heads.parameters(), lr=cfg.lr, weight_decay=0.05, fused=True)
        )
        for step in range(3):
            heads(emb.cuda(), ["image"] * 64, labels, seed=0, step=step)[0].backward()
            if sampled:
                opt.clip(cfg.clip)
            else:
                torch.nn.utils.clip_grad_norm_(heads.parameters(), cfg.clip)
            opt.step()
            opt.zero_grad()
        out[sampled] = head.weight.detach()
    # equal but for elements whose gradient is near AdamW's eps, where g / (|g| + eps) turns 1-ulp gradient
    # differences (torch's fused kernel and ours round differently) into visible ones; a wrong bias
    # correction or decay would move every element by a good part of lr
    diff = (out[True] - out[False]).abs()
    assert float(diff.max()) <= 0.02 * cfg.lr
    assert float((diff > 1e-4 * cfg.lr).float().mean()) < 1e-3


def test_bf16_moments_on_cuda_round_the_torch_update_stochastically():
    """The Triton kernel with bf16 moments: the fp32 formulas' weights, and moments at one of the two bf16
    neighbours of the fp32 ones, up about as often as the dropped bits say (unbiased over 100k rows)."""
    from train.optim import _adamw_rows_torch, adamw_rows
    from train.scored_rows import RowGrad

    g = torch.Generator(device="cuda").manual_seed(0)
    n, d = 100_003, 1024
    w = torch.randn(n, d, device="cuda", generator=g)
    m = (torch.randn(n, d, device="cuda", generator=g) * 1e-3).bfloat16()
    v = (torch.rand(n, d, device="cuda", generator=g) * 1e-6).bfloat16()
    rows = torch.randperm(n, device="cuda", generator=g)[: n // 10].sort().values
    p = (torch.randn(len(rows), d, device="cuda", generator=g) * 1e-3).bfloat16()
    grad = RowGrad(rows, p, torch.randn(len(rows), device="cuda", generator=g) * 1e-4)
    hyper = (1e-3, 0.05, 0.9, 0.999, 1e-8, torch.tensor(5, device="cuda"))
    ref = [w.clone(), m.float(), v.float()]
    _adamw_rows_torch(*ref, grad, torch.tensor(0.5, device="cuda"), *hyper)
    adamw_rows(w, m, v, grad, torch.tensor(0.5, device="cuda"), *hyper)
    torch.testing.assert_close(w, ref[0], rtol=1e-6, atol=1e-6 * float(ref[0].abs().max()))
    for got, want in ((m, ref[1]), (v, ref[2])):
        got, want = got[rows].float(), want[rows]
        low, high = bf16_below(want), bf16_above(want)
        # a bf16 neighbour of the fp32 moment, or of a value 1-2 ulp from it: the kernel's fused multiply-adds
        # round differently from torch's separate ops, and now and then (~2^-15) that moves it across a bf16 value
        near, ok = [want], torch.zeros_like(got, dtype=torch.bool)
        for to in (-float("inf"), float("inf")):
            x = want
            for _ in range(2):
                x = torch.nextafter(x, torch.full_like(x, to))
                near.append(x)
        for x in near:
            ok |= (got == bf16_below(x)) | (got == bf16_above(x))
        off = ~ok
        assert not off.any(), (int(off.sum()), got[off][:8].tolist(), want[off][:8].tolist())
        assert float(((got == low) | (got == high)).float().mean()) > 0.999
        between = high != low
        share = ((want - low) / (high - low))[between]
        assert abs(float((got == high)[between].float().mean() - share.mean())) < 2e-3
        assert abs(float((got - want).double().sum() / want.double().abs().sum())) < 1e-4  # no bias


def test_compiled_head_equals_the_eager_head_on_cuda(monkeypatch):
    """The head's logit math compiled on CUDA (loss.COMPILE_ON_CUDA) gives the eager loss and gradients."""
    from train import loss as loss_mod
    from train.config import HeadConfig

    gen = torch.Generator().manual_seed(0)
    emb0, labels = torch.randn(256, 1024, generator=gen), torch.randint(0, 50_000, (256, 10), generator=gen)
    head = loss_mod.PartialFC(
        HeadConfig(num_classes=50_000, sample_rate=0.1, draw=8), 1024, 0, "cuda", sampled_update=True
    )
    got = {}
    for compiled in (False, True):
        monkeypatch.setattr(loss_mod, "COMPILE_ON_CUDA", compiled)
        emb = emb0.cuda().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = head(emb, labels, torch.Generator().manual_seed(1), torch.Generator("cuda").manual_seed(2))
        loss.backward()
        rows, g = head.take_grad()
        got[compiled] = (loss.detach(), emb.grad, rows, g)
    (l0, e0, r0, g0), (l1, e1, r1, g1) = got[False], got[True]
    assert torch.equal(r0, r1) and r0.numel() >= 5_000  # the same sampled rows
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=0)
    # Fused kernels round bf16 products in another order: a few elements differ at bf16 level (seen on H100:
    # 283 of 262144 over 1e-4 of the max, largest 9.7e-7), so compare element-wise at bf16 rounding and as a whole.
    for a, b in ((e1, e0), (g1, g0)):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2 * float(b.abs().max()))
        assert float((a - b).norm() / b.norm()) < 5e-3


def test_scored_rows_on_cuda_give_the_autograd_gradient_of_normalised_cosines():
    """The one-pass row gather (bf16 rows, inverse norms) and the factored row gradient against autograd in fp32."""
    import torch.nn.functional as F

    from train.scored_rows import ScoredRows, rows_for_gemm

    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(30_011, 1024, device="cuda", generator=g) * 0.01
    index = torch.randperm(30_011, device="cuda", generator=g)[:3_001].sort().values
    rows, s = rows_for_gemm(w, index, torch.bfloat16)
    assert torch.equal(rows, w[index].bfloat16())  # rounded to nearest, as torch casts
    torch.testing.assert_close(s, w[index].norm(dim=1).reciprocal(), rtol=1e-6, atol=0)

    emb = torch.randn(256, 1024, device="cuda", generator=g)
    weight = torch.randn(256, 3_001, device="cuda", generator=g)  # a fixed linear loss on the cosines
    sink = []
    e = emb.clone().requires_grad_(True)
    raw, inv = ScoredRows.apply_to(F.normalize(e, dim=1), w, index, torch.bfloat16, sink)
    ((raw.float() * inv).clamp(-1, 1) * weight).sum().backward()
    got = sink[0].materialize(w)

    ref_w = w[index].clone().requires_grad_(True)
    ref_e = emb.clone().requires_grad_(True)
    cos = (F.normalize(ref_e, dim=1) @ (ref_w / ref_w.norm(dim=1, keepdim=True)).T).clamp(-1, 1)
    (cos * weight).sum().backward()
    assert torch.equal(sink[0].rows, index)
    for a, b in ((got, ref_w.grad), (e.grad, ref_e.grad)):  # bf16 GEMMs against fp32: bf16-level agreement
        assert float((a - b).norm() / b.norm()) < 1e-2


def test_row_update_on_its_side_stream_equals_the_update_in_line():
    """The sampled-row AdamW on its own stream (the trainer's default) gives the in-line update bit for bit,
    and the same clip norm.

    Between steps the main stream runs large matmuls and fills fresh allocations with NaN, so a reader that
    did not wait for the side stream, or a gradient buffer handed out again before the update read it,
    would show as a difference; the state dict read right after a step must hold the updated rows.
    """
    from train.config import HeadConfig, OptimConfig
    from train.loss import ConceptHeads
    from train.optim import SampledRowAdamW

    cfg = OptimConfig(lr=1e-2, clip=0.5, head_weight_decay=0.05)
    gen = torch.Generator().manual_seed(0)
    emb, labels = torch.randn(512, 256, generator=gen), torch.randint(0, 400_000, (512, 10), generator=gen)
    big = torch.randn(8192, 8192, device="cuda")
    out = {}
    for overlap in (False, True):
        heads = ConceptHeads((HeadConfig(num_classes=400_000, sample_rate=0.1),), 256, 0, "cuda", sampled_update=True)
        opt = SampledRowAdamW(heads, cfg, overlap=overlap)
        states = []
        for step in range(4):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = heads(emb.cuda(), ["image"] * 512, labels, seed=0, step=step)[0]
            loss.backward()
            states.append({"norm": opt.clip(cfg.clip).clone()})
            opt.step()
            states[-1].update({k: v.clone() for k, v in heads.state_dict().items()})
            opt.zero_grad()
            for _ in range(3):  # main-stream work that would overwrite freed gradient buffers
                torch.full((200_000, 256), float("nan"), device="cuda").add_(big[:1, :256])
                big = big @ big * 1e-4
        out[overlap] = states
    assert out[True][0]["heads.image.updates"].item() == 1
    for a, b in zip(out[False], out[True], strict=True):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert not torch.equal(out[True][0]["heads.image.weight"], out[True][3]["heads.image.weight"])


@pytest.mark.parametrize("length", [64, 196])
def test_pooling_attention_backward_stays_finite_when_every_score_is_very_negative(length):
    """One learned query per sample whose scores are all about -120: finite gradients, equal to fp64's.

    The shape of the pooling head on 128 px and 224 px images (64 and 196 tokens); cuDNN's single-query
    SDPA backward returns NaN key / value gradients here (cudnn-frontend issue 1072).
    """
    import math

    from train.packing import pool_attend

    torch.manual_seed(0)
    count, h, d = 32, 6, 64
    q = torch.randn(count, h, d, device="cuda") * 0.1
    k = torch.randn(count * length, h, d, device="cuda") * 0.1
    v = torch.randn(count * length, h, d, device="cuda")
    q[..., 0], k[..., 0] = 1.0, -120 * math.sqrt(d)
    packed = pack([(torch.zeros(length, 3 * 16 * 16), torch.zeros(length, 3)) for _ in range(count)]).to("cuda")
    q, k, v = (t.bfloat16() for t in (q, k, v))
    grads = {}
    for dtype in (torch.bfloat16, torch.float64):  # fp64 from the same bf16 inputs
        leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        out = pool_attend(*leaves, packed)
        out.backward(torch.ones_like(out))
        grads[dtype] = [t.grad.double() for t in leaves]
    for got, want in zip(grads[torch.bfloat16], grads[torch.float64], strict=True):
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-2 * float(want.abs().max()))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_self_attention_over_64_tokens_stays_finite_when_every_score_is_very_negative(compiled):
    """Samples of 64 tokens (a 128 px image) whose scores are all about -120: finite gradients equal to fp64's.

    cuDNN's SDPA backward returns NaN for every query gradient here on H100 (RESULTS.md, Trainer); ``attend``
    sends these lengths to the flash kernel, also inside a compiled block.
    """
    import math

    from train.packing import attend

    torch.manual_seed(0)
    length, count, h, d = 64, 32, 6, 64
    q = torch.randn(count * length, h, d, device="cuda") * 0.1
    k = torch.randn(count * length, h, d, device="cuda") * 0.1
    v = torch.randn(count * length, h, d, device="cuda")
    q[..., 0], k[..., 0] = 1.0, -120 * math.sqrt(d)
    q, k, v = (t.bfloat16() for t in (q, k, v))
    packed = pack([(torch.zeros(length, 3 * 16 * 16), torch.zeros(length, 3)) for _ in range(count)]).to("cuda")
    fn = torch.compile(attend) if compiled else attend
    grads = {}
    for dtype, run in ((torch.bfloat16, fn), (torch.float64, attend)):  # fp64 from the same bf16 inputs
        leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        out = run(*leaves, packed)
        out.backward(torch.ones_like(out))
        grads[dtype] = [t.grad.double() for t in leaves]
    assert all(bool(torch.isfinite(g).all()) for g in grads[torch.bfloat16])
    # the query gradient's first column is a sum of terms times -960 that cancel: bf16 keeps no digit of it
    grads = {dtype: [g[..., 1:] if i == 0 else g for i, g in enumerate(gs)] for dtype, gs in grads.items()}
    for got, want in zip(grads[torch.bfloat16], grads[torch.float64], strict=True):
        torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-2 * float(want.abs().max()))
