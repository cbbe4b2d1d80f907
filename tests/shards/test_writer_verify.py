"""The shard contract, the deterministic writer, and verify/inspect catching what is wrong."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest

from shards import fields as shard_fields
from shards import format as fmt
from shards.__main__ import main as shards_main
from shards.index import ShardSetError, read_index
from shards.tools import inspect, verify
from shards.writer import write_index, write_shard


def _sample(key, modality="image", **fields):
    return {"__key__": key, "json": fmt.encode_json({"modality": modality}), **fields}


def _set(folder, n=3):
    samples = [_sample(f"s{i}", jpg=b"\xff\xd8jpeg%d" % i) for i in range(n)]
    info = write_shard(samples, str(folder / fmt.shard_name("t_image", "v1", 0)))
    write_index(str(folder), "t_image", "v1", [info], {"modality": "image"})
    return info


def test_writer_tars_are_the_bytes_webdatasets_tarwriter_writes(tmp_path):
    """The writer builds tars with the standard library (webdataset imports torch, a second of each
    run's start-up); the bytes are webdataset's, so checksums of existing sets stay valid."""
    import webdataset as wds

    samples = [_sample(f"s{i}", jpg=b"\xff\xd8jpeg%d" % i, txt=b"caption %d" % i) for i in range(3)]
    info = write_shard(samples, str(tmp_path / fmt.shard_name("t_image", "v1", 0)))
    theirs = io.BytesIO()
    with wds.TarWriter(theirs, user="ovforge", group="ovforge", mtime=0, encoder=False) as writer:
        for sample in samples:
            writer.write(sample)
    assert (tmp_path / info["name"]).read_bytes() == theirs.getvalue()


def test_writer_is_deterministic_and_index_lists_counts_and_checksums(tmp_path):
    a, b = _set(tmp_path / "a"), _set(tmp_path / "b")
    assert a == b and a["samples"] == 3
    assert (tmp_path / "a" / a["name"]).read_bytes() == (tmp_path / "b" / b["name"]).read_bytes()
    index = read_index(str(tmp_path / "a"))
    assert index["samples"] == 3 and index["shards"][0]["sha256"] == a["sha256"]
    assert not list((tmp_path / "a").glob(".*"))  # no temporary files left behind


def test_the_index_opens_in_wids_without_ovforge(tmp_path):
    """wids (no ovforge code involved) reads the set through its index.json: every sample, in order."""
    import wids
    from shardkit import write_set

    keys = write_set(tmp_path, "image", shards=3, per_shard=4)
    ds = wids.ShardListDataset(str(tmp_path / fmt.INDEX_NAME), cache_dir=str(tmp_path / "cache"))
    assert len(ds) == len(keys) == 12
    assert [ds[i]["__key__"] for i in range(len(ds))] == keys


def test_contract_rejects_bad_samples():
    with pytest.raises(ValueError, match="must match"):
        fmt.check_key("a.b")
    with pytest.raises(ValueError, match="lacks required field"):
        shard_fields.check_sample(_sample("k", modality="ocr", jpg=b"x"))
    with pytest.raises(ValueError, match="unknown field"):
        shard_fields.check_sample(_sample("k", jpg=b"x", bmp=b"x"))
    with pytest.raises(ValueError, match=r"int16 \(K, 3\)"):
        shard_fields.check_sample(
            _sample("k", modality="video", **{"pos.npy": fmt.encode_npy(np.zeros((4, 2), np.int16))})
        )
    with pytest.raises(ValueError, match="look like v1"):
        fmt.shard_name("x", "1", 0)
    assert fmt.parse_shard_name("a_b-c-v2-000017.tar") == {"set": "a_b-c", "version": "v2", "index": 17}


def test_verify_reports_missing_truncated_and_miscounted_shards(tmp_path, capsys):
    info = _set(tmp_path)
    assert verify(str(tmp_path))["ok"]
    assert inspect(str(tmp_path))["sets"][0]["preview"][0]["fields"] == ["jpg", "json"]
    index_path = tmp_path / "index.json"
    index = json.loads(index_path.read_text())
    index["shards"][0]["samples"] = 4
    index_path.write_text(json.dumps(index))
    problems = verify(str(tmp_path))["problems"]
    assert problems == [f"{tmp_path / info['name']}: 3 samples, the index says 4"]
    (tmp_path / info["name"]).unlink()
    assert "listed in the index but missing" in verify(str(tmp_path))["problems"][0]
    assert shards_main(["verify", str(tmp_path)]) == 1
    index["format_version"] = 99
    index_path.write_text(json.dumps(index))
    with pytest.raises(ShardSetError, match="format_version 99"):
        read_index(str(tmp_path))
    assert shards_main(["inspect", str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_verify_rejects_member_names_that_are_paths(tmp_path):
    info = _set(tmp_path)
    shard = tmp_path / info["name"]
    with tarfile.open(shard, "a") as tar:
        for name in ("../../etc/x.jpg", "../../etc/x.json", "/abs/y.jpg", "/abs/y.json"):
            data = b"\xff\xd8jpeg" if name.endswith(".jpg") else fmt.encode_json({"modality": "image"})
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    data = shard.read_bytes()
    write_index(
        str(tmp_path),
        "t_image",
        "v1",
        [{**info, "samples": 5, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}],
        {"modality": "image"},
    )
    problems = verify(str(tmp_path))["problems"]
    assert len(problems) == 2 and all("must match" in p for p in problems)
    assert "'../../etc/x'" in problems[0] and "'/abs/y'" in problems[1]
