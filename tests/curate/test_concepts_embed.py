"""The embed stage: open_clip weights from a local path and from S3, determinism, random weights, videos."""

from __future__ import annotations

import json

import boto3
import numpy as np
import pytest
from concepts_kit import NAME, TINY, frames_jpeg, jpeg, rows, save_tiny

from curate.stage import run_in_process
from curate.stages import build_stage
from manifests import ManifestError
from shards import format as fmt


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-clip"))


def _embed(spec: dict, batch: dict) -> dict:
    return run_in_process([build_stage({"name": "embed", **spec})], batch)


def _images(n=5):
    return rows([{"key": f"img{i}", "modality": "image", "jpg": jpeg(i)} for i in range(n)])


def test_local_weights_load_and_embeddings_repeat_exactly(tiny):
    config, weights = tiny
    spec = {"model": NAME, "model_config": config, "weights": weights, "dtype": "float32"}
    first, second = _embed(spec, _images()), _embed(spec, _images())
    assert list(first["status"]) == ["live"] * 5
    emb = np.stack([fmt.decode_npy(e) for e in first["emb"]])
    assert emb.shape == (5, TINY["embed_dim"]) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert list(first["emb"]) == list(second["emb"])  # byte-identical across runs
    assert len(set(first["emb"])) == 5
    meta = json.loads(first["meta"][0])["embedding"]
    assert meta["random_weights"] is False and meta["dim"] == TINY["embed_dim"] and meta["model"] == NAME
    random = _embed({**spec, "weights": "random", "allow_random": True}, _images())
    assert list(random["emb"]) != list(first["emb"])  # the checkpoint was really loaded


def test_weights_and_config_from_s3_equal_the_local_ones(tiny, s3_server, tmp_path):
    config, weights = tiny
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="models")
    s3.upload_file(weights, "models", "clip/tiny.pt")
    s3.upload_file(config, "models", "clip/tiny.json")
    local = _embed({"model": NAME, "model_config": config, "weights": weights}, _images(3))
    remote = _embed(
        {
            "model": NAME,
            "model_config": "s3://models/clip/tiny.json",
            "weights": "s3://models/clip/tiny.pt",
            "cache_dir": str(tmp_path),
        },
        _images(3),
    )
    assert list(remote["status"]) == ["live"] * 3
    assert list(remote["emb"]) == list(local["emb"])
    assert any(p.name.endswith("-tiny.pt") for p in (tmp_path / "ovforge-weights").iterdir())


def test_random_weights_need_allow_random_and_are_flagged(tiny):
    config, _ = tiny
    with pytest.raises(ManifestError, match="allow_random"):
        build_stage({"name": "embed", "model": NAME, "model_config": config, "weights": "random"})
    with pytest.raises(ManifestError, match="weights"):
        build_stage({"name": "embed", "model": NAME})
    out = _embed({"model": NAME, "model_config": config, "weights": "random", "allow_random": True}, _images(2))
    assert json.loads(out["meta"][0])["embedding"]["random_weights"] is True
    again = _embed({"model": NAME, "model_config": config, "weights": "random", "allow_random": True}, _images(2))
    assert list(out["emb"]) == list(again["emb"])  # seeded: every worker builds the same random model


def test_video_embedding_reduces_frames_and_missing_frames_fail_clearly(tiny):
    config, weights = tiny
    d = TINY["embed_dim"]
    batch = rows(
        [
            {
                "key": "v0",
                "modality": "video",
                "frames_jpg": frames_jpeg(4, 0),
                "meta": {"frames": {"ids": [0, 1, 2, 3]}},
            },
            {"key": "v1", "modality": "video", "meta": {"frames": {"ids": [0, 1]}}},
            {"key": "i0", "modality": "image", "jpg": jpeg(7)},
        ]
    )
    spec = {"model": NAME, "model_config": config, "weights": weights, "video_frames": 2, "dtype": "float32"}
    concat = _embed(spec, batch)
    assert list(concat["status"]) == ["live", "failed", "live"]
    assert "frames_jpg" in concat["detail"][1] and concat["reason"][1] == "embed/ValueError"
    v = fmt.decode_npy(concat["emb"][0])
    assert v.shape == (2 * d,) and fmt.decode_npy(concat["emb"][2]).shape == (d,)
    # concat = the two picked frames (ids 0 and 2 of 4), each normalised, joined, renormalised
    halves = v.reshape(2, d) * np.sqrt(2)
    np.testing.assert_allclose(np.linalg.norm(halves, axis=1), 1.0, rtol=1e-5)
    mean = _embed({**spec, "video_reduction": "mean"}, batch)
    m = fmt.decode_npy(mean["emb"][0])
    expected = halves.mean(0) / np.linalg.norm(halves.mean(0))
    np.testing.assert_allclose(m, expected, atol=1e-5)


def test_weights_of_another_architecture_fail_at_load_with_the_model_named(tiny):
    from curate.concepts.config import EmbedConfig
    from curate.concepts.embed import load_encoder

    _, weights = tiny  # the tiny model's checkpoint, loaded as ViT-B-32
    with pytest.raises(ValueError, match=r"weights .*tiny.pt do not fit open_clip model 'ViT-B-32'"):
        load_encoder(EmbedConfig(model="ViT-B-32", weights=weights))


def test_an_encoder_that_gives_nan_fails_the_rows_with_the_reason(tiny, tmp_path):
    import torch

    config, weights = tiny
    state = torch.load(weights)
    state["visual.proj"][:, 0] = float("nan")  # a broken checkpoint: one embedding dimension is NaN
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    out = _embed({"model": NAME, "model_config": config, "weights": str(broken), "dtype": "float32"}, _images(3))
    assert list(out["status"]) == ["failed"] * 3 and set(out["reason"]) == {"embed/ValueError"}
    assert "img0: the encoder gave a NaN, inf or all-zero embedding" in out["detail"][0]
    assert all(e is None for e in out["emb"])
