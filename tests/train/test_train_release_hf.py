"""``--format hf``: transformers loads the release offline, equals the encoder, and preprocesses as training does."""

import io
import json
import os
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from trainkit import base_config, write_shards

import manifests
from train.config import DataConfig, RunConfig
from train.data import Stream, decode
from train.loop import train
from train.packing import pack

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
CODEC = {"frames": 16, "size": 64, "min_frames": 16}  # a small codec grid keeps the test fast

# Runs in a fresh process with every socket refused: any network access fails the load.
LOAD_OFFLINE = """
import json, socket, sys
def refuse(*a, **k):
    raise OSError("network access during an offline load")
socket.socket.connect = socket.socket.connect_ex = socket.create_connection = socket.getaddrinfo = refuse
import numpy as np, torch
import train.release.hf
from transformers import AutoModel, AutoProcessor
release, image, clip, out = sys.argv[1:5]
model = AutoModel.from_pretrained(release).eval()
processor = AutoProcessor.from_pretrained(release, codec=json.loads(sys.argv[6]))
frames = np.load(sys.argv[5])
batches = {"codec": processor(images=[image], videos=[clip]),
           "frames": processor(videos=[frames], video_mode="frames")}
with torch.no_grad():
    result = {k: (dict(b), model(**b)) for k, b in batches.items()}
torch.save({k: (b, o.last_hidden_state, o.pooler_output) for k, (b, o) in result.items()}, out)
print(type(model).__name__, type(processor).__name__)
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
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    card = (out / "README.md").read_text()
    assert "import train.release.hf" in card and "AutoModel.from_pretrained" in card and "load_release" not in card


def test_offline_transformers_load_equals_the_checkpoint_encoder(release, tmp_path):
    from curate.demo.synthetic_video import make_clip

    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image)
    clip = tmp_path / "clip.mp4"
    make_clip(clip, size=64, frames=16, seed=1)
    frames = np.random.default_rng(1).integers(0, 256, (5, 36, 44, 3), dtype=np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    args = [
        str(release["out"]),
        str(image),
        str(clip),
        str(tmp_path / "out.pt"),
        str(tmp_path / "frames.npy"),
        json.dumps(CODEC),
    ]
    rc = subprocess.run(
        [sys.executable, "-c", LOAD_OFFLINE, *args], cwd=ROOT, env=OFFLINE, capture_output=True, text=True
    )
    assert rc.returncode == 0, rc.stderr[-3000:]
    assert rc.stdout.split() == ["OvforgeModel", "OvforgeImageProcessor"]

    enc = checkpoint_encoder(release["ckpt"])
    results = torch.load(tmp_path / "out.pt", weights_only=False)
    lengths = {}
    for mode, (batch, hidden, pooled) in results.items():
        mask = batch["attention_mask"].bool()
        items = [(batch["pixel_values"][i][mask[i]], batch["positions"][i][mask[i]]) for i in range(len(mask))]
        lengths[mode] = [len(p) for p, _ in items]
        packed = pack(items)
        with torch.no_grad():
            feats = enc.forward_features(packed)
            torch.testing.assert_close(pooled, enc.head(feats, packed), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(hidden[mask], feats, rtol=1e-5, atol=1e-5)
        assert (hidden[~mask] == 0).all()
    # the image is resized to the run's last resolution (48: 9 tokens); codec tokens are 12.5 % of 16 x 4 x 4
    assert lengths["codec"] == [9, 32]
    t = results["codec"][0]["positions"][1, :, 0]
    assert t.max() > 0  # codec tokens span several frames
    assert lengths["frames"] == [5 * 4]  # every frame (5 <= max_frames), each resized to 32 x 32


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
    from transformers import AutoProcessor

    import train.release.hf  # noqa: F401  (registers the processor)

    processor = AutoProcessor.from_pretrained(release["out"])
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


def test_processor_turns_a_video_file_into_the_curated_codec_tokens(release, tmp_path):
    from curate.demo.synthetic_video import make_clip
    from curate.sink import FIELD_OF_COLUMN
    from curate.stages.codec import CodecPatchify
    from shards.format import encode_json, encode_npy
    from train.release.processing import OvforgeImageProcessor

    clip = tmp_path / "clip.mp4"
    make_clip(clip, size=(80, 64), frames=20, seed=2, pan=(1.0, 0.0))
    (row,) = CodecPatchify(**CODEC).process_row({"key": "clip", "uri": str(clip), "meta": {"modality": "video"}})
    sample = {FIELD_OF_COLUMN[c]: row[c] for c in ("patches_jpg", "pos_npy", "frames_jpg")}
    sample["json"], sample["cls.npy"] = encode_json(row["meta"]), encode_npy(np.array([3], np.int32))
    (patches, pos), _, _ = decode(sample, DataConfig(video_size=32), 16, 48, 0.0, {"video": 12})

    processor = OvforgeImageProcessor.from_pretrained(release["out"], codec=CODEC)
    got = processor(videos=[clip.read_bytes()])
    assert torch.equal(got["pixel_values"][0], patches) and torch.equal(got["positions"][0].float(), pos)
    assert got["attention_mask"].all()


def test_processor_rejects_codec_mode_without_a_video_file(release):
    from train.release.processing import OvforgeImageProcessor

    processor = OvforgeImageProcessor.from_pretrained(release["out"])
    with pytest.raises(ValueError, match="codec tokens need the video file"):
        processor(videos=[np.zeros((4, 32, 32, 3), np.uint8)])
    with pytest.raises(ValueError, match="video_mode"):
        processor(images=[np.zeros((32, 32, 3), np.uint8)], video_mode="sparse")


def test_half_precision_load_runs_under_autocast_like_training(release):
    from transformers import AutoModel

    import train.release.hf  # noqa: F401

    g = torch.Generator().manual_seed(0)
    inputs = {
        "pixel_values": torch.randn(2, 6, 768, generator=g),
        "positions": torch.randint(0, 4, (2, 6, 3), generator=g),
        "attention_mask": torch.tensor([[1] * 6, [1] * 3 + [0] * 3]),
    }
    with torch.no_grad():
        full = AutoModel.from_pretrained(release["out"]).eval()(**inputs).pooler_output
        half = AutoModel.from_pretrained(release["out"], dtype=torch.bfloat16).eval()(**inputs).pooler_output
    assert half.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(half.float(), full).min() > 0.999
