"""``--format hf``: transformers loads the release offline, equals the encoder, and preprocesses as training does."""

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import clean_env
import numpy as np
import pytest
import torch
from PIL import Image
from trainkit import base_config, write_shards

import manifests
from train.config import DataConfig, RunConfig
from train.data import Stream, decode
from train.loop import train
from train.packing import CLIP_MEAN, CLIP_STD, pack

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
CODEC = {"frames": 16, "size": 64, "min_frames": 16}  # a small codec grid keeps the test fast

# Runs in a fresh isolated process (python -I, from a temporary folder) where ovforge's packages
# cannot be imported and every socket is refused: the release must load from its own files.
LOAD_WITHOUT_OVFORGE = """
import json, socket, sys

OURS = ("curate", "shards", "train", "manifests")


class NotInstalled:  # stands first on the import path: as if ovforge were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in OURS:
            raise ImportError(f"No module named {name!r} (ovforge is not installed here)")


sys.meta_path.insert(0, NotInstalled())


def refuse(*a, **k):
    raise OSError("network access during an offline load")


socket.socket.connect = socket.socket.connect_ex = socket.create_connection = socket.getaddrinfo = refuse
import numpy as np, torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor

release, image, clip, frames, out, codec = sys.argv[1:7]
config = AutoConfig.from_pretrained(release, trust_remote_code=True)
model = AutoModel.from_pretrained(release, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(release, trust_remote_code=True, codec=json.loads(codec))
batches = {"codec": processor(images=[image], videos=[clip]),
           "frames": processor(videos=[np.load(frames)], video_mode="frames")}
with torch.no_grad():
    outputs = {k: model(**b, output_hidden_states=True) for k, b in batches.items()}
    eager = AutoModel.from_pretrained(release, trust_remote_code=True, attn_implementation="eager").eval()
    eager_state = eager(**batches["codec"]).last_hidden_state
    as_tuple = model(**batches["codec"], return_dict=False)
assert torch.equal(as_tuple[0], outputs["codec"].last_hidden_state) and len(as_tuple) == 2
assert type(AutoImageProcessor.from_pretrained(release, trust_remote_code=True)) is type(processor)

calls, block = [], model.encoder.blocks[0]
forward = block.forward
block.forward = lambda *a: calls.append(1) or forward(*a)  # counts runs, recomputations included
grads = []
model.train()
for checkpointing in (False, True):
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.zero_grad()
    model(**batches["codec"]).pooler_output.square().sum().backward()
    grads.append(model.encoder.patch_embed.weight.grad.clone())
torch.save({"batches": {k: dict(b) for k, b in batches.items()},
            "outputs": {k: {f: getattr(o, f) for f in ("last_hidden_state", "pooler_output", "hidden_states",
                                                       "positions", "attention_mask")} for k, o in outputs.items()},
            "eager": eager_state, "grads": grads, "block_calls": len(calls),
            "ovforge_modules": sorted(m for m in sys.modules if m.split(".")[0] in OURS),
            "preprocessor": processor.to_dict()}, out)
print(type(config).__name__, type(model).__name__, type(processor).__name__, type(model).__module__)
"""


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A two-step debug run on images and videos (image side 32, then 48 from step 1), released as hf."""
    tmp = tmp_path_factory.mktemp("hf")
    shards = write_shards(tmp / "shards", n_shards=1, per_shard=8, modalities=("image", "video"))
    heads = [
        {"name": "image", "modalities": ["image"], "num_classes": 12},
        {"name": "video", "modalities": ["video"], "num_classes": 12},
    ]
    data = {"batch_size": 4, "resolution_schedule": [[1, 48]]}
    train(manifests.build(RunConfig, base_config(tmp, shards, name="hf", steps=2, heads=heads, data=data)))
    ckpt = tmp / "runs/hf/checkpoints/step_00000002"
    out = tmp / "release"
    cmd = [sys.executable, "-m", "train.release", str(ckpt), str(out), "--format", "hf"]
    rc = subprocess.run(cmd, cwd=ROOT, env=OFFLINE, capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr[-3000:]
    return {"tmp": tmp, "shards": shards, "ckpt": ckpt, "out": out}


def checkpoint_encoder(ckpt):
    """The encoder straight from the DCP checkpoint, bypassing every release format."""
    from torch.distributed.checkpoint import load

    from train.config import ModelConfig
    from train.model import Encoder

    enc = Encoder(ModelConfig("debug")).eval()
    state = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    with warnings.catch_warnings():  # loading in one process is the point here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        load({"model": state}, checkpoint_id=str(ckpt), no_dist=True)
    enc.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items()})
    return enc


def test_release_folder_and_card(release):
    out = release["out"]
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= files
    assert {"modeling_ovforge.py", "processing_ovforge.py", "train_model.py", "curate_codec_patchify.py"} <= files
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "modeling_ovforge.OvforgeConfig",
        "AutoModel": "modeling_ovforge.OvforgeModel",
        "AutoImageProcessor": "processing_ovforge.OvforgeImageProcessor",
        "AutoProcessor": "processing_ovforge.OvforgeImageProcessor",
    }
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["auto_map"]["AutoProcessor"] == "processing_ovforge.OvforgeImageProcessor"
    assert (pre["size"], pre["crop_size"], pre["patch_size"]) == (
        {"shortest_edge": 48},
        {"height": 48, "width": 48},
        16,
    )
    assert pre["image_mean"] == list(CLIP_MEAN) and pre["image_std"] == list(CLIP_STD)
    card = (out / "README.md").read_text()
    header = card.split("---\n")[1]
    for line in ("license: apache-2.0", "library_name: transformers", "pipeline_tag: image-feature-extraction"):
        assert line in header.splitlines()
    assert "- ovforge" in header and "datasets:\n- demo_image\n- demo_video" in header
    assert "trust_remote_code=True" in card and "import train" not in card
    assert str(release["tmp"]) not in card and "/tmp" not in card  # no local paths anywhere in the card
    # the copies import nothing of ovforge, and say where they come from
    for path in out.glob("*.py"):
        text = path.read_text()
        assert text.startswith("# ovforge's ")
        assert not re.search(r"^\s*(from|import) (curate|shards|train|manifests)\b", text, re.M), path.name


def _curated_codec_tokens(clip):
    """The codec tokens the curation stage writes for ``clip``, as the trainer decodes them."""
    from curate.sink import FIELD_OF_COLUMN
    from curate.stages.codec import CodecPatchify
    from shards.format import encode_json, encode_npy

    (row,) = CodecPatchify(**CODEC).process_row({"key": "clip", "uri": str(clip), "meta": {"modality": "video"}})
    sample = {FIELD_OF_COLUMN[c]: row[c] for c in ("patches_jpg", "pos_npy", "frames_jpg")}
    sample["json"], sample["cls.npy"] = encode_json(row["meta"]), encode_npy(np.array([3], np.int32))
    (patches, pos), _, _ = decode(sample, DataConfig(video_size=32), 16, 48, 0.0, {"video": 12})
    return patches, pos


# what a user of the release installs: the list, and numba and scipy, which the codec processor's
# copied modules import (the compiled residual; connected regions of the static-clip test)
CLEAN_ENV = ["transformers", "torch", "numpy", "pillow", "av", "onnxruntime", "numba", "scipy"]


def test_release_loads_without_ovforge_and_equals_the_checkpoint_encoder(release, tmp_path):
    """AutoConfig / AutoModel / AutoProcessor with trust_remote_code, offline, in an environment holding only
    ``CLEAN_ENV`` and what those require (tests/train/clean_env.py); ovforge's packages also refused by name."""
    from curate.demo.synthetic_video import make_clip

    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image)
    clip = tmp_path / "clip.mp4"
    make_clip(clip, size=(80, 64), frames=20, seed=2, pan=(1.0, 0.0))
    frames = np.random.default_rng(1).integers(0, 256, (5, 36, 44, 3), dtype=np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    args = [release["out"], image, clip, tmp_path / "frames.npy", tmp_path / "out.pt", json.dumps(CODEC)]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in OFFLINE.items() if k != "PYTHONPATH"} | {"HF_MODULES_CACHE": str(tmp_path / "modules")}
    site = clean_env.build(tmp_path / "site", CLEAN_ENV)
    cmd = [*clean_env.command(site, LOAD_WITHOUT_OVFORGE), *map(str, args)]
    rc = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr[-3000:]
    config, model, processor, module = rc.stdout.split()
    assert (config, model, processor) == ("OvforgeConfig", "OvforgeModel", "OvforgeImageProcessor")
    assert module.startswith("transformers_modules.") and module.endswith(".modeling_ovforge")
    got = torch.load(tmp_path / "out.pt", weights_only=False)
    assert got["ovforge_modules"] == []

    enc = checkpoint_encoder(release["ckpt"])
    lengths = {}
    for mode, batch in got["batches"].items():
        out = got["outputs"][mode]
        mask = batch["attention_mask"].bool()
        items = [(batch["pixel_values"][i][mask[i]], batch["positions"][i][mask[i]]) for i in range(len(mask))]
        lengths[mode] = [len(p) for p, _ in items]
        packed, states = pack(items), []
        with torch.no_grad():
            feats = enc.forward_features(packed, states)
            pooled = enc.head(feats, packed)
        # the same code on the same tokens: per-token states equal bit for bit, in every layer; the pooled
        # embedding within fp32 rounding (its reductions split by thread count, one thread there)
        assert torch.equal(out["last_hidden_state"][mask], feats)
        torch.testing.assert_close(out["pooler_output"], pooled, rtol=1e-6, atol=1e-6)
        assert len(out["hidden_states"]) == len(enc.blocks) + 1
        assert all(torch.equal(h[mask], s) for h, s in zip(out["hidden_states"], states, strict=True))
        assert (out["last_hidden_state"][~mask] == 0).all()
        assert torch.equal(out["attention_mask"], batch["attention_mask"])
        assert torch.equal(out["positions"], batch["positions"])
    # the image is resized to the run's last resolution (48: 9 tokens); frames: every frame (5 <= max_frames) at 32
    assert lengths["frames"] == [5 * 4] and lengths["codec"][0] == 9
    # the video file's codec tokens are those curation writes for it
    patches, pos = _curated_codec_tokens(clip)
    codec = got["batches"]["codec"]
    assert lengths["codec"][1] == len(patches) and pos[:, 0].max() > 0  # several frames
    assert torch.equal(codec["pixel_values"][1, : len(patches)], patches)
    assert torch.equal(codec["positions"][1, : len(patches)].float(), pos)

    torch.testing.assert_close(got["eager"], got["outputs"]["codec"]["last_hidden_state"], rtol=1e-5, atol=1e-5)
    # gradient checkpointing: the same gradients, the first block run again in the backward pass
    assert got["block_calls"] == 1 + 2
    torch.testing.assert_close(got["grads"][1], got["grads"][0], rtol=1e-5, atol=1e-6)
    assert got["preprocessor"]["image_processor_type"] == "OvforgeImageProcessor"


def _raw_samples(shards):
    """key -> raw tar fields, as webdataset hands them to the trainer."""
    samples = {}
    for folder in shards:
        for tar in sorted(Path(folder).glob("*.tar")):
            with tarfile.open(tar) as f:
                for member in f.getmembers():
                    key, field = member.name.split(".", 1)
                    samples.setdefault(key, {})[field] = f.extractfile(member).read()
    return samples


@pytest.mark.parametrize("mode", ["codec", "frames", "collage"])
def test_processor_reproduces_the_training_stream_bit_for_bit(release, mode):
    from train.release.processing import OvforgeImageProcessor

    processor = OvforgeImageProcessor.from_pretrained(release["out"])
    assert (processor.image_size, processor.video_size, processor.patch) == (48, 32, 16)
    shares = {f"{m}_share": float(m == mode) for m in ("codec", "frames", "collage")}
    cfg = DataConfig(shards=tuple(release["shards"]), batch_size=8, image_size=48, video_size=32, workers=0, **shares)
    stream = Stream(cfg, patch=16, num_classes={"image": 12, "video": 12})
    try:
        batch = next(stream)
    finally:
        stream.close()
    raw = _raw_samples(release["shards"])
    for i, (key, modality) in enumerate(zip(batch.keys, batch.modality, strict=True)):
        sample = raw[key]
        if modality == "image":
            got = processor(images=[sample["jpg"]])
        else:
            got = processor(videos=[sample], video_mode=mode)
        lo, hi = int(batch.packed.cu_seqlens[i]), int(batch.packed.cu_seqlens[i + 1])
        assert torch.equal(got["pixel_values"][0], batch.packed.tokens[lo:hi]), (key, modality)
        assert torch.equal(got["positions"][0].float(), batch.packed.pos[lo:hi]), (key, modality)
    # a decoded image equals its file
    image = next(s["jpg"] for s in raw.values() if "jpg" in s)
    decoded = Image.open(io.BytesIO(image))
    assert torch.equal(processor(images=[decoded])["pixel_values"], processor(images=[image])["pixel_values"])


def test_processor_rejects_codec_mode_without_a_video_file(release):
    from train.release.processing import OvforgeImageProcessor

    processor = OvforgeImageProcessor.from_pretrained(release["out"])
    with pytest.raises(ValueError, match="codec tokens need the video file"):
        processor(videos=[np.zeros((4, 32, 32, 3), np.uint8)])
    with pytest.raises(ValueError, match="video_mode"):
        processor(images=[np.zeros((32, 32, 3), np.uint8)], video_mode="sparse")


def test_half_precision_load_runs_under_autocast_like_training(release):
    from train.release.modeling import OvforgeModel

    g = torch.Generator().manual_seed(0)
    inputs = {
        "pixel_values": torch.randn(2, 6, 768, generator=g),
        "positions": torch.randint(0, 4, (2, 6, 3), generator=g),
        "attention_mask": torch.tensor([[1] * 6, [1] * 3 + [0] * 3]),
    }
    with torch.no_grad():
        full = OvforgeModel.from_pretrained(release["out"]).eval()(**inputs).pooler_output
        half = OvforgeModel.from_pretrained(release["out"], dtype=torch.bfloat16).eval()(**inputs).pooler_output
    assert half.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(half.float(), full).min() > 0.999
