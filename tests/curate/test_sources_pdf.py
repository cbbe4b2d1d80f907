"""PDF sources: every page an input keyed by its page number, its text layer its transcript, rendered
at the source's DPI; OCR compared with the text layer; a corrupt page or an unreadable PDF fails alone.
Ground truth: PDFs written here with known text (with and without a text layer)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest
import webdataset as wds
from pdf_kit import corrupt_page, scan_pdf, text_pdf

from curate.config import OutputConfig, RunConfig, SourceConfig, load_run
from curate.ledger import read_ledger
from curate.listing import list_run, partition_items
from curate.pictures import read_picture
from curate.pipeline import run
from curate.sink import keys_digest
from curate.sources import list_inputs, make_key
from curate.stage import new_rows, run_in_process
from curate.stages.ocr import OcrFilter

BOOK = ["the quick brown fox\njumps over the lazy dog", "pack my box with\nfive dozen liquor jugs"]
HIDDEN = ("sphinx of black quartz", "judge my vow")  # shows the first, its text layer says the second
SCAN = ["how vexingly quick\ndaft zebras jump", "the five boxing wizards\njump quickly"]


def _corpus(root):
    (root / "scans").mkdir(parents=True)
    book = text_pdf(root / "book.pdf", [*BOOK, HIDDEN])
    scan = scan_pdf(root / "scans" / "scan.pdf", SCAN)
    (root / "damaged.pdf").write_bytes(corrupt_page(book.read_bytes(), 2))
    (root / "junk.pdf").write_bytes(b"%PDF-1.7\nnot a document")
    (root / "notes.txt").write_text("not a pdf")
    return book, scan


def test_pages_are_inputs_keyed_by_page_number_with_their_text_layer(tmp_path):
    book, scan = _corpus(tmp_path / "docs")
    items, skipped = list_inputs([SourceConfig(modality="ocr", uri=str(tmp_path / "docs"), format="pdf", dpi=200)], 64)
    by_key = {it["key"]: it for it in items}
    assert skipped == Counter({".txt": 1})
    book_keys = [f"{make_key(str(book))}-p{n}" for n in (1, 2, 3)]
    scan_keys = [f"{make_key(str(scan))}-p{n}" for n in (1, 2)]
    assert set(book_keys + scan_keys) <= set(by_key) and len(items) == 3 + 2 + 3 + 1
    for n, key in enumerate(book_keys, 1):
        it = by_key[key]
        assert it["uri"] == str(book) and "error" not in it
        assert it["meta"]["pdf"] == {"page": n, "pages": 3, "dpi": 200.0, "size_pt": [288.0, 144.0], "text_layer": True}
        assert it["meta"]["provenance"] == {"source": str(tmp_path / "docs"), "file": str(book), "page": n}
    assert [by_key[k]["meta"]["text"] for k in book_keys] == [*BOOK, HIDDEN[1]]
    for key in scan_keys:  # a scan: pages without a text layer, so without a transcript
        assert by_key[key]["meta"]["pdf"]["text_layer"] is False and "text" not in by_key[key]["meta"]
    img, facts = read_picture(str(book), by_key[book_keys[0]]["meta"])
    assert img.size == (800, 400) and (facts["width"], facts["height"], facts["format"]) == (800, 400, "pdf")
    small, facts = read_picture(str(book), by_key[book_keys[0]]["meta"], min_side=100)
    assert min(small.size) >= 100 and max(small.size) < 800 and facts["size"] == (800, 400)  # drawn small, not cut


def test_a_corrupt_page_fails_alone_and_an_unreadable_pdf_fails_whole(tmp_path):
    _corpus(tmp_path / "docs")
    items, _ = list_inputs([SourceConfig(modality="ocr", uri=str(tmp_path / "docs"), format="pdf")], 64)
    damaged = {it["meta"]["pdf"]["page"]: it for it in items if it["uri"].endswith("damaged.pdf")}
    assert sorted(damaged) == [1, 2, 3] and damaged[1]["meta"]["text"] == BOOK[0]
    assert "error" not in damaged[1] and "error" not in damaged[3]
    assert damaged[2]["error"][0] == "source/corrupt_page" and "damaged.pdf page 2" in damaged[2]["error"][1]
    (junk,) = [it for it in items if it["uri"].endswith("junk.pdf")]
    assert junk["key"] == make_key(junk["uri"]) and junk["error"][0] == "source/unreadable_pdf"
    assert "junk.pdf: not a readable PDF" in junk["error"][1]


def test_pdf_pages_curate_end_to_end_and_ocr_is_checked_against_the_text_layer(tmp_path):
    _corpus(tmp_path / "docs")
    out = tmp_path / "out"
    manifest = tmp_path / "run.toml"
    manifest.write_text(
        f'name = "pdf"\nexecutor = "local"\n[output]\ndir = "{out}"\n'
        f'[[sources]]\nmodality = "ocr"\nformat = "pdf"\nuri = "{tmp_path / "docs"}"\n'
        '[[stages]]\nname = "image_decode"\n[[stages]]\nname = "ocr_text"\n'
        '[[stages]]\nname = "ocr"\nwrite_txt = true\n'
        '[[stages]]\nname = "ocr_filter"\nmin_agreement = 0.8\n'
    )
    summary = run(*load_run(str(manifest)), progress=False, report=False)
    # pages: book 3, scan 2, damaged 3 (one corrupt), junk one failed input: nothing lost
    assert summary["inputs"] == 9 == summary["kept"] + summary["dropped"] + summary["failed"]
    assert summary["failed_by_reason"] == {"source/corrupt_page": 1, "source/unreadable_pdf": 1}
    ledger = read_ledger(str(out)).set_index("key")
    dropped = ledger[ledger.status == "dropped"]
    assert set(dropped.reason) == {"ocr_filter/low_agreement"}  # the hidden-text page of book and damaged
    assert sorted(json.loads(m)["pdf"]["page"] for m in dropped.meta) == [3, 3]
    samples = _samples(out)
    assert len(samples) == summary["kept"] == 5
    truth = {1: BOOK[0], 2: BOOK[1]}
    for sample in samples.values():
        meta, page = sample["json"], sample["json"]["pdf"]["page"]
        if meta["pdf"]["text_layer"]:  # the text layer is the transcript; OCR agrees with it
            assert sample["txt"] == truth[page] and meta["ocr_agreement"] == 1.0
            assert meta["ocr"]["transcript"] == {"precision": 1.0, "recall": 1.0}
        else:  # a scan: OCR's text is the transcript, nothing to agree with
            assert "ocr_agreement" not in meta and sample["txt"].split() == SCAN[page - 1].split()
        assert meta["key"].endswith(f"-p{page}") and (meta["width"], meta["height"]) == (600, 300)


def _samples(out) -> dict[str, dict]:
    shards = sorted(str(p) for p in (out / "shards" / "ocr").glob("*.tar"))
    return {s["__key__"]: s for s in wds.WebDataset(shards, shardshuffle=False).decode()}


def test_low_agreement_is_judged_only_where_there_is_a_transcript():
    rows = new_rows([{"key": k, "uri": "-", "modality": "ocr", "partition": 0} for k in ("a", "b", "c")])
    metas = [{"ocr_agreement": 0.5}, {"ocr_agreement": 0.9}, {}]
    for i, meta in enumerate(metas):
        rows["meta"][i] = json.dumps(
            {**meta, "ocr": {"lines": [{}]}, "ocr_words": 5, "ocr_text_area": 0.2, "ocr_mean_conf": 0.95}
        )
    out = run_in_process([OcrFilter(min_agreement=0.8)], rows)
    assert list(out["status"]) == ["dropped", "live", "live"]
    assert out["reason"][0] == "ocr_filter/low_agreement" and "0.500" in out["detail"][0]


def test_pdfs_list_in_ray_tasks_and_read_from_s3(tmp_path, ray_cluster, s3_server):
    from shards import storage

    book = text_pdf(tmp_path / "book.pdf", BOOK)
    storage.s3_client().create_bucket(Bucket="docs")
    for name in ("a", "b"):
        storage.write_bytes(f"s3://docs/pdfs/{name}.pdf", book.read_bytes())
    source = SourceConfig(modality="ocr", uri="s3://docs/pdfs", format="pdf")
    out = tmp_path / "out"
    cfg = RunConfig(name="x", sources=(source,), stages=(), output=OutputConfig(dir=str(out)), partition_size=64)
    partitions, skipped = list_run(cfg, str(out), in_ray=True)
    items, _ = list_inputs((source,), 64)
    groups = defaultdict(list)
    for it in items:
        groups[it["partition"]].append(it["key"])
    assert {p: (d["count"], d["keys_sha256"]) for p, d in partitions.items()} == {
        p: (len(keys), keys_digest(keys)) for p, keys in groups.items()
    }
    listed = [it for p in sorted(partitions) for it in partition_items(partitions[p], p)]
    assert [(it["uri"], it["meta"]["pdf"]["page"], it["meta"]["text"]) for it in listed] == [
        (f"s3://docs/pdfs/{name}.pdf", n, BOOK[n - 1]) for name in ("a", "b") for n in (1, 2)
    ]
    img, facts = read_picture(listed[1]["uri"], listed[1]["meta"])  # ranged reads of the object
    assert (
        img.size == (600, 300)
        and facts["blake3"] == read_picture(str(book), {"pdf": {"page": 2, "dpi": 150}})[1]["blake3"]
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"modality": "image", "format": "pdf"}, "needs modality = 'ocr'"),
        ({"modality": "ocr", "format": "files", "dpi": 300}, "applies to format 'pdf'"),
    ],
)
def test_pdf_settings_that_cannot_work_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        SourceConfig(uri="/x", **settings)
