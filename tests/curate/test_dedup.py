"""Deduplication on the demo corpus's recorded duplicate families, MinHash/LSH agreement with
datasketch, Ray grouping against the all-pairs driver reference, and the keep policy in the ledger."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from datasketch import MinHash, MinHashLSH
from dedup_oracle import reference_groups
from PIL import Image

from curate.config import SourceConfig
from curate.dedup import lsh
from curate.dedup.grouping import DedupConfig, band_records, partition_edges, similarity
from curate.dedup.keep import group_table, rank
from curate.dedup.signatures import (
    box_weights,
    image_bits,
    minhash_batch,
    pack_video,
    shingles,
    video_signature,
    word_shingle_hash32,
)
from curate.sources import list_inputs
from curate.stage import DROPPED, FAILED, LIVE, new_rows, run_in_process, to_rows
from curate.stages import build_stage
from manifests import ManifestError

PIPELINE = [
    {"name": "image_decode", "size": 448},
    {"name": "ocr_text"},
    {"name": "video_probe"},
    {"name": "min_resolution", "min_side": 64},
    {"name": "text_length", "min_chars": 20},
    {"name": "dedup_signatures"},
    {"name": "tiny_embed"},
]
ALL_KINDS = ("exact", "pixel", "perceptual", "video", "minhash", "semantic")


def _derive_clip(src: Path, dst: Path, crf: int, skip: int) -> None:
    """Re-encode ``src`` with libx264 at ``crf``, leaving out its first ``skip`` frames."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        stream.codec_context.options = {"crf": str(crf), "preset": "veryfast"}
        for i, frame in enumerate(inp.decode(video=0)):
            if i >= skip:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")))
        out.mux(stream.encode())


@pytest.fixture(scope="module")
def corpus(demo_corpus, tmp_path_factory):
    """Live rows of the demo corpus (plus a re-encode and a trim of clip00) after decode, filters
    and the signature stages, run in process; and the ground-truth duplicate pairs by file name."""
    extra = tmp_path_factory.mktemp("derived-clips")
    src = demo_corpus / "videos" / "clip00_h264.mp4"
    _derive_clip(src, extra / "clip00_reencoded_crf35.mp4", crf=35, skip=0)
    _derive_clip(src, extra / "clip00_trimmed10.mp4", crf=23, skip=10)
    sources = [
        SourceConfig(modality="image", uri=str(demo_corpus / "images")),
        SourceConfig(modality="video", uri=str(demo_corpus / "videos")),
        SourceConfig(modality="video", uri=str(extra)),
        SourceConfig(modality="ocr", uri=str(demo_corpus / "ocr")),
    ]
    items, _ = list_inputs(sources, 16)
    batch = new_rows(items)
    for spec in PIPELINE:
        batch = run_in_process([build_stage(spec)], batch)
    rows = to_rows(batch)
    families = json.loads((demo_corpus / "images" / "duplicates.json").read_text())
    near = json.loads((demo_corpus / "ocr" / "near_duplicates.json").read_text())
    truth = {
        "exact": {frozenset((f[0], f[1])) for f in families.values()},  # the original and its byte copy
        "perceptual": {frozenset(p) for f in families.values() for p in itertools.combinations(f, 2)},
        "minhash": {frozenset(p) for p in near},
        "video": {
            frozenset(p)
            for p in itertools.combinations(
                ["clip00_h264.mp4", "clip00_reencoded_crf35.mp4", "clip00_trimmed10.mp4"], 2
            )
        },
    }
    truth["pixel"] = truth["exact"]
    truth["semantic"] = truth["perceptual"]
    return rows, truth, families, extra


def _name(rows) -> dict:
    return {r["key"]: Path(r["uri"]).name for r in rows}


def _pairs(groups: pd.DataFrame, name: dict) -> set:
    return {
        frozenset((name[a], name[b]))
        for keys in groups.groupby("group")["key"].apply(list)
        for a, b in itertools.combinations(keys, 2)
    }


def test_precision_and_recall_per_kind_on_the_demo_families(corpus):
    all_rows, truth, _, _ = corpus
    rows = [r for r in all_rows if r["status"] == LIVE]
    name = _name(rows)
    scores = {}
    for kind in ALL_KINDS:
        found = _pairs(reference_groups(rows, DedupConfig(kinds=(kind,))), name)
        hits = found & truth[kind]
        scores[kind] = (len(hits) / max(1, len(found)), len(hits) / len(truth[kind]), len(found))
    print("\nkind        precision  recall  pairs found")
    for kind, (p, r, n) in scores.items():
        print(f"{kind:<12}{p:>9.3f}{r:>8.3f}{n:>13}")
    assert scores["exact"][:2] == (1.0, 1.0) and scores["pixel"][:2] == (1.0, 1.0)  # exactly the byte copies
    assert scores["perceptual"][0] == 1.0 and scores["perceptual"][1] >= 0.9  # no pair of distinct photos
    assert scores["minhash"][:2] == (1.0, 1.0)  # the one near-duplicate page pair and no other
    assert scores["video"][:2] == (1.0, 1.0)  # re-encode and trim meet clip00; distinct clips stay apart
    assert scores["semantic"][0] == 1.0 and scores["semantic"][1] >= 0.6  # tiny-image vectors: crops escape

    # the banded path (LSH buckets, then verification) finds what all-pairs verification finds
    cfg = DedupConfig(kinds=("exact", "pixel", "perceptual", "minhash"))
    banded = group_table(partition_edges(band_records(pd.DataFrame(rows), cfg).to_pandas(), cfg).to_pandas())
    as_sets = lambda t: sorted(sorted(g) for g in t.groupby("group")["key"].apply(list))  # noqa: E731
    assert as_sets(banded) == as_sets(reference_groups(rows, cfg))


def test_minhash_signatures_and_lsh_candidates_equal_datasketch(corpus):
    rows = corpus[0]
    texts = [bytes(r["txt"]).decode() for r in rows if r.get("txt")]
    rng = random.Random(7)
    words = [f"w{i}" for i in range(300)]
    for _ in range(200):  # planted near-duplicates: a base text and copies with a few words changed
        base = [rng.choice(words) for _ in range(40)]
        texts.append(" ".join(base))
        for _ in range(rng.randint(0, 2)):
            edited = list(base)
            for i in rng.sample(range(40), rng.randint(1, 6)):
                edited[i] = rng.choice(words)
            texts.append(" ".join(edited))
    texts += ["", "one", "!!!", "Grüße aus Köln, STRASSE straße", "naïve café - déjà vu, naïve", "東京 大阪 京都 東京"]
    texts += ["tab\tand\x00nul inside, twice: tab\tand\x00nul", "snake_case CamelCase 42 x2 __init__", "Two words"]
    sigs, ok = minhash_batch(texts, num_perm=128, seed=1, n=3)
    theirs = MinHash.bulk([shingles(t, 3) for t in texts], num_perm=128, seed=1)
    for t, s, good, m in zip(texts, sigs, ok, theirs, strict=True):
        assert good == bool(shingles(t, 3))
        if good:
            assert np.array_equal(s, m.hashvalues), t
    assert ok.sum() == len(texts) - 2  # "" and "!!!" have no words
    fast, fast_ok = minhash_batch(texts, num_perm=128, seed=1, n=3, hashing="words")
    theirs_fast = MinHash.bulk([shingles(t, 3) for t in texts], num_perm=128, seed=1, hashfunc=word_shingle_hash32)
    assert np.array_equal(fast_ok, ok) and not np.array_equal(fast[ok], sigs[ok])
    assert all(np.array_equal(s, m.hashvalues) for s, m, good in zip(fast, theirs_fast, ok, strict=True) if good)

    bands, rows_per_band = lsh.minhash_params(0.7, 128)
    index = MinHashLSH(threshold=0.7, num_perm=128)
    live = [i for i in range(len(texts)) if ok[i]]
    for i in live:
        index.insert(i, theirs[i])
    expected = {frozenset((i, j)) for i in live for j in index.query(theirs[i]) if i != j}
    keys = lsh.minhash_bands(sigs[live], bands, rows_per_band)
    ours = {frozenset(p) for p in lsh.candidate_pairs(np.array(live), keys).tolist()}
    assert index.b == bands and ours == expected and len(expected) > 50


def _groups_as_sets(table: pd.DataFrame) -> list:
    return sorted((sorted(g["key"]), g["kept"].iloc[0]) for _, g in table.groupby("group"))


def test_the_ray_and_the_local_driver_group_like_the_reference(corpus, ray_cluster, tmp_path):
    """dedup_group over the same live rows as a Ray dataset and as one Arrow table (no Ray): same groups."""
    import pyarrow as pa

    step = build_stage({"name": "dedup_group", "kinds": list(ALL_KINDS), "keep": "resolution"})
    rows = [r for r in corpus[0] if r["status"] == LIVE]
    frame = pd.DataFrame([{c: json.dumps(r[c]) if c == "meta" else r.get(c) for c in step.columns} for r in rows])
    got = {}
    for driver, data in (("ray", ray_cluster.data.from_pandas([frame[:40], frame[40:]])), ("local", frame)):
        run = (
            (lambda ds, workdir: step.run(ds, workdir, len(frame)))
            if driver == "ray"
            else (lambda table, workdir: step.run_local(pa.Table.from_pandas(table), workdir))
        )
        stage = run(data, str(tmp_path / driver))
        got[driver] = _groups_as_sets(pd.read_parquet(stage.table))
    assert got["ray"] == got["local"] == _groups_as_sets(reference_groups(rows, step.config()))
    assert sum(len(keys) for keys, _ in got["local"]) > 20  # members of every kind's groups


def test_a_pipeline_run_groups_like_the_driver_reference_and_the_ledger_names_the_kept(
    corpus, demo_corpus, tmp_path, monkeypatch
):
    """demo.toml + dedup_signatures, tiny_embed, dedup_group: two passes, the grouping in process (local)."""
    from curate.config import load_run
    from curate.ledger import read_ledger
    from curate.pipeline import run

    monkeypatch.setenv("DEMO_CORPUS", str(demo_corpus))
    out = tmp_path / "out"
    cfg, stages = load_run("manifests/demo.toml", {"output.dir": str(out), "executor": "local"})
    step = build_stage({"name": "dedup_group", "kinds": list(ALL_KINDS), "keep": "resolution"})
    stages = stages[: [s.name for s in stages].index("dedup_signatures")]  # decode, codec and filters of the demo
    stages = [*stages, build_stage({"name": "dedup_signatures"}), build_stage({"name": "tiny_embed"}), step]
    summary = run(cfg, stages, progress=False)

    (table,) = out.glob("_work/*dedup_group*/dedup_groups.parquet")
    got = pd.read_parquet(table)
    ledger = read_ledger(str(out))
    demo_keys = set(ledger["key"])
    rows = [r for r in corpus[0] if r["status"] == LIVE and r["key"] in demo_keys]
    ref = reference_groups(rows, step.config())
    assert _groups_as_sets(got) == _groups_as_sets(ref) and len(ref) > 20

    by_name = {Path(u).name: r for u, r in zip(ledger["uri"], ledger.to_dict("records"), strict=True)}
    group_of = dict(zip(got["key"], got["group"], strict=True))
    for family in corpus[2].values():  # the original (most pixels, then most bytes, then first URI) is kept
        original = by_name[family[0]]
        assert original["status"] == "kept"
        for member in family[1:]:
            row = by_name[member]
            assert row["status"] == DROPPED and row["reason"] == "dedup_apply/duplicate"
            assert row["detail"].startswith(f"of {original['key']} (group {group_of[original['key']]}, ")
    dropped = ledger[ledger["reason"] == "dedup_apply/duplicate"]
    assert summary["dropped_by_reason"]["dedup_apply/duplicate"] == len(dropped) == len(got) - got["group"].nunique()
    assert {d.rsplit(", ", 1)[1].rstrip(")") for d in dropped["detail"]} == {"exact", "perceptual", "minhash"}


def test_keyframes_only_video_signature_decodes_intra_frames_and_meets_a_reencode(corpus, demo_corpus):
    src = demo_corpus / "videos" / "clip00_h264.mp4"
    again = corpus[3] / "clip00_reencoded_crf35.mp4"
    sigs = []
    for path in (src, again):
        data = path.read_bytes()
        with av.open(str(path)) as container:
            keyframes = sum(1 for p in container.demux(video=0) if p.is_keyframe and p.size)
        thumbs, ticks, fps, duration = video_signature(data, str(path), keyframes_only=True)
        assert len(ticks) == keyframes and duration == pytest.approx(64 / 24, abs=0.05)
        sigs.append(pack_video(thumbs, ticks, fps))
    _, ok = similarity("video", sigs, DedupConfig())
    assert ok[0, 1]


def test_manifest_entries_and_bad_inputs(corpus, tmp_path):
    step = build_stage({"name": "dedup_group", "kinds": ["exact", "minhash"], "minhash_threshold": 0.8})
    assert step.kinds == ("exact", "minhash") and "embedding" not in step.columns
    assert "embedding" in build_stage({"name": "dedup_group", "kinds": ["semantic"]}).columns
    with pytest.raises(ManifestError, match="unknown dedup kinds"):
        build_stage({"name": "dedup_group", "kinds": ["exact", "phash"]})
    with pytest.raises(ManifestError, match="not one of"):
        build_stage({"name": "dedup_group", "keep": "largest"})

    bad_video = tmp_path / "not_a_clip.mp4"
    bad_video.write_bytes(b"\x00\x00\x00\x18ftypmp42 but nothing after")
    rows = [
        {"key": "v-bad", "uri": str(bad_video), "modality": "video", "partition": 0, "meta": {}},
        {"key": "o-empty", "uri": str(tmp_path / "p.png"), "modality": "ocr", "partition": 0, "meta": {}},
    ]
    batch = new_rows(rows)
    batch["txt"] = np.array([None, b"!!! ..."], dtype=object)
    stage = build_stage({"name": "dedup_signatures", "pixel": False, "perceptual": False})
    out = to_rows(run_in_process([stage], batch))
    # an unreadable container is a VideoError in every stage (curate.media opens every video)
    assert out[0]["status"] == FAILED and out[0]["reason"] == "dedup_signatures/unreadable"
    assert "not a readable video container" in out[0]["detail"] and str(bad_video) in out[0]["detail"]
    assert out[1]["status"] == FAILED  # the page file does not exist: its exact hash cannot be taken
    stage = build_stage({"name": "dedup_signatures", "exact": False, "pixel": False, "perceptual": False})
    out = to_rows(run_in_process([stage], batch))
    assert out[1]["status"] == LIVE and out[1]["minhash"] is None  # no words: no signature, never a group
    assert band_records(pd.DataFrame([out[1]]), DedupConfig()).num_rows == 0

    caption = "a red fox jumps over the lazy dog near the river bank"
    images = new_rows(
        [
            {
                "key": f"i{i}",
                "uri": f"/nonexistent/{i}.jpg",
                "modality": "image",
                "partition": 0,
                "meta": {"caption": caption + (" at dawn" if i else "")},
            }
            for i in range(2)
        ]
    )
    out = to_rows(run_in_process([stage], images))
    theirs = MinHash.bulk([shingles(caption, 3)], num_perm=128, seed=1)[0]
    assert np.array_equal(np.frombuffer(out[0]["minhash"], "<u4"), theirs.hashvalues)  # captions count too
    groups = reference_groups(out, DedupConfig(kinds=("minhash",), minhash_threshold=0.6))
    assert sorted(groups["key"]) == ["i0", "i1"]


def test_dhash_reads_the_horizontal_gradient_of_the_box_averaged_picture():
    x = np.linspace(0, 255, 96)[None, :].repeat(72, 0)  # brightness rises to the right
    y = np.linspace(0, 255, 72)[:, None].repeat(96, 1)  # rises downward only: no horizontal gradient
    pictures = [Image.fromarray(a.astype(np.uint8)) for a in (x, x[:, ::-1], y, np.full((72, 96), 128.0))]
    pictures.append(Image.new("L", (1, 1), 200))  # a 1x1 image is flat too
    dhash = image_bits(pictures)[:, 64:]
    assert dhash[0].all() and not dhash[1:].any()
    a = np.random.default_rng(0).random((32, 32)).astype(np.float32) * 255
    pil = np.asarray(Image.fromarray(a).resize((8, 4), Image.Resampling.BOX))
    assert np.allclose(box_weights(4, 32) @ a @ box_weights(8, 32).T, pil, atol=1e-3)  # integer factors: PIL's box
    w, span = box_weights(9, 32), 32 / 9  # a fractional factor: area means (cell 0 covers pixels 0-2 and 5/9 of 3)
    assert np.allclose(w.sum(1), 1) and np.isclose(w[0] @ np.arange(32), (0 + 1 + 2 + 3 * (span - 3)) / span)


@pytest.mark.parametrize(
    ("rule", "kept"),
    [("resolution", "c-key"), ("longest", "a-key"), ("first", "c-key")],
)
def test_keep_rule_picks_one_member_per_group(rule, kept):
    metas = {
        "a-key": ({"width": 10, "height": 10, "duration": 5.0, "bytes": 9}, "s3://b/z.mp4"),
        "b-key": ({"width": 20, "height": 10, "duration": 1.0, "bytes": 5}, "s3://b/y.mp4"),
        "c-key": ({"width": 20, "height": 10, "duration": 1.0, "bytes": 5}, "s3://b/x.mp4"),
        "d-key": ({"width": 5, "height": 5}, "s3://b/w.jpg"),
        "e-key": ({"width": 5, "height": 5}, "s3://b/v.jpg"),
    }
    edges = []
    for a, b, kind in (("a-key", "b-key", "video"), ("b-key", "c-key", "exact"), ("d-key", "e-key", "pixel")):
        (ra, ua), (rb, ub) = (rank(metas[a][0], rule), metas[a][1]), (rank(metas[b][0], rule), metas[b][1])
        edges.append(
            {
                "a": a,
                "b": b,
                "kind": kind,
                "sim": 1.0,
                "a_r1": ra[0],
                "a_r2": ra[1],
                "a_uri": ua,
                "b_r1": rb[0],
                "b_r2": rb[1],
                "b_uri": ub,
            }
        )
    table = group_table(pd.DataFrame(edges)).set_index("key")
    assert table["group"].nunique() == 2 and table.loc["a-key", "group"] == table.loc["c-key", "group"]
    assert (table.loc[["a-key", "b-key", "c-key"], "kept"] == kept).all() and pd.isna(table.loc["e-key", "dup_of"])
    assert table.loc["d-key", "dup_of"] == "e-key"  # v.jpg comes first: the tie goes to the first source
    assert table.loc["a-key", "kind"] == "video" and table.loc["b-key", "kind"] == "exact"
    assert table.loc["a-key", "size"] == 3


def test_the_band_shuffle_partitions_follow_the_row_count(ray_cluster):
    from curate.cluster import shuffle_partitions
    from curate.dedup.grouping import RECORDS_PER_PARTITION, band_partitions, records_per_row
    from curate.dedup.lsh import minhash_params

    text = DedupConfig(kinds=("minhash",), minhash_threshold=0.7)
    assert records_per_row(text) == minhash_params(0.7, 128)[0] == 14 and shuffle_partitions() == 4
    # a few thousand records (the demo) in one partition; then up to two per CPU; then 1M records each
    assert [band_partitions(text, rows) for rows in (0, 100, 7_142, 7_143, 20_000, 100_000)] == [1, 1, 1, 2, 3, 4]
    assert band_partitions(text, 1_000_000) == -(-1_000_000 * 14 // RECORDS_PER_PARTITION) == 14
    assert band_partitions(text, 100_000_000) == 1400
    assert band_partitions(DedupConfig(kinds=("minhash",), shuffle_partitions=3), 1_000_000) == 3  # as set


def test_partition_edges_come_back_as_one_chunk(corpus):
    """One Arrow chunk per bucket (thousands per partition) once cost the driver reading them 460 MiB at 100k rows."""
    cfg = DedupConfig(kinds=("exact", "pixel", "perceptual", "minhash"))
    frame = pd.DataFrame([{**r, "meta": json.dumps(r["meta"])} for r in corpus[0] if r["status"] == LIVE])
    edges = partition_edges(band_records(frame, cfg).to_pandas(), cfg)
    assert edges.num_rows > 20 and {column.num_chunks for column in edges.columns} == {1}
