"""The demo corpus curated end to end: shards that webdataset and wids read, a ledger that accounts for
every input with the outcome the corpus's ground truth names, and exact resume."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import webdataset as wds

from curate.__main__ import main as curate_main
from curate.config import load_run
from curate.ledger import read_ledger
from curate.pipeline import run
from curate.sources import SourceError
from curate.stage import GlobalStep, Stage
from manifests import ManifestError
from shards import storage


def _run(demo_corpus, out, monkeypatch, **overrides):
    monkeypatch.setenv("DEMO_CORPUS", str(demo_corpus))
    cfg, stages = load_run("manifests/demo.toml", {"output.dir": str(out), **overrides})
    return run(cfg, stages, progress=False)


def _checksums(out: Path) -> dict:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.tar"))}


@pytest.fixture(scope="module")
def ray_demo(ray_cluster, demo_corpus, tmp_path_factory):
    """The demo on Ray with several partitions to a Ray Data task (one task per CPU instead of four), so
    the comparisons with the local executor below cover tasks that carry more than one partition."""
    from curate import pipeline

    out = tmp_path_factory.mktemp("ray-demo")
    mp = pytest.MonkeyPatch()
    mp.setattr(pipeline, "TASKS_PER_CPU", 1)
    for name in ("_run_ray_tasks", "_run_ray_data"):  # which way each pass went, for the test below
        mp.setattr(pipeline, name, _recorded(name, getattr(pipeline, name)))
    summary = _run(demo_corpus, out, mp)
    assert pipeline.partitions_per_task(len(list((out / "_partitions").iterdir()))) >= 2
    mp.undo()
    return out, summary


PASSES: list[tuple[str, list[str]]] = []  # (the function that ran a pass on Ray, its stages)


def _recorded(name, run_pass):
    def run(source, stages, *args):
        PASSES.append((name, [s.name for s in stages]))
        return run_pass(source, stages, *args)

    return run


def test_passes_of_task_stages_run_as_ray_tasks_and_the_rest_through_ray_data(ray_demo):
    """The demo exercises both (its byte-for-byte comparison with the local executor covers both)."""
    ways: dict[str, list[str]] = {}
    for name, stages in PASSES:
        ways.setdefault(name, []).extend(stages)
    assert "codec_patchify" in ways["_run_ray_tasks"] and "dedup_signatures" in ways["_run_ray_tasks"]
    assert "ocr" in ways["_run_ray_data"]


def test_every_input_is_accounted_with_the_ground_truth_outcome(ray_demo, demo_corpus):
    out, summary = ray_demo
    ledger = read_ledger(str(out))
    inputs = [
        p
        for kind in ("images", "videos", "ocr")
        for p in (demo_corpus / kind).iterdir()
        if p.suffix in (".jpg", ".png", ".mp4")
    ]
    assert len(ledger) == summary["inputs"] == len(inputs)
    assert summary["kept"] + summary["dropped"] + summary["failed"] == summary["inputs"]
    by_file = {
        Path(u).parent.name + "/" + Path(u).name: row
        for u, row in zip(ledger["uri"], ledger.to_dict("records"), strict=True)
    }
    for name, outcome in json.loads((demo_corpus / "truth.json").read_text()).items():
        row = by_file[name]
        status, _, reason = outcome.partition(": ")
        assert row["status"] == status, (name, row)
        assert row["reason"].split("/")[0] in reason, (name, row)
    truncated = by_file["videos/clip19_truncated.mp4"]
    assert truncated["status"] == "failed" and "truncated" in truncated["detail"]
    assert set(ledger.loc[ledger.status == "kept", "shard"].str.split("/").str[0]) == {"image", "video", "ocr"}
    assert (out / "manifest.resolved.toml").read_text().startswith("# git revision: ")


def test_shards_read_back_with_webdataset_and_wids(ray_demo):
    import wids
    from braceexpand import braceexpand

    out, summary = ray_demo
    seen = 0
    for modality in ("image", "video", "ocr"):
        index = json.loads((out / "shards" / modality / "index.json").read_text())
        urls = [str(out / "shards" / modality / s["name"]) for s in index["shards"]]
        samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
        assert len(samples) == index["samples"]
        for sample in samples:
            assert sample["json"]["modality"] == modality and sample["json"]["key"] == sample["__key__"]
            if modality == "ocr":  # the page's text is exactly the text it was rendered from
                assert sample["txt"] == Path(sample["json"]["source"]).with_suffix(".txt").read_text()
            if modality != "video":
                assert max(sample["jpg"].size) <= max(sample["json"]["width"], sample["json"]["height"])
                assert min(sample["jpg"].size) == min(448, sample["json"]["width"], sample["json"]["height"])
        # shard numbers are contiguous within a set: one brace URL names every shard
        prefix = urls[0].removesuffix("000000.tar")
        brace = f"{prefix}{{000000..{len(urls) - 1:06d}}}.tar"
        assert list(braceexpand(brace)) == urls
        assert len(list(wds.WebDataset(brace, shardshuffle=False))) == index["samples"]
        ds = wids.ShardListDataset(
            [{"url": u, "nsamples": s["samples"]} for u, s in zip(urls, index["shards"], strict=True)]
        )
        assert len(ds) == index["samples"] and ds[len(ds) - 1]["__key__"] == samples[-1]["__key__"]
        seen += len(samples)
    assert seen == summary["kept"]


def test_local_executor_matches_ray_and_resume_redoes_only_what_is_missing(
    ray_demo, demo_local, demo_corpus, tmp_path, monkeypatch
):
    ray_out, ray_summary = ray_demo
    shutil.copytree(demo_local, tmp_path, dirs_exist_ok=True)  # the local executor's run, to change here
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert _checksums(tmp_path) == _checksums(ray_out)  # same bytes from either executor, labels included
    assert {k: summary[k] for k in ("kept", "dropped", "failed")} == {
        k: ray_summary[k] for k in ("kept", "dropped", "failed")
    }
    ledger = read_ledger(str(tmp_path)).sort_values("key").reset_index(drop=True)
    local_tars = _checksums(tmp_path)

    # a partition that never finished (marker and shards gone) is redone; the rest is skipped
    (tmp_path / "_partitions" / "000001.json").unlink()
    for tar in tmp_path.rglob("*-000001.tar"):
        tar.unlink()
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "_partitions").iterdir()}
    _run(demo_corpus, tmp_path, monkeypatch, executor="local")
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert _checksums(tmp_path) == local_tars
    pd.testing.assert_frame_equal(read_ledger(str(tmp_path)).sort_values("key").reset_index(drop=True), ledger)


def test_bad_sources_and_manifests_give_clear_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEMO_CORPUS", str(tmp_path / "missing"))
    with pytest.raises(SourceError, match="missing/images: no such file or folder"):
        _run(tmp_path / "missing", tmp_path / "out", monkeypatch)
    for kind in ("images", "videos", "ocr"):
        (tmp_path / "empty" / kind).mkdir(parents=True)
    with pytest.raises(SourceError, match=r"empty/images: no files ending in \.jpg"):
        _run(tmp_path / "empty", tmp_path / "out", monkeypatch)
    bad = tmp_path / "bad.toml"
    bad.write_text('base = "' + str(Path("manifests/demo.toml").resolve()) + '"\npartition_size = "many"\n')
    with pytest.raises(ManifestError, match="bad.toml: partition_size: expected int, got string"):
        load_run(str(bad))
    assert curate_main(["run", str(bad)]) == 2
    assert "partition_size: expected int" in capsys.readouterr().err


def test_jsonl_ocr_source(tmp_path, demo_corpus, monkeypatch):
    pages = tmp_path / "pages"
    pages.mkdir()
    rows = []
    for i in range(3):
        (pages / f"p{i}.png").write_bytes((demo_corpus / "ocr" / f"page{i:02d}.png").read_bytes())
        rows.append({"image": f"p{i}.png", "text": (demo_corpus / "ocr" / f"page{i:02d}.txt").read_text()})
    (pages / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        f'name = "j"\nexecutor = "local"\n[output]\ndir = "{tmp_path / "out"}"\n'
        f'[[sources]]\nmodality = "ocr"\nuri = "{pages / "rows.jsonl"}"\n'
        '[[stages]]\nname = "image_decode"\n[[stages]]\nname = "ocr_text"\n'
    )
    cfg, stages = load_run(str(manifest))
    summary = run(cfg, stages, progress=False)
    assert summary["kept"] == 3
    texts = sorted(
        s["txt"]
        for s in wds.WebDataset(str(tmp_path / "out/shards/ocr/corpus_ocr-v1-000000.tar"), shardshuffle=False).decode()
    )
    assert texts == sorted(r["text"] for r in rows)
    lines = [json.dumps(rows[0]).encode(), b'{"image": "p1.png"}', b"{not json", b'{"image": "p2.png", "text": "\xff"}']
    (pages / "rows.jsonl").write_bytes(b"\n".join([*lines, json.dumps(rows[2]).encode()]) + b"\n")
    summary = run(cfg, stages, progress=False, force=True)
    assert (summary["kept"], summary["failed"], summary["failed_by_reason"]) == (2, 3, {"source/bad_jsonl_row": 3})
    bad = read_ledger(str(tmp_path / "out")).query("status == 'failed'").sort_values("uri")
    assert bad["uri"].str.endswith(("rows.jsonl#2", "rows.jsonl#3", "rows.jsonl#4")).all()
    assert "UnicodeDecodeError" in bad["detail"].iloc[2]
    assert "rows.jsonl:2: expected" in bad["detail"].iloc[0] and "KeyError('text')" in bad["detail"].iloc[0]


@dataclasses.dataclass(frozen=True)
class _CountSizes(GlobalStep):
    """Test step: counts live rows per modality (through Ray, or in process), hands the counts to the next pass."""

    name = "count_sizes"
    columns = ("key", "modality")

    def run(self, ds, workdir, rows):
        return self._annotate({r["modality"]: r["count()"] for r in ds.groupby("modality").count().take_all()}, workdir)

    def run_local(self, table, workdir):
        return self._annotate(dict(Counter(table["modality"].to_pylist())), workdir)

    def _annotate(self, counts, workdir):
        storage.write_bytes(storage.join(workdir, "counts.json"), json.dumps(counts).encode())
        return _Annotate(counts_uri=storage.join(workdir, "counts.json"))


@dataclasses.dataclass(frozen=True)
class _Annotate(Stage):
    name = "annotate"
    counts_uri: str = ""

    def setup(self):
        self.hold("counts", json.loads(storage.read_bytes(self.counts_uri)))

    def process_row(self, row):
        row["meta"]["live_in_modality"] = self.counts[row["modality"]]
        return row


def test_global_step_splits_passes_sees_every_partition_and_resumes(ray_cluster, demo_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("DEMO_CORPUS", str(demo_corpus))
    cfg, stages = load_run("manifests/demo.toml", {"output.dir": str(tmp_path), "executor": "local"})
    names = [s.name for s in stages]
    stages = (
        stages[: names.index("duration")]
        + [_CountSizes()]
        + stages[names.index("duration") : names.index("dedup_signatures")]
    )
    summary = run(cfg, stages, progress=False)
    live = {m: summary["kept_by_modality"][m] for m in ("image", "ocr")}
    live["video"] = summary["kept_by_modality"]["video"]  # the last filter (duration) drops none
    samples = list(wds.WebDataset(sorted(str(p) for p in tmp_path.rglob("*.tar")), shardshuffle=False).decode())
    assert {s["json"]["modality"]: s["json"]["live_in_modality"] for s in samples} == live
    # lose one final partition: the rerun redoes only it, from the kept pass-1 rows
    (tmp_path / "_partitions" / "000002.json").unlink()
    pass1 = {p: p.stat().st_mtime_ns for p in (tmp_path / "_work" / "pass0").iterdir()}
    again = run(cfg, stages, progress=False)
    assert {p: p.stat().st_mtime_ns for p in pass1} == pass1 and again["kept"] == summary["kept"]


def test_the_dedup_shuffle_is_sized_from_the_pass_markers_row_count(ray_demo):
    from curate.dedup.grouping import band_partitions
    from curate.stages import build_stage

    out, _ = ray_demo
    (folder,) = (out / "_work").glob("step*-dedup_group")
    k = int(folder.name[len("step") :].split("-")[0])
    files = sorted((out / "_work" / f"pass{k}").glob("*.parquet"))
    live = sum(pd.read_parquet(f, columns=["status"])["status"].eq("live").sum() for f in files)
    markers = [json.loads(f.with_suffix(".done").read_text()) for f in files]
    summary = json.loads((folder / "dedup_summary.json").read_text())
    assert summary["rows"] == sum(m["rows"] for m in markers) == live > 50
    cfg = build_stage({"name": "dedup_group", **summary["config"]}).config()
    assert summary["band_partitions"] == band_partitions(cfg, live)


def test_report_is_self_contained_and_names_every_failure(ray_demo):
    out, summary = ray_demo
    page = (out / "report.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page  # nothing fetched
    assert page.count("data:image/png;base64,") >= 5
    for section in ("Outcomes by modality", "Per-stage throughput and time", "Video codec tokens", "Duplicate groups"):
        assert f"<h2>{section}</h2>" in page
    ledger = read_ledger(str(out))
    for uri in ledger.loc[ledger.status != "kept", "uri"]:
        assert uri in page
    metas = ledger["meta"].map(json.loads)
    groups = metas.map(lambda m: m.get("dedup_group")).dropna()
    duplicated = groups[groups.duplicated(keep=False)]
    assert duplicated.nunique() >= 1 and f"<p>{duplicated.nunique()} groups; sizes:" in page
    section = page.split("<h2>Duplicate groups</h2>")[1].split("<h2>")[0]
    for key in ledger.loc[duplicated.index, "key"]:  # every member of every group, kept and dropped
        assert key in section
    assert section.count("data:image/jpeg;base64,") == len(duplicated)  # a thumbnail of each, from its source
    assert section.count("duplicate of ") == (ledger.loc[duplicated.index, "status"] == "dropped").sum()
    assert "codec_patchify" in summary["stages"] and summary["stages"]["codec_patchify"]["rows"] == 19


def test_hf_datasets_reads_every_demo_set(ray_demo, tmp_path):
    """HF ``datasets`` infers one Arrow schema from each set's samples (OCR lines are fixed-type records)."""
    import datasets

    out, _ = ray_demo
    for folder in sorted((out / "shards").iterdir()):
        index = json.loads((folder / "index.json").read_text())
        tars = [str(folder / s["name"]) for s in index["shards"]]
        ds = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train", cache_dir=str(tmp_path))
        assert len(ds) == index["samples"] and "json" in ds.features, folder.name


def test_ocr_reads_the_demo_pages_and_labels_them_with_words(ray_demo):
    """Each page's OCR'd words against the text it was rendered from; word ids are real, never padding."""
    out, _ = ray_demo
    samples = list(wds.WebDataset(sorted(str(p) for p in (out / "shards" / "ocr").glob("*.tar")), shardshuffle=False))
    assert len(samples) == 29
    found = truth = 0
    for sample in samples:
        meta = json.loads(sample["json"])
        read = Counter(" ".join(line["text"] for line in meta["ocr"]["lines"]).lower().split())
        words = Counter(sample["txt"].decode().split())
        found += sum((read & words).values())
        truth += sum(words.values())
        ids = np.load(io.BytesIO(sample["words.npy"]))
        assert ids.dtype == np.int32 and 0 < len(ids) <= 100 and len(set(ids.tolist())) == len(ids)
    assert found / truth >= 0.97, found / truth
