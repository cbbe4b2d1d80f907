"""GPU-only checks of the fast paths (varlen / dense flash attention under bf16); run on the GPU machine."""

import pytest
import torch

from train.config import ModelConfig
from train.model import Encoder
from train.packing import pack, patchify

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_varlen_packed_batch_equals_each_sample_alone_on_gpu():
    torch.manual_seed(0)
    model = Encoder(ModelConfig("base")).cuda().eval()
    items = [patchify(torch.randn(3, 16 * h, 16 * w), 16) for h, w in ((14, 14), (7, 21), (28, 14), (3, 5))]
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


def test_sampled_row_adamw_on_cuda_equals_the_cpu_update():
    """The Triton row update against the torch formulas, and a sampled head step on the GPU against the CPU."""
    from train.config import HeadConfig, OptimConfig
    from train.loss import ConceptHeads
    from train.optim import SampledRowAdamW

    cfg = OptimConfig(lr=1e-2, clip=0.5)
    g = torch.Generator().manual_seed(0)
    emb, labels = torch.randn(64, 128, generator=g), torch.randint(0, 20_000, (64, 10), generator=g)
    out = {}
    for dev in ("cpu", "cuda"):
        # rate 1: every row scored on both devices (their random generators differ, so would their samples)
        heads = ConceptHeads((HeadConfig(num_classes=20_000, sample_rate=1.0),), 128, 0, dev, sampled_update=True)
        opt = SampledRowAdamW(heads, cfg)
        for step in range(3):
            heads(emb.to(dev), ["image"] * 64, labels, seed=0, step=step)[0].backward()
            opt.clip(cfg.clip)
            opt.step()
        h = heads.heads["image"]
        out[dev] = [t.detach().cpu() for t in (h.weight, h.exp_avg, h.exp_avg_sq)]
    for got, want in zip(out["cuda"], out["cpu"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
