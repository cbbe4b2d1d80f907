"""The ``ocr_vocab`` global step on a real Ray dataset and in process (one Arrow table), and the
``ocr_labels`` stage it returns."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from curate.ocr.vocab import rank
from curate.stage import run_in_process, to_batch
from curate.stages.ocr import OcrLabels, OcrVocab
from shards.format import decode_npy


def _row(key: str, lines: list, modality: str = "ocr") -> dict:
    meta = {"ocr": {"lines": [[text, conf, [0, 10 * i, 100, 10 * i + 8]] for i, (text, conf) in enumerate(lines)]}}
    return {
        "key": key,
        "uri": f"mem://{key}",
        "modality": modality,
        "partition": 0,
        "status": "live",
        "reason": None,
        "detail": None,
        "meta": meta,
    }


ROWS = [
    _row("a", [("Alpha beta", 0.99), ("gamma 東京", 0.90)]),
    _row("b", [("alpha BETA beta beta", 0.80)]),  # "beta" counts once per image
    _row("c", [("alpha delta", 0.95), ("Gamma", 0.70)]),
    _row("d", [("epsilon", 0.90)]),  # seen in one image only
    _row("blank", []),
    _row("photo", [("alpha", 0.9)], modality="image"),
]


def _vocab_step(step: OcrVocab, frame: pd.DataFrame, workdir, driver: str, request):
    """``step`` over ``frame``'s rows on Ray (in three blocks: counts must merge across them) or in process."""
    if driver == "local":
        return step.run_local(pa.Table.from_pandas(frame), workdir)
    ray = request.getfixturevalue("ray_cluster")
    return step.run(ray.data.from_pandas([frame[:2], frame[2:4], frame[4:]]), workdir, len(frame))


@pytest.mark.parametrize("driver", ["ray", "local"])
def test_vocab_step_then_labels(driver, request, tmp_path):
    frame = pd.DataFrame([{**r, "meta": json.dumps(r["meta"])} for r in ROWS])[list(OcrVocab.columns)]
    stage = _vocab_step(OcrVocab(size=4, min_count=2, max_words=100), frame, str(tmp_path / "step"), driver, request)
    assert isinstance(stage, OcrLabels)
    vocab = (tmp_path / "step" / "ocr_vocab.tsv").read_text().splitlines()
    # alpha: 4 images, beta: 2, gamma: 2; 東 and 京 once each, epsilon once, delta once -> below min_count
    assert vocab == ["id\tword\tcount", "0\talpha\t4", "1\tbeta\t2", "2\tgamma\t2"]
    summary = json.loads((tmp_path / "step" / "ocr_vocab.json").read_text())
    assert summary["words"] == 3 and summary["min_count_seen"] == 2

    out = run_in_process([stage], to_batch(ROWS, list(ROWS[0])))
    words = {k: decode_npy(bytes(v)) for k, v in zip(out["key"], out["words_npy"], strict=True)}
    meta = {k: json.loads(m) for k, m in zip(out["key"], out["meta"], strict=True)}
    assert words["a"].dtype == np.int32 and words["a"].tolist() == [0, 1, 2]
    assert words["b"].tolist() == [0, 1]
    assert words["c"].tolist() == [0, 2]  # the 0.95 line (alpha; delta unknown) before the 0.70 line
    assert words["d"].size == 0 and meta["d"]["ocr_no_words"] and meta["d"]["ocr_oov"] == 1
    assert words["blank"].dtype == np.int32 and words["blank"].size == 0 and meta["blank"]["ocr_no_words"]
    assert not meta["a"]["ocr_no_words"] and len(meta["a"]["ocr_vocab"]) == 16


@pytest.mark.parametrize("driver", ["ray", "local"])
def test_vocab_with_no_word_common_enough_labels_nothing(driver, request, tmp_path):
    frame = pd.DataFrame([{**r, "meta": json.dumps(r["meta"])} for r in ROWS])[list(OcrVocab.columns)]
    stage = _vocab_step(OcrVocab(min_count=100), frame, str(tmp_path), driver, request)
    assert (tmp_path / "ocr_vocab.tsv").read_text() == "id\tword\tcount\n"
    out = run_in_process([stage], to_batch(ROWS, list(ROWS[0])))
    assert all(decode_npy(bytes(v)).size == 0 for v in out["words_npy"])


def test_rank_caps_size_and_breaks_ties_by_word():
    counts = pd.DataFrame({"word": ["b", "a", "c", "d"], "count": [2, 2, 5, 1]})
    assert rank(counts, size=3, min_count=1).values.tolist() == [[0, "c", 5], [1, "a", 2], [2, "b", 2]]
    assert rank(counts, size=10, min_count=3).values.tolist() == [[0, "c", 5]]
    assert rank(counts.iloc[:0], size=10, min_count=1).empty
