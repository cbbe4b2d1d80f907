"""WebDataset shard sources (img2dataset layout): one input per sample, caption and json carried
into the curated shards unchanged, provenance to the byte, and damaged shards failing only the
samples they touch. Served from a folder and from the S3 server, by brace pattern."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pandas as pd
import pytest
import webdataset as wds
from source_kit import img2dataset_corpus, photo, write_shard

from curate.codec import PatchifyConfig, patchify
from curate.config import SourceConfig, load_run
from curate.demo.synthetic_video import make_clip
from curate.ledger import read_ledger
from curate.pipeline import run
from curate.sources import list_inputs
from curate.stage import new_rows, run_in_process, to_rows
from curate.stages.codec import CodecPatchify
from curate.stages.video import VideoProbe
from shards import storage
from shards.format import decode_npy


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("img2dataset") / "shards"
    return root, img2dataset_corpus(root)


def _curate(uri: str, out, stages: str = "", executor: str = "local") -> dict:
    manifest = out.parent / f"{out.name}.toml"
    manifest.write_text(
        f'name = "wds"\nexecutor = "{executor}"\npartition_size = 4\n[output]\ndir = "{out}"\n'
        f'[[sources]]\nmodality = "image"\nformat = "webdataset"\nuri = "{uri}"\n'
        '[[stages]]\nname = "image_decode"\nsize = 64\n' + stages
    )
    cfg, built = load_run(str(manifest))
    return run(cfg, built, progress=False, report=False)


def _shard_samples(out) -> dict[str, dict]:
    tars = sorted(str(p) for p in (out / "shards/image").glob("*.tar"))
    return {s["__key__"]: s for s in wds.WebDataset(tars, shardshuffle=False)}


def _check_run(summary: dict, out, truth: dict, tar_root: str) -> None:
    assert summary["inputs"] == 10 == summary["kept"] + summary["dropped"] + summary["failed"]
    assert (summary["kept"], summary["failed"]) == (len(truth["kept"]), len(truth["failed"]))
    ledger = read_ledger(str(out))
    samples = _shard_samples(out)
    origin = {}
    for key, s in samples.items():
        meta = json.loads(s["json"])
        prov = meta["provenance"]
        name = prov["member"].split(".")[0]
        origin[name] = key
        expected = truth["samples"][name]
        assert prov["shard"] == f"{tar_root}/{name[:5]}.tar"
        assert meta["source_meta"] == expected["json"]  # the sample's .json, unchanged
        if expected["caption"] is None:
            assert "txt" not in s and "caption" not in meta
        else:
            assert s["txt"].decode() == expected["caption"]  # the caption, byte for byte
        member = storage.read_range(prov["shard"], prov["offset"], prov["data_offset"] + prov["size"])
        header = tarfile.TarInfo.frombuf(member[:512], "utf-8", "surrogateescape")
        assert header.name == prov["member"] and member[prov["data_offset"] - prov["offset"] :] == expected["image"]
    assert sorted(origin) == truth["kept"]
    failed = ledger[ledger["status"] == "failed"]
    assert dict(zip(failed["key"].str.split("-").str[0], failed["reason"], strict=True)) == truth["failed"]
    assert failed["detail"].str.len().min() > 10  # each with its reason
    hashed = ledger[ledger["meta"].str.contains("caption_blake3")]
    for meta in hashed["meta"]:
        m = json.loads(meta)
        caption = truth["samples"][m["source_meta"]["key"]]["caption"]
        assert "caption" not in m and m["caption_chars"] == len(caption)
        assert m["caption_blake3"] == storage.digest(caption.encode())


def test_img2dataset_shards_from_a_folder(corpus, tmp_path):
    root, truth = corpus
    out = tmp_path / "out"
    summary = _curate(str(root), out)
    _check_run(summary, out, truth, str(root))
    again = _curate(str(root), out)  # same partitions: every one is found done
    assert again["kept"] == summary["kept"]


def test_img2dataset_shards_from_s3_by_brace_pattern_through_ray(corpus, tmp_path, s3_server, ray_cluster):
    """Listing tasks and stages run on Ray workers, which read the tars' members by ranged GETs."""
    root, truth = corpus
    s3 = storage.s3_client()
    s3.create_bucket(Bucket="laion")
    for path in sorted(root.iterdir()):
        s3.put_object(Bucket="laion", Key=f"part/{path.name}", Body=path.read_bytes())
    out = tmp_path / "out"
    summary = _curate("s3://laion/part/{00000..00001}.tar", out, executor="ray")
    _check_run(summary, out, truth, "s3://laion/part")


def test_caption_filters_apply_to_image_captions(corpus, tmp_path):
    """text_length measures captions (a missing one is empty); MinHash signs them for near-duplicates."""
    root, truth = corpus
    out = tmp_path / "out"
    stages = '[[stages]]\nname = "text_length"\nmin_chars = 5\n'
    stages += '[[stages]]\nname = "dedup_signatures"\nexact = false\npixel = false\nperceptual = false\n'
    summary = _curate(str(root), out, stages)
    assert summary["dropped_by_reason"] == {"text_length/too_little_text": 1}  # 000000001 has no .txt
    ledger = read_ledger(str(out))
    dropped = ledger[ledger["status"] == "dropped"]
    assert [json.loads(m)["source_meta"]["key"] for m in dropped["meta"]] == ["000000001"]
    kept = [json.loads(m) for m in ledger[ledger["status"] == "kept"]["meta"]]
    assert len(kept) == 6 and all(m["dedup"]["minhash"] == "sha1/3-gram/seed1" for m in kept)  # captions signed


def test_near_duplicate_captions_of_different_pictures_are_grouped(tmp_path, ray_cluster):
    """MinHash dedup on captions alone: two photos whose captions differ by one word are duplicates
    (the larger picture kept), a third caption and a sample without one are not."""
    fox = "a red fox jumps over the lazy dog near the river bank at dawn"
    captions = [fox, fox + " today", "two dogs playing in the snow", None]
    samples = [{"image": photo(n, size=72 + 8 * n), "caption": c, "json": {"n": n}} for n, c in enumerate(captions)]
    write_shard(tmp_path / "shards" / "00000.tar", 0, samples)
    stages = '[[stages]]\nname = "dedup_signatures"\nexact = false\npixel = false\nperceptual = false\n'
    stages += '[[stages]]\nname = "dedup_group"\nkinds = ["minhash"]\n'
    out = tmp_path / "out"
    summary = _curate(str(tmp_path / "shards"), out, stages)
    assert (summary["kept"], summary["dropped_by_reason"]) == (3, {"dedup_apply/duplicate": 1})
    ledger = read_ledger(str(out))
    n_of = {k: json.loads(m)["source_meta"]["n"] for k, m in zip(ledger["key"], ledger["meta"], strict=True)}
    dropped = json.loads(ledger[ledger["status"] == "dropped"]["meta"].iloc[0])
    assert (dropped["source_meta"]["n"], n_of[dropped["dup_of"]], dropped["dup_kind"]) == (0, 1, "minhash")


def test_a_corrupt_header_fails_the_samples_beside_it(tmp_path):
    """tarfile skips blocks whose header does not parse; the samples bordering the gap fail with it,
    the rest of the shard is listed."""
    samples = [{"image": photo(n), "caption": f"c{n}", "json": {}} for n in range(5)]
    write_shard(tmp_path / "00000.tar", 0, samples)
    data = bytearray((tmp_path / "00000.tar").read_bytes())
    with tarfile.open(tmp_path / "00000.tar") as tar:
        bad = tar.getmember("000000002.txt").offset
    data[bad + 148 : bad + 156] = b"0000000\0"  # a wrong checksum
    (tmp_path / "00000.tar").write_bytes(bytes(data))
    items, _ = list_inputs([SourceConfig(modality="image", uri=str(tmp_path), format="webdataset")], 8)
    by_name = {it["meta"]["provenance"]["offset"]: it for it in items}
    errors = sorted((it["error"][0], it["key"][:9]) for it in items if it.get("error"))
    assert len(items) == 5 and len(by_name) == 5
    assert errors == [("source/corrupt_member", "000000002")]
    assert "unreadable" in next(it for it in items if it.get("error"))["error"][1]


def test_two_crawls_concatenated_into_one_tar_are_all_inputs(tmp_path):
    """``cat`` of two shards both holding 000000000..2: the first tar's end-of-archive zeros are
    padding, not damage, and each crawl's sample is an input of its own, with its own key and caption."""
    crawls = {}
    for crawl in ("a", "b"):
        samples = [
            {"image": photo(n + 10 * len(crawls)), "caption": f"crawl {crawl} {n}", "json": {}} for n in range(3)
        ]
        write_shard(tmp_path / crawl / "00000.tar", 0, samples)
        crawls[crawl] = samples
    (tmp_path / "both").mkdir()
    (tmp_path / "both" / "00000.tar").write_bytes(b"".join((tmp_path / c / "00000.tar").read_bytes() for c in "ab"))
    out = tmp_path / "out"
    summary = _curate(str(tmp_path / "both"), out)
    assert (summary["inputs"], summary["kept"]) == (6, 6)
    by_caption = {s["txt"].decode(): json.loads(s["json"])["provenance"] for s in _shard_samples(out).values()}
    assert sorted(by_caption) == sorted(s["caption"] for c in "ab" for s in crawls[c])
    for c in "ab":
        for n, sample in enumerate(crawls[c]):
            prov = by_caption[sample["caption"]]
            assert prov["member"] == f"00000000{n}.jpg"
            image = storage.read_range(prov["shard"], prov["data_offset"], prov["data_offset"] + prov["size"])
            assert image == sample["image"]  # the right crawl's picture


def test_a_file_that_is_not_a_tar_is_a_failed_input(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"not a tar at all" * 100)
    (tmp_path / "00001.parquet").write_bytes(b"not parquet either")
    (tmp_path / "00001.tar").write_bytes(b"")
    items, _ = list_inputs([SourceConfig(modality="image", uri=str(tmp_path), format="webdataset")], 8)
    assert [(it["uri"], it["error"][0]) for it in items] == [
        (str(tmp_path / "00000.tar"), "source/unreadable_tar"),
        (str(tmp_path / "00001.tar"), "source/unreadable_tar"),
    ]


def test_listing_reads_only_headers_and_small_members(corpus):
    root, truth = corpus
    items, passed = list_inputs([SourceConfig(modality="image", uri=str(root / "00000.tar"), format="webdataset")], 4)
    assert not passed and len(items) == 6 and not any(it.get("error") for it in items)
    for it in items:
        file, start, end = storage.split_member(it["uri"])
        name = it["meta"]["provenance"]["member"].split(".")[0]
        assert file == str(root / "00000.tar") and storage.read_bytes(it["uri"]) == truth["samples"][name]["image"]
        assert it["meta"]["caption"] == truth["samples"][name]["caption"]
    assert pd.Series([it["partition"] for it in items]).tolist() == [0, 0, 0, 0, 1, 1]
    with pytest.raises(EOFError, match="ends after"):
        storage.read_bytes(storage.member_uri(str(root / "00001.tar"), 0, 10**9))


def test_video_members_are_patchified_in_place_locally_and_on_s3(tmp_path, s3_server):
    """Clips with a known moving object packed in a shard (``{key}.mp4`` + caption + json) beside a
    truncated one: each clip is demuxed where it lies in the tar (a seek locally, ranged GETs on S3)
    and gives exactly the tokens of the same clip read as a file of its own, on the moving object."""
    specs = [{"pan": (2, 1), "seed": 2}, {"seed": 1}, {"seed": 3}]
    clips, masks = [], []
    for n, spec in enumerate(specs):
        path = tmp_path / "clips" / f"{n}.mp4"
        path.parent.mkdir(exist_ok=True)
        masks.append(make_clip(path, **spec))
        clips.append(path.read_bytes())
    clips[2] = clips[2][: len(clips[2]) // 3]  # a clip cut short inside the tar: what decodes, or a reason
    samples = [{"image": c, "ext": "mp4", "caption": f"clip {n}", "json": {"n": n}} for n, c in enumerate(clips)]
    write_shard(tmp_path / "shards" / "00000.tar", 0, samples)
    s3 = storage.s3_client()
    s3.create_bucket(Bucket="videos")
    s3.put_object(Bucket="videos", Key="00000.tar", Body=(tmp_path / "shards" / "00000.tar").read_bytes())
    stages = [VideoProbe(), CodecPatchify(budget=0.125)]
    alone = [patchify(str(tmp_path / "clips" / f"{n}.mp4"), PatchifyConfig(budget=0.125)) for n in range(2)]
    for uri in (str(tmp_path / "shards"), "s3://videos/00000.tar"):
        items, _ = list_inputs([SourceConfig(modality="video", uri=uri, format="webdataset")], 8)
        assert [storage.split_member(it["uri"]) is not None for it in items] == [True] * 3
        rows = sorted(to_rows(run_in_process(stages, new_rows(items))), key=lambda r: r["meta"]["source_meta"]["n"])
        for n in range(2):
            row, mask = rows[n], masks[n]
            assert row["status"] == "live" and row["meta"]["caption"] == f"clip {n}"
            assert np.array_equal(decode_npy(row["pos_npy"]), alone[n].positions)
            t, h, w = mask.shape
            share = mask.reshape(t, h // 16, 16, w // 16, 16).mean(axis=(2, 4)) >= 0.5  # object patches
            kept = np.zeros(share.shape, bool)
            kept[tuple(decode_npy(row["pos_npy"]).T)] = True
            assert (kept & share).sum() / share.sum() >= 0.9
        assert rows[2]["status"] == "failed" and rows[2]["reason"].startswith("video_probe/")
    manifest = tmp_path / "run.toml"  # a run: the caption is each clip sample's txt
    manifest.write_text(
        f'name = "v"\nexecutor = "local"\n[output]\ndir = "{tmp_path / "out"}"\n[[sources]]\nmodality = "video"\n'
        f'format = "webdataset"\nuri = "{tmp_path / "shards"}"\n[[stages]]\nname = "video_probe"\n'
        '[[stages]]\nname = "codec_patchify"\nbudget = 0.125\n'
    )
    summary = run(*load_run(str(manifest)), progress=False, report=False)
    assert (summary["kept"], summary["failed"]) == (2, 1)
    tars = sorted(str(p) for p in (tmp_path / "out" / "shards" / "video").glob("*.tar"))
    got = {s["txt"].decode(): s["pos.npy"] for s in wds.WebDataset(tars, shardshuffle=False)}
    assert sorted(got) == ["clip 0", "clip 1"]
    assert all(np.array_equal(decode_npy(got[f"clip {n}"]), alone[n].positions) for n in range(2))
