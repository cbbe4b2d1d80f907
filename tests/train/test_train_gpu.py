"""GPU-only checks of the fast paths (varlen / dense flash attention under bf16); run on the GPU machine."""

import pytest
import torch

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

    g = torch.Generator(device="cuda").manual_seed(0)
    n, d = 100_003, 1024
    w, m = torch.randn(n, d, device="cuda", generator=g), torch.randn(n, d, device="cuda", generator=g) * 1e-3
    v = torch.rand(n, d, device="cuda", generator=g) * 1e-6
    rows = torch.randperm(n, device="cuda", generator=g)[: n // 10].sort().values
    grad = torch.randn(len(rows), d, device="cuda", generator=g) * 1e-3
    hyper = (1e-3, 0.05, 0.9, 0.999, 1e-8, torch.tensor(5, device="cuda"))
    ref = [t.clone() for t in (w, m, v)]
    _adamw_rows_torch(*ref, rows, grad, torch.tensor(0.5, device="cuda"), *hyper)
    adamw_rows(w, m, v, rows, grad, torch.tensor(0.5, device="cuda"), *hyper)
    for got, want in zip((w, m, v), ref, strict=True):  # equal up to fp32 rounding (the kernel fuses multiply-adds)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))

    cfg = OptimConfig(lr=1e-2, clip=0.5, head_weight_decay=0.05)
    gen = torch.Generator().manual_seed(0)
    emb, labels = torch.randn(64, 128, generator=gen), torch.randint(0, 20_000, (64, 10), generator=gen)
    out = {}
    for sampled in (False, True):
        heads = ConceptHeads((HeadConfig(num_classes=20_000, sample_rate=1.0),), 128, 0, "cuda", sampled_update=sampled)
        head = heads.heads["image"]
        opt = SampledRowAdamW(heads, cfg) if sampled else torch.optim.AdamW(heads.parameters(), lr=cfg.lr,
                                                                          weight_decay=0.05, fused=True)  # fmt: skip
        for step in range(3):
            heads(emb.cuda(), ["image"] * 64, labels, seed=0, step=step)[0].backward()
            if sampled:
                opt.clip(cfg.clip)
            else:
                torch.nn.utils.clip_grad_norm_(heads.parameters(), cfg.clip)
            opt.step()
            opt.zero_grad()
        out[sampled] = head.weight.detach()
    torch.testing.assert_close(out[True], out[False], rtol=1e-5, atol=1e-4 * cfg.lr)
