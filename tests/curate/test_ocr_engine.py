"""The real OCR engines on rendered pages whose text is known, and the ``ocr`` -> ``ocr_filter`` stages.

Threshold: on 8 clean benchmark pages (tests/benchmarks/RESULTS.md, "## OCR") rapidocr with the
PP-OCRv6-tiny models and tesseract both read every word (precision = recall = 1.000), while
rapidocr's bundled PP-OCRv4 recogniser, which drops the spaces between English words, reaches
recall 0.45. Requiring 0.97 leaves room for about one misread word per page of ~35 words and
still fails any engine that glues words together.
"""

from __future__ import annotations

import json
import shutil
import tempfile

import numpy as np
import pytest
from ocr_kit import blank_page, cjk_pages, pages
from PIL import Image

from curate.ocr.engines import MODEL_SETS, load_engine, package_file
from curate.ocr.text import tokenize, word_scores
from curate.stage import new_rows, run_in_process
from curate.stages.images import ImageDecode
from curate.stages.ocr import OcrCrop, OcrFilter, OcrRead
from shards import storage

THRESHOLD = 0.97


def _scores(engine, data):
    prec, rec = [], []
    for rgb, truth in data:
        lines = engine(rgb)
        assert all(0.0 <= line.conf <= 1.0 for line in lines)
        assert all(
            0 <= x0 < x1 <= rgb.shape[1] and 0 <= y0 < y1 <= rgb.shape[0]
            for x0, y0, x1, y1 in (line.box for line in lines)
        )
        assert [line.box[1] for line in lines] == sorted(line.box[1] for line in lines)  # reading order
        p, r = word_scores("\n".join(line.text for line in lines), truth)
        prec.append(p)
        rec.append(r)
    return float(np.mean(prec)), float(np.mean(rec))


@pytest.fixture(scope="module")
def test_pages():
    return pages(3, seed=11)


def test_rapidocr_reads_rendered_pages(test_pages):
    precision, recall = _scores(load_engine("rapidocr", models="ppocrv6-tiny", threads=1), test_pages)
    assert precision >= THRESHOLD and recall >= THRESHOLD, (precision, recall)


def test_rapidocr_reads_chinese_and_japanese_per_character():
    """PP-OCRv6-small read 0.995 of the CJK tokens (worst page 0.978) in the benchmark; the tiny
    set has no kana in its dictionary, hence the model set here."""
    precision, recall = _scores(load_engine("rapidocr", models="ppocrv6-small", threads=1), cjk_pages(2, seed=5))
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr is an apt package, not installed here")
def test_tesseract_reads_rendered_pages(test_pages):
    precision, recall = _scores(load_engine("tesseract", lang="eng", threads=1), test_pages)
    assert precision >= THRESHOLD and recall >= THRESHOLD, (precision, recall)


def _files(tmp_path, pictures: dict) -> list[dict]:
    """Each picture written as a PNG: the stages read the source file, never the training copy."""
    items = []
    for key, (modality, rgb) in pictures.items():
        Image.fromarray(rgb).save(tmp_path / f"{key}.png")
        items.append({"key": key, "uri": str(tmp_path / f"{key}.png"), "modality": modality, "partition": 0})
    return items


def test_ocr_stage_filter_and_crop_on_a_page_and_a_blank_image(test_pages, tmp_path):
    rgb, truth = test_pages[0]
    pictures = {"page": ("ocr", rgb), "blank": ("ocr", blank_page()), "photo": ("image", blank_page())}
    batch = new_rows(_files(tmp_path, pictures))
    stages = [ImageDecode(), OcrRead(write_txt=True), OcrFilter(min_text_area=0.02), OcrCrop(size=256)]
    out = run_in_process(stages, batch)
    status = dict(zip(out["key"], out["status"], strict=True))
    reason = dict(zip(out["key"], out["reason"], strict=True))
    meta = {k: json.loads(m) for k, m in zip(out["key"], out["meta"], strict=True)}
    crops = sorted(k for k in status if k.startswith("page-r"))
    assert status == {"page": "split", "page-page": "live", "blank": "dropped", "photo": "live"} | dict.fromkeys(
        crops, "live"
    )
    assert reason["blank"] == "ocr_filter/no_text"
    assert "ocr" not in meta["photo"]  # ``read`` defaults to the ocr modality only
    page = meta["page"]
    assert page["ocr"]["size"] == [640, 480] and page["ocr"]["engine"] == "rapidocr:ppocrv6-tiny"
    assert abs(page["ocr_words"] - len(truth.split())) <= 1 and page["ocr_mean_conf"] > 0.8
    assert 0.05 < page["ocr_text_area"] < 0.6
    # 22-px text (x-height 12) on a page shrunk to 448 stays legible: the whole page is a sample too
    assert page["ocr_crops"]["page"] is True and page["ocr_crops"]["crops"] == len(crops) >= 2
    texts = dict(zip(out["key"], out["txt"], strict=True))
    assert word_scores(bytes(texts["page-page"]).decode(), truth)[1] >= THRESHOLD
    for key in crops:  # each crop: a 256-px window of the page, its words' text, their lines
        crop = meta[key]["ocr_crop"]["box"]
        assert crop[2] - crop[0] == crop[3] - crop[1] == 256
        lines = meta[key]["ocr"]["lines"]
        assert bytes(texts[key]).decode() == "\n".join(line["text"] for line in lines) != ""
        assert all(0 <= a < b <= 256 for line in lines for a, b in line["words"])
    assert texts["blank"] is None  # dropped rows carry no payload


def test_real_photographs_without_text_are_dropped(test_pages, tmp_path):
    """Photographs that ship with scikit-image and matplotlib; the engine "reads" digits in the coins
    and letters in the portrait at low confidence: each goes as low_confidence or no_text."""
    import matplotlib.cbook
    import skimage.data

    from curate.stages.images import resize_policy

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.asarray(Image.open(f).convert("RGB"))
    photos = {
        "coins": np.stack([skimage.data.coins()] * 3, -1),
        "grace_hopper": hopper,
        "coffee": skimage.data.coffee(),
    }
    photos["page"] = test_pages[2][0]
    small = {k: ("ocr", np.asarray(resize_policy(Image.fromarray(a), 448, "shorter"))) for k, a in photos.items()}
    out = run_in_process([OcrRead(), OcrFilter()], new_rows(_files(tmp_path, small)))
    reason = dict(zip(out["key"], out["reason"], strict=True))
    for name in ("coins", "grace_hopper", "coffee"):
        assert reason[name] in ("ocr_filter/low_confidence", "ocr_filter/no_text"), (name, reason[name])
    assert reason["page"] is None  # the same defaults keep a page of text


def test_low_confidence_and_low_area_reasons():
    rows = [
        {
            "key": "a",
            "meta": {
                "ocr": {"lines": [["x", 0.6, [0, 0, 5, 5]]]},
                "ocr_words": 1,
                "ocr_text_area": 0.5,
                "ocr_mean_conf": 0.6,
            },
        },
        {
            "key": "b",
            "meta": {
                "ocr": {"lines": [["x", 0.9, [0, 0, 1, 1]]]},
                "ocr_words": 1,
                "ocr_text_area": 0.001,
                "ocr_mean_conf": 0.9,
            },
        },
    ]
    out = OcrFilter(min_text_area=0.01, min_mean_conf=0.7).process_batch(rows)
    assert [r["drop_reason"].split(":")[0] for r in out] == ["low_confidence", "low_text_area"]


def test_recognizer_weights_from_s3_read_like_the_local_ones(s3_server, test_pages, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the weights cache goes under it
    storage.s3_client().create_bucket(Bucket="ocr-models")
    package, _, rec, keys = MODEL_SETS["ppocrv6-tiny"]
    uris = {}
    for name, rel in (("rec_model", rec), ("rec_keys", keys)):
        uris[name] = f"s3://ocr-models/ppocrv6-tiny/{rel.rsplit('/', 1)[-1]}"
        storage.write_bytes(uris[name], open(package_file(package, rel), "rb").read())
    rgb, _ = test_pages[1]
    local = load_engine("rapidocr", models="ppocrv6-tiny")(rgb)
    # the v4 set's recogniser replaced by the v6 one from S3 reads exactly what the local v6 set reads
    remote = load_engine("rapidocr", models="ppocrv4", **uris)(rgb)
    assert tokenize("\n".join(x.text for x in remote)) == tokenize("\n".join(x.text for x in local))
    assert list((tmp_path / "ovforge-ocr-models").iterdir())
