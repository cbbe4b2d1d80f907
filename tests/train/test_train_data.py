from pathlib import Path

import numpy as np
import pytest
import torch
from trainkit import write_shards

from shards.format import decode_npy
from shards.reader import BadDataError, iter_samples
from train.config import DataConfig
from train.data import Stream, decode

NUM = {"image": 12, "video": 12, "ocr": 12}


def _samples(folder: str) -> list[dict]:
    return [s for tar in sorted(Path(folder).glob("*.tar")) for s, _, _ in iter_samples(str(tar))]


def _video_sample(tmp_path):
    (folder,) = write_shards(tmp_path / "v", n_shards=1, per_shard=1, modalities=("video",))
    return _samples(folder)[0]


@pytest.mark.parametrize("shares, mode", [((1, 0, 0), "codec"), ((0, 1, 0), "frames"), ((0, 0, 1), "collage")])
def test_video_modes_give_tokens_at_their_positions(tmp_path, shares, mode):
    sample = _video_sample(tmp_path)
    cfg = DataConfig(video_size=32, codec_share=shares[0], frames_share=shares[1], collage_share=shares[2])
    (patches, pos), modality, labels = decode(sample, cfg, 16, 32, 0.5, NUM)
    assert modality == "video" and labels.shape == (3,)
    if mode == "codec":  # the mosaic holds the selected patches in pos.npy order
        from shards.format import decode_npy

        stored = decode_npy(sample["pos.npy"])
        assert torch.equal(pos, torch.from_numpy(stored.astype(np.float32)))
    elif mode == "frames":  # 4 whole frames of 2x2 tokens, t = frame id
        assert pos.shape == (16, 3) and pos[:, 0].tolist() == [0.0] * 4 + [1.0] * 4 + [2.0] * 4 + [3.0] * 4
    else:  # one 128x32 collage: t = 0, h runs over the stacked frames
        assert pos.shape == (16, 3) and pos[:, 0].max() == 0 and pos[:, 1].max() == 7 and pos[:, 2].max() == 1
    assert patches.shape == (pos.shape[0], 3 * 16 * 16)


def test_codec_patches_are_the_video_pixels(tmp_path):
    """Round trip through the mosaic: each token's pixels are the frame's pixels at (t, h, w)."""
    from PIL import Image

    sample = _video_sample(tmp_path)
    (patches, pos), _, _ = decode(sample, DataConfig(codec_share=1.0), 16, 32, 0.0, NUM)
    import io

    frames = np.asarray(Image.open(io.BytesIO(sample["frames.jpg"])).convert("RGB")).astype(np.float32)
    mean = np.array([0.48145466, 0.4578275, 0.40821073]) * 255
    std = np.array([0.26862954, 0.26130258, 0.27577711]) * 255
    for token, (t, h, w) in zip(patches, pos.int().tolist(), strict=True):
        want = frames[t * 64 + h * 16 : t * 64 + h * 16 + 16, w * 16 : w * 16 + 16]
        got = token.view(3, 16, 16).permute(1, 2, 0).numpy() * std + mean
        assert np.abs(got - want).mean() < 12  # two independent JPEG encodes of the same pixels


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_state_resumes_at_the_next_sample(tmp_path, workers):
    shards = write_shards(tmp_path / "s", n_shards=3, per_shard=5)
    cfg = DataConfig(shards=tuple(shards), batch_size=3, image_size=32, workers=workers, shuffle_buffer=4)
    stream = Stream(cfg, 16, NUM, seed=1)
    keys = [next(stream).keys for _ in range(7)]  # 21 samples: crosses shards and an epoch boundary
    stream.close()
    if workers == 0:
        assert len({k for ks in keys[:5] for k in ks}) == 15  # one epoch sees every sample once
    stream = Stream(cfg, 16, NUM, seed=1)
    for _ in range(3):
        state = next(stream).state
    stream.close()
    resumed = Stream(cfg, 16, NUM, seed=1, state=state)
    assert [next(resumed).keys for _ in range(4)] == keys[3:]
    resumed.close()


def test_a_resolution_switch_reopens_the_stream_exactly(tmp_path):
    """The image size changes at micro-batch 2 (step 1 with accum 2): same samples, new size."""
    shards = write_shards(tmp_path / "s", n_shards=2, per_shard=6)
    plain = DataConfig(shards=tuple(shards), batch_size=2, image_size=32, workers=0, shuffle_buffer=3)
    switch = DataConfig(**{**plain.__dict__, "resolution_schedule": ((1, 48),)})
    a, b = Stream(plain, 16, NUM, seed=2, accum=2), Stream(switch, 16, NUM, seed=2, accum=2)
    for i in range(5):
        x, y = next(a), next(b)
        assert x.keys == y.keys
        assert y.packed.tokens.shape[0] == 2 * (4 if i < 2 else 9)  # 32 px: 2x2 patches, 48 px: 3x3
    a.close()
    b.close()


def test_sets_need_a_head_and_exact_epochs_need_enough_shards(tmp_path):
    shards = write_shards(tmp_path / "s", n_shards=1, per_shard=2, modalities=("image", "video"))
    with pytest.raises(ValueError, match=r"\['video'\] set\(s\).*no head takes"):
        Stream(DataConfig(shards=tuple(shards), workers=0), 16, {"image": 12})
    with pytest.raises(ValueError, match="set data.resample = true"):
        Stream(DataConfig(shards=tuple(shards), workers=2), 16, NUM)
    with pytest.raises(ValueError, match="holds no shard set"):
        Stream(DataConfig(shards=(str(tmp_path / "nothing"),)), 16, NUM)
    root = Stream(DataConfig(shards=(str(tmp_path / "s"),), workers=2, resample=True, batch_size=2), 16, NUM)
    assert sorted(root.reader.modalities) == ["image", "video"]  # a root folder: its sets, by their indexes
    assert len(next(root).keys) == 2
    root.close()


def test_labels_outside_the_head_are_bad_samples(tmp_path):
    shards = write_shards(tmp_path / "s", n_shards=1, per_shard=3)
    stream = Stream(DataConfig(shards=tuple(shards), batch_size=2, image_size=32, workers=0), 16, {"image": 5})
    with pytest.raises(BadDataError, match="outside the image head's 5 classes"):
        next(stream)  # every sample is bad: skipped and counted until the bad-sample policy stops the run
    stream.close()


def test_the_ocr_head_takes_word_ids_and_pages_without_words_stay_unlabelled(tmp_path):
    shards = write_shards(tmp_path / "s", n_shards=1, per_shard=12, modalities=("ocr",), seed=3)
    cfg = DataConfig(shards=tuple(shards), batch_size=12, image_size=32, workers=0)
    stream = Stream(cfg, 16, {"ocr": 12}, label_fields={"ocr": "words"})
    batch = next(stream)
    stream.close()
    words = {s["__key__"]: decode_npy(s["words.npy"]) for s in _samples(shards[0])}
    assert any(len(w) == 0 for w in words.values()) and any(len(w) for w in words.values())
    assert sorted(batch.keys) == sorted(words)
    for key, row in zip(batch.keys, batch.labels.tolist(), strict=True):
        assert [v for v in row if v >= 0] == words[key].tolist()  # an empty page: all -1 (masked, never padded)
    no_words = write_shards(tmp_path / "t", n_shards=1, per_shard=2, modalities=("image",))
    stream = Stream(
        DataConfig(shards=tuple(no_words), batch_size=2, image_size=32, workers=0),
        16,
        {"image": 12},
        label_fields={"image": "words"},
    )
    with pytest.raises(BadDataError, match="no words.npy labels; the ocr_labels stage writes them"):
        next(stream)
    stream.close()
