import pytest
import torch

from train import packing
from train.config import ModelConfig
from train.model import Encoder
from train.packing import codec_tokens, pack, patchify


def _samples(patch=16):
    g = torch.Generator().manual_seed(0)
    image = patchify(torch.randn(3, 64, 48, generator=g), patch)
    collage = patchify(torch.randn(3, 128, 32, generator=g), patch)
    pos = torch.tensor([[0, 0, 0], [5, 3, 1], [9, 2, 2], [40, 0, 3], [63, 1, 1]], dtype=torch.int16)
    codec = codec_tokens(torch.randn(5, 3, 16, 16, generator=g), pos, patch)  # sparse video tokens
    return [image, codec, collage]


@pytest.mark.parametrize("dense_runs", [0, 4], ids=["block-mask", "dense-runs"])
def test_packed_batch_equals_each_sample_alone(monkeypatch, dense_runs):
    monkeypatch.setattr(packing, "DENSE_RUNS", dense_runs)
    torch.manual_seed(0)
    model = Encoder(ModelConfig("debug")).eval()
    image, codec, collage = _samples()
    items = [image, image, codec, collage, collage, codec]
    assert pack(items).runs == [(12, 2), (5, 1), (16, 2), (5, 1)]
    with torch.no_grad():
        packed = pack(items)
        together = model(packed)
        feats = model.forward_features(packed)
        for i, item in enumerate(items):
            alone = model(pack([item]))
            torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-5, atol=1e-5)
            lo, hi = int(packed.cu_seqlens[i]), int(packed.cu_seqlens[i + 1])
            torch.testing.assert_close(feats[lo:hi], model.forward_features(pack([item])), rtol=1e-5, atol=1e-5)


def test_uniform_batch_takes_the_dense_path_with_the_same_result():
    torch.manual_seed(1)
    model = Encoder(ModelConfig("debug")).eval()
    items = [patchify(torch.randn(3, 32, 32), 16) for _ in range(3)]
    with torch.no_grad():
        packed = pack(items)
        assert packed.runs == [(4, 3)]
        dense = model(packed)
        alone = torch.cat([model(pack([it])) for it in items])
    torch.testing.assert_close(dense, alone, rtol=1e-5, atol=1e-5)


def test_patch_14_and_codec_patches_resized():
    model = Encoder(ModelConfig("debug", patch=14)).eval()
    pos = torch.tensor([[0, 0, 0], [3, 1, 2]], dtype=torch.int16)
    tokens = codec_tokens(torch.randn(2, 3, 16, 16), pos, 14)
    assert tokens[0].shape == (2, 3 * 14 * 14)
    with torch.no_grad():
        out = model(pack([tokens, patchify(torch.randn(3, 28, 42), 14)]))
    assert out.shape == (2, 64) and torch.isfinite(out).all()


def test_flavour_sizes():
    counts = {f: sum(p.numel() for p in Encoder(ModelConfig(f)).parameters()) for f in ("base", "large")}
    assert 85e6 < counts["base"] < 100e6 and 300e6 < counts["large"] < 330e6
