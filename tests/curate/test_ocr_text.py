"""OCR text units: normalisation, segmentation (CJK included), labels' order and cap, text area, crops."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from curate.ocr import crops
from curate.ocr.engines import Line, Tesseract, word_extents
from curate.ocr.text import char_accuracy, normalize, tokenize, word_scores, word_spans
from curate.ocr.vocab import label


def test_normalize_folds_width_ligatures_and_case():
    assert normalize("Ｆｕｌｌ ＷＩＤＴＨ") == "full width"
    assert normalize("ﬁne Straße") == "fine strasse"
    assert normalize("STRASSE") == normalize("Straße")


def test_tokenize_whitespace_languages():
    text = "Hello, World!  don't -- x-ray 3.14 (Beautiful) cafe\u0301 हिन्दी"
    # decomposed "café" composes under NFKC; Devanagari's vowel signs (marks) stay inside the word
    assert tokenize(text) == ["hello", "world", "don't", "x-ray", "3.14", "beautiful", "café", "हिन्दी"]


def test_tokenize_cjk_per_character_and_bigram():
    text = "東京タワーへ行く Tokyo 한국어 텍스트"
    assert tokenize(text) == ["東", "京", "タ", "ワ", "ー", "へ", "行", "く", "tokyo", "한국어", "텍스트"]
    assert tokenize("東京タワー 行", cjk="bigram") == ["東京", "京タ", "タワ", "ワー", "行"]
    assert tokenize("abc東京def") == ["abc", "東", "京", "def"]
    with pytest.raises(ValueError, match="cjk"):
        tokenize("x", cjk="words")


def test_metrics():
    assert word_scores("the cat sat", "the cat sat") == (1.0, 1.0)
    assert word_scores("thecat sat", "the cat sat") == (0.5, 1 / 3)
    assert char_accuracy("abcd", "abce") == pytest.approx(0.75)
    assert char_accuracy("", "ab") == 0.0
    assert char_accuracy("东 京 tower  is\nhigh", "东京 tower is high") == 1.0  # spaces beside CJK don't count


def test_labels_order_by_confidence_then_reading_order_and_skip_unknown_words():
    vocab = {"alpha": 0, "beta": 1, "gamma": 2, "delta": 3}
    lines = [
        Line("gamma beta", 0.80, (0, 0, 10, 10)),
        Line("delta unknown alpha", 0.95, (0, 20, 10, 30)),
        Line("beta alpha", 0.80, (0, 40, 10, 50)),
    ]
    result = label(lines, vocab)
    assert result.ids.dtype == np.int32
    assert result.ids.tolist() == [3, 0, 2, 1]  # 0.95 line first, then line order; repeats dropped
    assert (result.words, result.oov) == (7, 1)


def test_labels_cap_and_blank_page_gets_no_ids():
    vocab = {f"w{i}": i for i in range(300)}
    lines = [Line(" ".join(f"w{i}" for i in range(j, j + 50)), 0.9 - j / 1000, (0, j, 5, j + 5)) for j in (0, 50, 100)]
    result = label(lines, vocab)
    assert result.ids.tolist() == list(range(100))
    empty = label([], vocab)
    assert empty.ids.dtype == np.int32 and empty.ids.size == 0 and empty.words == 0


def test_text_area_and_dense_crop():
    boxes = [(0, 0, 100, 10), (50, 0, 150, 10), (600, 400, 640, 480)]
    assert crops.text_area_ratio(boxes, 640, 480) == pytest.approx((150 * 10 + 40 * 80) / (640 * 480))
    assert crops.text_area_ratio([], 640, 480) == 0.0
    mask = crops.text_mask([(400, 300, 640, 480)], 640, 480)
    box, share, density = crops.dense_window(mask, 200)
    assert box[2] - box[0] == box[3] - box[1] == 200
    assert share == pytest.approx(200 * 180 / (240 * 180)) and density == pytest.approx(0.9)
    rgb = np.zeros((480, 640, 3), np.uint8)
    assert Image.open(io.BytesIO(crops.crop_jpeg(rgb, box))).size == (200, 200)


def test_word_spans_split_at_spaces_and_between_cjk_characters():
    assert word_spans("to be  or") == [(0, 2), (3, 5), (7, 9)]
    assert word_spans("今天 ok") == [(0, 1), (1, 2), (3, 5)]
    assert word_extents("ab 今", [(0, 5), (5, 9), (9, 12), (12, 20)]) == ((0, 9), (12, 20))


def test_tesseract_tsv_groups_words_into_lines():
    tsv = (
        "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n"
        "4\t1\t1\t1\t1\t0\t10\t10\t200\t20\t-1\t\n"
        "5\t1\t1\t1\t1\t1\t10\t10\t50\t20\t96.0\tHello\n"
        "5\t1\t1\t1\t1\t2\t70\t12\t60\t18\t90.0\tworld\n"
        "5\t1\t1\t1\t2\t1\t10\t40\t40\t20\t20.0\tnoise\n"
    )
    engine = Tesseract.__new__(Tesseract)
    engine.min_conf = 0.5
    (line,) = engine.parse_tsv(tsv)
    assert (line.text, line.box) == ("Hello world", (10, 10, 130, 30))
    assert line.conf == pytest.approx(0.93)
    assert line.words == ((10, 60), (70, 130))  # each word where tesseract boxed it
