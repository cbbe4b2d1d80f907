"""shards.fields against known answers: patches, frames and arrays built here, then decoded back."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from curate.codec import tokens
from shards import fields
from shards import format as fmt


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _npy(array: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("k", [1, 31, 32, 33, 70])
def test_mosaic_gives_back_the_packed_patches_exactly(k):
    patches = np.random.default_rng(k).integers(0, 256, (k, 16, 16, 3), dtype=np.uint8)
    got = fields.mosaic(_png(tokens.mosaic(patches)), k)
    assert got.dtype == np.uint8 and got.shape == (k, 16, 16, 3)
    assert np.array_equal(got, patches)


def test_mosaic_jpeg_patches_stay_in_their_cells():
    colours = np.random.default_rng(3).integers(20, 236, (45, 3)).astype(np.uint8)
    patches = np.broadcast_to(colours[:, None, None, :], (45, 16, 16, 3)).copy()
    got = fields.mosaic(_jpeg(tokens.mosaic(patches)), 45).astype(np.int16)
    assert np.abs(got - patches).mean() < 4  # flat patches: JPEG q95 error is a few levels
    means = got.mean(axis=(1, 2))  # each cell is nearest to its own colour, so none moved
    nearest = np.abs(means[:, None, :] - colours[None].astype(np.float64)).sum(-1).argmin(1)
    assert nearest.tolist() == list(range(45))


def test_mosaic_errors_name_the_width_or_the_count():
    patches = np.zeros((40, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match=r"496 px wide, not 32 patches of 16 px \(512 px\)"):
        fields.mosaic(_png(tokens.mosaic(patches, cols=31)), 40)
    with pytest.raises(ValueError, match="holds 64 patches of 16 px, but pos.npy has 65"):
        fields.mosaic(_png(tokens.mosaic(patches)), 65)


def test_frames_split_back_into_the_stored_frames():
    video = np.random.default_rng(5).integers(0, 256, (4, 24, 40, 3), dtype=np.uint8)
    frames, ids = fields.frames(_png(np.concatenate(list(video))), {"frames": {"ids": [0, 7, 14, 21]}})
    assert ids == [0, 7, 14, 21] and len(frames) == 4
    for got, want in zip(frames, video, strict=True):
        assert got.dtype == np.uint8 and np.array_equal(got, want)


def test_frames_errors_say_what_is_missing():
    data = _png(np.zeros((96, 40, 3), np.uint8))
    for meta in ({}, {"frames": None}, {"frames": {"ids": []}}):
        with pytest.raises(ValueError, match=r'json\["frames"\]\["ids"\] is missing'):
            fields.frames(data, meta)
    with pytest.raises(ValueError, match="frames.jpg height 96 is not a multiple of its 5 frames"):
        fields.frames(data, {"frames": {"ids": [0, 1, 2, 3, 4]}})


def test_image_is_rgb_uint8_whatever_the_file_mode():
    grey = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
    got = fields.image(_png(grey))
    assert got.shape == (12, 20, 3) and got.flags.writeable
    assert np.array_equal(got, np.repeat(grey[..., None], 3, axis=2))


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.int16).reshape(4, 3),
        np.asfortranarray(np.arange(24, dtype=np.float32).reshape(4, 6)),
        np.zeros(0, np.int32),
        np.array(7, np.int64),
    ],
)
@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_npy_reads_what_numpy_writes(array, version):
    got = fields.npy(_npy(array, version=version))
    assert got.dtype == array.dtype and got.shape == array.shape and np.array_equal(got, array)


def test_npy_rejects_objects_and_non_npy_bytes():
    with pytest.raises(ValueError, match="object arrays"):
        fields.npy(_npy(np.array([{"a": 1}], dtype=object), allow_pickle=True))
    with pytest.raises(ValueError, match="not a .npy array"):
        fields.npy(b"\xff\xd8 a jpeg, not an array")


def test_positions_are_int16_k_by_3():
    pos = np.array([[0, 1, 2], [3, 4, 5]], np.int16)
    assert np.array_equal(fields.positions(fmt.encode_npy(pos)), pos)
    for bad in (pos.astype(np.int32), pos[:, :2], pos.reshape(-1)):
        with pytest.raises(ValueError, match=r"pos.npy must be int16 \(K, 3\), got"):
            fields.positions(fmt.encode_npy(bad))


def test_labels_follow_the_contract():
    ids = np.array([5, 1, 9], np.int32)
    assert np.array_equal(fields.labels(fmt.encode_npy(ids)), ids)
    assert fields.words(fmt.encode_npy(np.zeros(0, np.int32))).shape == (0,)  # no readable text
    assert fields.words(fmt.encode_npy(np.arange(fmt.MAX_WORDS, dtype=np.int32))).shape == (fmt.MAX_WORDS,)
    for bad in (ids.astype(np.int64), ids.reshape(1, 3)):
        with pytest.raises(ValueError, match=r"cls.npy must be int32 \(n,\)"):
            fields.labels(fmt.encode_npy(bad))
    with pytest.raises(ValueError, match="words.npy holds 101 word ids, more than the contract's 100"):
        fields.words(fmt.encode_npy(np.zeros(101, np.int32)))
    with pytest.raises(ValueError, match="label field 'txt'"):
        fields.labels(fmt.encode_npy(ids), "txt")


def test_check_sample_uses_the_same_checks():
    sample = {"json": fmt.encode_json({"modality": "image"}), "jpg": _jpeg(np.zeros((8, 8, 3), np.uint8))}
    fields.check_sample({**sample, "cls.npy": fmt.encode_npy(np.array([1, 2], np.int32))})
    with pytest.raises(ValueError, match=r"cls.npy must be int32 \(n,\), got int32 \(1, 2\)"):
        fields.check_sample({**sample, "cls.npy": fmt.encode_npy(np.array([[1, 2]], np.int32))})
    with pytest.raises(ValueError, match="words.npy holds 101"):
        fields.check_sample({**sample, "words.npy": fmt.encode_npy(np.zeros(101, np.int32))})


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """One clip through the codec stage's own functions: the video fields a curated shard holds."""
    from curate.codec import PatchifyConfig, encode, patchify
    from curate.demo.synthetic_video import make_clip

    clip = tmp_path_factory.mktemp("clip") / "clip.mp4"
    make_clip(clip, size=(80, 64), frames=20, seed=2, pan=(1.0, 0.0))
    cfg = PatchifyConfig(frames=16, size=64, min_frames=16)
    out = encode(patchify(str(clip), cfg), cfg)
    meta = {"modality": "video", "codec": out["codec"], "frames": out["frames"]}
    sample = {"patches.jpg": out["patches_jpg"], "pos.npy": out["pos_npy"], "frames.jpg": out["frames_jpg"]}
    return {**sample, "json": fmt.encode_json(meta), "meta": meta}


def test_a_curated_sample_decodes_through_the_trainer_as_before(curated):
    """The trainer's codec and frame inputs equal its former decode, re-done here with PIL alone."""
    from train.inputs import _square, codec_input, frame_images
    from train.packing import codec_tokens, normalise

    fields.check_sample({k: v for k, v in curated.items() if k != "meta"})
    pos = np.load(io.BytesIO(curated["pos.npy"]))
    grid = np.asarray(Image.open(io.BytesIO(curated["patches.jpg"])).convert("RGB"))
    rows, cols = grid.shape[0] // 16, grid.shape[1] // 16
    cells = grid.reshape(rows, 16, cols, 16, 3).transpose(0, 2, 4, 1, 3).reshape(-1, 3, 16, 16)[: len(pos)]
    want = codec_tokens(normalise(torch.from_numpy(cells.copy())), torch.from_numpy(pos.astype(np.float32)), 8)
    got = codec_input(curated, 8)
    assert len(pos) == curated["meta"]["codec"]["k"] and all(torch.equal(a, b) for a, b in zip(got, want, strict=True))

    stacked = Image.open(io.BytesIO(curated["frames.jpg"])).convert("RGB")
    ids = curated["meta"]["frames"]["ids"]
    fh = stacked.height // len(ids)
    frames, times = frame_images(curated, curated["meta"], 3, 32)
    keep = np.unique(np.linspace(0, len(ids) - 1, 3).round().astype(int))
    assert times == [float(ids[i]) for i in keep]
    for frame, i in zip(frames, keep, strict=True):
        assert torch.equal(frame, _square(stacked.crop((0, i * fh, stacked.width, (i + 1) * fh)), 32))


def test_the_reader_transform_and_the_trainer_see_the_same_patches(curated):
    from shards.transforms import video_tokens

    out = video_tokens(curated)
    patches = fields.mosaic(curated["patches.jpg"], len(out["pos"]))
    assert torch.equal(out["patches"], torch.from_numpy(patches).permute(0, 3, 1, 2))
    assert torch.equal(out["pos"], torch.from_numpy(fields.positions(curated["pos.npy"]).astype(np.int64)))
