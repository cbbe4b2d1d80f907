"""S3 source and sink against a real S3 server (moto) on 127.0.0.1, spoken to over HTTP by boto3."""

from __future__ import annotations

import json

import pytest

import manifests
from curate.config import load_run
from curate.ledger import read_ledger
from curate.pipeline import run
from shards import storage
from shards.__main__ import main as shards_main
from shards.index import ShardSetError, read_index


@pytest.fixture()
def bucket(s3_server):
    client = storage.s3_client()
    name = "ovforge-test"
    client.create_bucket(Bucket=name)
    yield name
    for uri, _ in storage.list_files(f"s3://{name}") if _has_objects(name) else []:
        storage.remove(uri)
    client.delete_bucket(Bucket=name)


def _has_objects(bucket):
    return storage.s3_client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) > 0


def test_storage_round_trip_listing_and_atomic_put(bucket, tmp_path):
    for i in range(3):
        storage.write_bytes(f"s3://{bucket}/a/f{i}.bin", bytes([i]) * (i + 1))
    assert storage.list_files(f"s3://{bucket}/a") == [(f"s3://{bucket}/a/f{i}.bin", i + 1) for i in range(3)]
    assert storage.read_bytes(f"s3://{bucket}/a/f2.bin") == b"\x02\x02\x02"
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (40 * 1024))  # 10 MiB: boto3 uploads it in parts
    storage.put_file(str(big), f"s3://{bucket}/big.bin")
    assert storage.read_bytes(f"s3://{bucket}/big.bin") == bytes(range(256)) * (40 * 1024) and not big.exists()
    assert storage.exists(f"s3://{bucket}/big.bin") and not storage.exists(f"s3://{bucket}/nope")
    with pytest.raises(FileNotFoundError, match="no objects under this prefix"):
        storage.list_files(f"s3://{bucket}/empty/")
    with pytest.raises(FileNotFoundError, match="nope.bin: no such object"):
        storage.read_bytes(f"s3://{bucket}/nope.bin")
    assert storage.try_read(f"s3://{bucket}/nope.bin") is None
    with pytest.raises(ShardSetError, match="no index; the set is missing or was never published"):
        read_index(f"s3://{bucket}/a")


def test_curate_from_s3_into_s3_through_ray(ray_cluster, bucket, demo_corpus, tmp_path, capsys):
    chosen = [
        "images/astronaut.jpg",
        "images/coffee__reencoded.jpg",
        "images/not_an_image.jpg",
        "videos/clip01_h264.mp4",
        "videos/clip19_truncated.mp4",
        "ocr/page03.png",
        "ocr/page03.txt",
    ]
    for rel in chosen:
        storage.write_bytes(f"s3://{bucket}/corpus/{rel}", (demo_corpus / rel).read_bytes())
    manifest = tmp_path / "s3.toml"
    manifest.write_text(
        'base = "' + str(__import__("pathlib").Path("manifests/demo.toml").resolve()) + '"\n'
        'name = "s3"\npartition_size = 2\n'
        f'[output]\ndir = "s3://{bucket}/out"\n'
        f'[[sources]]\nmodality = "image"\nuri = "s3://{bucket}/corpus/images"\n'
        f'[[sources]]\nmodality = "video"\nuri = "s3://{bucket}/corpus/videos"\n'
        f'[[sources]]\nmodality = "ocr"\nuri = "s3://{bucket}/corpus/ocr"\n'
    )
    names = manifests.load_raw("manifests/demo.toml")["stages"]
    k = [s["name"] for s in names].index("concepts")
    cfg, stages = load_run(str(manifest), {f"stages.{k}.k": 2, f"stages.{k}.top_k": 2})  # two images reach it
    summary = run(cfg, stages, progress=False)
    assert (summary["inputs"], summary["kept"], summary["failed"]) == (6, 4, 2)
    ledger = read_ledger(f"s3://{bucket}/out").set_index("uri")
    assert ledger.loc[f"s3://{bucket}/corpus/videos/clip19_truncated.mp4", "status"] == "failed"
    assert ledger.loc[f"s3://{bucket}/corpus/images/not_an_image.jpg", "reason"] == "image_decode/unreadable"
    assert storage.exists(f"s3://{bucket}/out/shards/image/index.json")
    capsys.readouterr()  # the run's own messages
    assert shards_main(["verify", f"s3://{bucket}/out"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["samples"] == 4
    # a tampered tar is caught by verify
    index = json.loads(storage.read_bytes(f"s3://{bucket}/out/shards/image/index.json"))
    first = f"s3://{bucket}/out/shards/image/{index['shards'][0]['name']}"
    storage.write_bytes(first, storage.read_bytes(first)[:-1024])
    assert shards_main(["verify", f"s3://{bucket}/out/shards/image"]) == 1
    assert "sha256 differs" in capsys.readouterr().out


def test_an_s3_object_digest_is_the_digest_of_its_bytes(bucket):
    data = bytes(range(251)) * 20_000  # 5 MB: streamed in 1 MiB reads
    storage.write_bytes(f"s3://{bucket}/d.bin", data)
    assert storage.file_digest(f"s3://{bucket}/d.bin") == storage.digest(data)
    storage.write_bytes(f"s3://{bucket}/empty.bin", b"")
    assert storage.file_digest(f"s3://{bucket}/empty.bin") == storage.digest(b"")


@pytest.mark.parametrize("uri", ["s3:/bucket/out", "S3://bucket/out", "s3://", "s3:///out"])
def test_a_malformed_s3_uri_is_an_error_never_a_local_folder(uri, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "in" / "a.jpg")
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        f'name = "m"\nexecutor = "local"\n[output]\ndir = "{uri}"\n'
        f'[[sources]]\nmodality = "image"\nuri = "{tmp_path / "in"}"\n[[stages]]\nname = "image_decode"\n'
    )
    with pytest.raises(ValueError, match="not an S3 URI|no bucket"):
        run(*load_run(str(manifest)), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "m.toml"]  # no folder named "s3:" anywhere


def test_place_copies_once_and_again_when_the_source_changed(bucket):
    """The set's final step places staged tars under their published names (curate.sink.place_shards)."""
    src, dst = f"s3://{bucket}/_work/part-000003.tar", f"s3://{bucket}/shards/x-v1-000001.tar"
    storage.write_bytes(src, b"first")
    assert storage.place(src, dst) and storage.read_bytes(dst) == b"first"
    assert not storage.place(src, dst)  # already there: no copy
    storage.write_bytes(src, b"second")
    assert storage.place(src, dst) and storage.read_bytes(dst) == b"second"
    assert storage.read_bytes(src) == b"second"  # the staged object stays


def test_an_s3_tar_member_digest_is_the_digest_of_the_member(bucket):
    member = bytes(range(251)) * 12_000  # 3 MB between a header and a tail
    storage.write_bytes(f"s3://{bucket}/t.tar", b"H" * 512 + member + b"T" * 1024)
    uri = storage.member_uri(f"s3://{bucket}/t.tar", 512, 512 + len(member))
    assert storage.file_digest(uri) == storage.digest(member)
