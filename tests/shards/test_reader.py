"""ShardStream on local shard sets of known content: identity, splits, exact resume, mixing, bad data."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import tarfile
import zlib

import numpy as np
import pytest
import torch
from shardkit import expected, make_sample, write_set

from shards import format as fmt
from shards.index import ShardSetError
from shards.labels import write_labels
from shards.reader import BadDataError, ShardStream, sample_ranges
from shards.writer import write_index, write_shard

MODS = ("image", "video", "ocr")
NO_DECODE = {m: (lambda s: {}) for m in MODS}  # cheap transforms where only keys and counts matter


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    keys = {m: write_set(root / m, m, n, per) for m, n, per in (("image", 5, 6), ("video", 4, 5), ("ocr", 4, 5))}
    return {m: str(root / m) for m in MODS}, keys


def check_identity(sample):
    """The decoded sample is the one its key names: pixels, positions, text and labels."""
    e = expected(sample["__key__"])
    assert sample["cls"].tolist() == e["cls"].tolist()
    if sample["modality"] in ("image", "ocr"):
        assert np.abs(sample["image"].float().mean((1, 2)).numpy() - e["colour"]).max() < 4
    if sample["modality"] == "ocr":
        assert sample["text"] == e["text"] and len(sample["words"]) == 3  # word<n> hello <key>
        assert sample["words"][1] == zlib.crc32(b"hello") % (1 << 16)
    if sample["modality"] == "video":
        assert sample["patches"].shape == (40, 3, 16, 16) and sample["pos"].dtype == torch.int64
        inner = sample["patches"][:, :, 4:12, 4:12].float().mean((2, 3))  # chroma upsampling blurs MCU borders
        assert np.abs(inner.numpy() - e["patch_colours"]).max() < 4
        assert (sample["pos"].numpy() == e["pos"]).all()


def keys_of(batches):
    return [s["__key__"] for b in batches for s in b]


def test_epochs_split_ranks_and_workers_and_decode_every_sample_exactly(sets):
    folders, keys = sets
    seen, emitted = [], 0
    for rank in range(2):
        stream = ShardStream(folders, seed=3, rank=rank, world_size=2, epochs=2, shuffle_buffer=4)
        for batch in stream.loader(batch_size=3, num_workers=2):
            for sample in batch:
                check_identity(sample)
                seen.append(sample["__key__"])
        emitted += stream.stats()["emitted"]
        assert stream.stats()["bad"] == 0
    everything = sorted(k for ks in keys.values() for k in ks)
    assert sorted(seen) == sorted(everything * 2) and emitted == 140  # each epoch reads every sample once


@pytest.mark.parametrize("rank,epochs,cuts,total", [(0, 2, (3, 18, 34), 76), (1, 2, (7, 25), 64), (1, None, (5,), 80)])
def test_resume_continues_the_same_stream_sample_for_sample(sets, rank, epochs, cuts, total):
    folders, _ = sets
    weights = {"image": 0.5, "video": 0.3, "ocr": 0.2}

    def make():
        return ShardStream(
            folders, weights, seed=7, rank=rank, world_size=2, epochs=epochs, shuffle_buffer=5, transforms=NO_DECODE
        )

    def take(stream, n):
        loader = stream.loader(batch_size=2, num_workers=2)
        out = list(itertools.islice(loader, n))
        loader.close()
        return out

    limit = 40 if epochs is None else 10**6
    full = keys_of(take(make(), limit))
    assert len(full) == total  # rank 0's workers read 22 and 16 samples per epoch: at batch 34 only one is left
    for cut in cuts:
        first = make()
        head = keys_of(take(first, cut))
        state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
        second = make()
        second.load_state_dict(state)
        tail = keys_of(take(second, limit - cut))
        assert head + tail == full, f"cut after batch {cut}"
    with pytest.raises(ValueError, match="saved with 2 DataLoader worker"):
        next(second.loader(batch_size=2, num_workers=3))
    with pytest.raises(ValueError, match="resume state has seed=7, this stream 8"):
        ShardStream(folders, seed=8, world_size=2, epochs=epochs).load_state_dict(state)


def test_mixture_weights_hold_within_binomial_bounds(sets):
    folders, _ = sets
    weights = {"image": 0.6, "video": 0.3, "ocr": 0.1}
    stream = ShardStream(folders, weights, seed=11, epochs=None, transforms=NO_DECODE)
    n = 3000
    counts = dict.fromkeys(MODS, 0)
    for sample in itertools.islice(stream, n):
        counts[sample["modality"]] += 1
    for m, p in weights.items():
        assert abs(counts[m] - n * p) < 4 * math.sqrt(n * p * (1 - p)), (m, counts)


def _corrupt(path, key, field_bytes: bytes):
    """Overwrite the first bytes of one member's payload in place; tar headers stay valid."""
    data = bytearray(path.read_bytes())
    start, end = sample_ranges(str(path))[key]
    at = data.index(field_bytes, start, end)
    data[at : at + 2] = b"\x00\x00"
    path.write_bytes(bytes(data))


def test_bad_samples_are_skipped_counted_and_logged_then_fail_past_the_rate(tmp_path, caplog):
    write_set(tmp_path / "image", "image", 2, 5)
    shard0, shard1 = sorted((tmp_path / "image").glob("*.tar"))
    _corrupt(shard0, "image00_002", b"\xff\xd8")  # the JPEG's start-of-image marker
    data = bytearray(shard1.read_bytes())
    start, _ = sample_ranges(str(shard1))["image01_003"]
    data[start : start + 4] = b"XXXX"  # a broken tar header: the rest of that shard is unreadable
    shard1.write_bytes(bytes(data))
    bare = {"__key__": "video00_000", "json": fmt.encode_json({"modality": "video"})}  # lacks patches and pos
    info = write_shard([bare, make_sample("video00_001", "video")], str(tmp_path / "video" / "t_video-v1-000000.tar"))
    write_index(str(tmp_path / "video"), "t_video", "v1", [info])
    folders = {m: str(tmp_path / m) for m in ("image", "video")}

    stream = ShardStream(folders, seed=0)
    with caplog.at_level(logging.WARNING, logger="shards.reader"):
        got = [s["__key__"] for s in stream]
    assert sorted(got) == [
        "image00_000",
        "image00_001",
        "image00_003",
        "image00_004",
        "image01_000",
        "image01_001",
        "image01_002",
        "video00_001",
    ]
    assert stream.stats() == {"emitted": 8, "seen": 12, "bad": 4}  # the broken shard lost its last 2 samples
    log = caplog.text
    assert "image00_002: UnidentifiedImageError" in log and "video00_000: KeyError" in log
    assert "t_image-v1-000001.tar: unreadable tar after 3 samples (bad checksum in the header at byte" in log

    strict = ShardStream(folders, seed=0, max_bad_rate=0.0, bad_grace=1)
    with pytest.raises(BadDataError, match="3 bad of 10 samples, past the allowed 1"):
        for _ in strict.loader(batch_size=2, num_workers=1):
            pass


def test_sidecar_labels_of_a_bank_version_replace_cls_npy(tmp_path):
    keys = write_set(tmp_path / "ocr", "ocr", 2, 3)
    parts = {}
    for k in keys[:-1]:  # the last sample has no label in this bank: skipped and counted
        parts.setdefault(fmt.shard_name("t_ocr", "v1", int(k[3:5])), {})[k] = [int(k[-1]), 500]
    write_labels(str(tmp_path / "ocr"), "bank-v2", parts)
    stream = ShardStream({"ocr": str(tmp_path / "ocr")}, labels="bank-v2")
    got = {s["__key__"]: s["cls"].tolist() for s in stream}
    assert got == {k: [int(k[-1]), 500] for k in keys[:-1]} and stream.stats()["bad"] == 1
    with pytest.raises(ShardSetError, match="no label set for bank 'bank-v9'"):
        ShardStream({"ocr": str(tmp_path / "ocr")}, labels="bank-v9")


def test_sets_that_cannot_be_read_give_clear_errors(tmp_path):
    with pytest.raises(ShardSetError, match="never published"):
        ShardStream({"image": str(tmp_path / "nothing")})
    write_set(tmp_path / "image", "image", 2, 2)
    index = json.loads((tmp_path / "image" / "index.json").read_text())
    (tmp_path / "image" / index["shards"][1]["name"]).unlink()
    with pytest.raises(ShardSetError, match="listed in the index but missing"):
        list(ShardStream({"image": str(tmp_path / "image")}))
    index["format_version"] = 99
    (tmp_path / "image" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardSetError, match="format_version 99"):
        ShardStream({"image": str(tmp_path / "image")})
    with pytest.raises(ValueError, match="unknown modality"):
        ShardStream({"audio": str(tmp_path / "image")})


def test_a_truncated_shard_counts_every_sample_it_lost(tmp_path):
    write_set(tmp_path / "image", "image", 2, 6)
    shard = sorted((tmp_path / "image").glob("*.tar"))[1]
    start, _ = sample_ranges(str(shard))["image01_002"]
    shard.write_bytes(shard.read_bytes()[: start + 100])  # cut inside the third sample's header
    stream = ShardStream({"image": str(tmp_path / "image")}, transforms=NO_DECODE)
    assert len(list(stream)) == 8
    assert stream.stats() == {"emitted": 8, "seen": 12, "bad": 4}  # samples 3 to 6 of the cut shard


def test_member_names_that_are_paths_never_reach_training(tmp_path):
    folder = tmp_path / "image"
    info = write_shard([make_sample("image00_000", "image")], str(folder / fmt.shard_name("t_image", "v1", 0)))
    evil = folder / fmt.shard_name("t_image", "v1", 1)
    good = make_sample("ok", "image")
    with tarfile.open(evil, "w") as tar:
        for name in ("../../etc/x", "/abs/y", "sub/z"):
            for field in ("json", "jpg"):
                data = good[field]
                member = tarfile.TarInfo(f"{name}.{field}")
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    data = evil.read_bytes()
    entry = {"name": evil.name, "samples": 3, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    write_index(str(folder), "t_image", "v1", [info, entry], {"modality": "image"})
    stream = ShardStream({"image": str(folder)}, transforms=NO_DECODE)
    assert [s["__key__"] for s in stream] == ["image00_000"]
    assert stream.stats()["bad"] == 3
