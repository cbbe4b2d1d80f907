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
