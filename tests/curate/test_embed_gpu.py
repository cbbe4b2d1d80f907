"""GPU-only: the embed stage's encoder in bf16 on CUDA against the same weights in fp32 on the CPU."""

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _photos() -> list[Image.Image]:
    """Crops of scikit-image's photographs: different scenes, and a near-copy of the first."""
    from skimage import data

    pics = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    crops = [Image.fromarray(p[:256, :256]) for p in pics]
    return crops + [crops[0].resize((240, 240)).rotate(3)]


def test_gpu_bf16_embeddings_match_cpu_fp32():
    pytest.importorskip("open_clip")
    from curate.concepts.config import EmbedConfig
    from curate.concepts.embed import load_encoder

    spec = {"model": "ViT-B-32", "weights": "random", "allow_random": True, "video_frames": 2}
    gpu = load_encoder(EmbedConfig(**spec, device="cuda", precision="bf16"))
    cpu = load_encoder(EmbedConfig(**spec, device="cpu", precision="fp32"))
    assert gpu.device.type == "cuda" and gpu.precision == "bf16" and cpu.precision == "fp32"
    photos = _photos()
    a, b = gpu.images(photos, batch=4), cpu.images(photos, batch=4)
    assert a.shape == b.shape == (6, gpu.frame_dim) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert (a * b).sum(1).min() > 0.99  # same weights (seeded random init), bf16 autocast vs fp32
    # the neighbour structure survives bf16: each photo's nearest other photo is the same on both
    assert (a @ a.T - 3 * np.eye(6)).argmax(1).tolist() == (b @ b.T - 3 * np.eye(6)).argmax(1).tolist()
    va, vb = gpu.videos([photos[:3], photos[3:]]), cpu.videos([photos[:3], photos[3:]])
    assert va.shape == (2, 2 * gpu.frame_dim) and (va * vb).sum(1).min() > 0.99
