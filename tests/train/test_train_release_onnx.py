"""``--format onnx``: onnxruntime gives the encoder's states and embedding for images, frames and codec tokens."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from trainkit import base_config, video_sample, write_shards

import manifests
from shards.format import encode_json
from train.config import RunConfig
from train.loop import train
from train.packing import pack, patchify
from train.release import load_release
from train.release.onnx import FILE, run_onnx

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    shards = write_shards(tmp / "shards", n_shards=1, per_shard=4)
    train(manifests.build(RunConfig, base_config(tmp, shards, name="onnx", steps=1)))
    out = tmp / "release"
    cmd = [
        sys.executable,
        "-m",
        "train.release",
        str(tmp / "runs/onnx/checkpoints/step_00000001"),
        str(out),
        "--format",
        "onnx",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    rc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr[-3000:]
    return out


def _inputs(processor):
    """An image, five whole frames and a sparse codec selection, through the release's processor."""
    rng = np.random.default_rng(0)
    _, fields, extra = video_sample(rng)
    codec_sample = {**fields, "json": encode_json({"modality": "video", **extra})}
    return {
        "image": processor(images=[rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)]),
        "frames": processor(videos=[rng.integers(0, 256, (5, 32, 40, 3), dtype=np.uint8)], video_mode="frames"),
        "codec": processor(videos=[codec_sample], video_mode="codec"),
    }


def test_onnx_runtime_equals_the_encoder_on_images_frames_and_codec_tokens(release):
    from train.release.processing import OvforgeImageProcessor

    encoder = load_release(release).eval()
    processor = OvforgeImageProcessor.from_pretrained(release)
    lengths = {}
    for kind, batch in _inputs(processor).items():
        patches, positions = batch["pixel_values"][0], batch["positions"][0]
        lengths[kind] = len(patches)
        hidden, pooled = run_onnx(release / FILE, patches.numpy(), positions.numpy())
        packed = pack([(patches, positions)])
        with torch.no_grad():
            want_hidden = encoder.forward_features(packed)
            want_pooled = encoder.head(want_hidden, packed)
        torch.testing.assert_close(torch.from_numpy(hidden), want_hidden, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.from_numpy(pooled), want_pooled, rtol=1e-4, atol=1e-5)
    assert lengths == {"image": 4, "frames": 5 * 4, "codec": 24}  # one graph, three token counts


def test_onnx_graph_is_a_single_sample_of_any_length(release):
    import onnx

    graph = onnx.load(str(release / FILE)).graph
    shapes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*graph.input, *graph.output]
    }
    assert shapes == {
        "patches": ["tokens", 768],
        "positions": ["tokens", 3],
        "last_hidden_state": ["tokens", 64],
        "pooler_output": [1, 64],
    }
    hidden, pooled = run_onnx(release / FILE, *patchify(torch.randn(3, 16, 16), 16))
    assert hidden.shape == (1, 64) and pooled.shape == (1, 64)
    card = (release / "README.md").read_text()
    assert "onnxruntime" in card and "encoder.onnx" in card
