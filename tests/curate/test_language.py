"""The language filter on text whose language is known: short alt-text captions and long paragraphs
in seven languages and three scripts, OCR page text, captions with nothing to judge, and a run over
img2dataset shards whose kept samples carry the detected language in their json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import webdataset as wds
from source_kit import photo, write_shard

from curate.config import load_run
from curate.ledger import read_ledger
from curate.pipeline import run
from curate.stage import DROPPED, LIVE, new_rows, run_in_process
from curate.stages import build_stage
from manifests import ManifestError

SHORT = [  # written in the language named
    ("en", "two dogs playing in the snow"),
    ("de", "zwei Hunde spielen im Schnee"),
    ("fr", "coucher de soleil sur les montagnes"),
    ("es", "niños leyendo libros en la biblioteca"),
    ("ru", "дети читают книги в библиотеке"),
    ("zh", "夜晚的老桥"),
    ("ja", "雪の中で遊ぶ二匹の犬"),
]
LONG = [
    (
        "en",
        "The photograph shows an old stone bridge over a slow river at dusk. Lamps along the railing "
        "are already lit, and a few people walk home across it while the sky turns orange.",
    ),
    (
        "de",
        "Das Foto zeigt eine alte Steinbrücke über einem langsamen Fluss in der Abenddämmerung. Die "
        "Laternen am Geländer brennen schon, und einige Menschen gehen über die Brücke nach Hause.",
    ),
    (
        "fr",
        "La photo montre un vieux pont de pierre au-dessus d'une rivière tranquille au crépuscule. Les "
        "lampes le long de la rambarde sont déjà allumées et quelques passants rentrent chez eux.",
    ),
    (
        "ru",
        "На фотографии старый каменный мост через медленную реку в сумерках. Фонари вдоль перил уже "
        "горят, и несколько человек идут по мосту домой, пока небо становится оранжевым.",
    ),
]


@pytest.fixture(scope="module")
def english_german():
    stage = build_stage({"name": "language", "languages": ["en", "de"]})
    stage.setup()  # lingua keeps the models it loaded for the whole process: later stages reuse them
    return stage


def _batch(metas: list[dict], modality: str = "image", txt: list | None = None) -> dict:
    items = [
        {"key": f"k{i:02d}", "uri": f"/x/{i}.jpg", "modality": modality, "partition": 0, "meta": m}
        for i, m in enumerate(metas)
    ]
    batch = new_rows(items)
    if txt is not None:
        batch["txt"] = np.array(txt, dtype=object)
    return batch


def _run(stage, batch: dict) -> list[dict]:
    out = run_in_process([stage], batch, setup=False)
    return [
        {"status": s, "reason": r, "detail": d, "meta": json.loads(m)}
        for s, r, d, m in zip(out["status"], out["reason"], out["detail"], out["meta"], strict=True)
    ]


def test_short_and_long_captions_get_their_language(english_german):
    truth = SHORT + LONG
    rows = _run(english_german, _batch([{"caption": text} for _, text in truth]))
    for (language, text), row in zip(truth, rows, strict=True):
        assert row["meta"]["language"] == language, text
        assert 0 < row["meta"]["language_confidence"] <= 1
        if language in ("en", "de"):
            assert row["status"] == LIVE and row["reason"] is None
        else:
            assert (row["status"], row["reason"]) == (DROPPED, f"language/{language}")
            assert row["detail"].startswith("confidence ") and row["detail"].endswith("not in en, de")
    long_confidence = {row["meta"]["language"]: row["meta"]["language_confidence"] for row in rows[len(SHORT) :]}
    assert all(
        long_confidence[lang] > row["meta"]["language_confidence"]
        for (lang, _), row in zip(SHORT, rows[: len(SHORT)], strict=True)
        if lang in long_confidence
    )  # more text, surer


def test_ocr_pages_are_judged_by_their_text(english_german):
    _, german = LONG[1]
    _, french = LONG[2]
    rows = _run(english_german, _batch([{}, {}], "ocr", [german.encode(), french.encode()]))
    assert [(r["meta"]["language"], r["status"], r["reason"]) for r in rows] == [
        ("de", LIVE, None),
        ("fr", DROPPED, "language/fr"),
    ]


def test_samples_without_text_to_judge(english_german):
    """A captioned source's sample with no caption, an empty or blank one or one without letters is
    dropped as undetected (or kept with ``keep_undetected``); a folder image has no caption to judge."""
    metas = [{"caption": None}, {"caption": ""}, {"caption": "   "}, {"caption": "1234 !!"}, {}]
    rows = _run(english_german, _batch(metas))
    assert [r["reason"] for r in rows] == ["language/undetected"] * 4 + [None]
    assert all(r["meta"]["language"] is None and r["meta"]["language_confidence"] == 0 for r in rows[:4])
    assert "language" not in rows[4]["meta"] and rows[4]["status"] == LIVE
    lenient = build_stage({"name": "language", "languages": ["en"], "keep_undetected": True})
    lenient.setup()
    assert [r["status"] for r in _run(lenient, _batch(metas))] == [LIVE] * 5


def test_min_confidence_drops_uncertain_guesses():
    """lingua spreads a short Latin-script caption's confidence over its many Latin languages; a
    caption in a script of one language (Japanese kana) is certain."""
    stage = build_stage({"name": "language", "languages": ["en", "ja"], "min_confidence": 0.9})
    stage.setup()
    rows = _run(stage, _batch([{"caption": SHORT[0][1]}, {"caption": SHORT[6][1]}]))
    english, japanese = rows
    assert english["meta"]["language"] == "en" and english["meta"]["language_confidence"] < 0.9
    assert english["reason"] == "language/uncertain" and "en at confidence" in english["detail"]
    assert (japanese["meta"]["language"], japanese["status"]) == ("ja", LIVE)


@pytest.mark.parametrize("languages", [["english"], []])
def test_languages_must_be_iso_codes_lingua_knows(languages):
    with pytest.raises(ManifestError, match=r"stages\[language\]: languages: .* ISO 639-1 codes known: af, ar"):
        build_stage({"name": "language", "languages": languages})


def test_a_run_over_captioned_shards_keeps_english(tmp_path):
    captions = [SHORT[0][1], LONG[0][1], SHORT[1][1], SHORT[2][1], None]
    samples = [{"image": photo(n), "caption": c, "json": {"n": n}} for n, c in enumerate(captions)]
    write_shard(tmp_path / "shards" / "00000.tar", 0, samples)
    out = tmp_path / "out"
    manifest = tmp_path / "run.toml"
    manifest.write_text(
        f'name = "lang"\nexecutor = "local"\n[output]\ndir = "{out}"\n'
        f'[[sources]]\nmodality = "image"\nformat = "webdataset"\nuri = "{tmp_path / "shards"}"\n'
        '[[stages]]\nname = "image_decode"\nsize = 64\n[[stages]]\nname = "language"\nlanguages = ["en"]\n'
    )
    summary = run(*load_run(str(manifest)), progress=False, report=False)
    assert summary["dropped_by_reason"] == {"language/de": 1, "language/fr": 1, "language/undetected": 1}
    ledger = read_ledger(str(out))
    dropped = ledger[ledger["status"] == DROPPED]
    dropped = {json.loads(m)["source_meta"]["n"]: r for m, r in zip(dropped["meta"], dropped["reason"], strict=True)}
    assert dropped == {2: "language/de", 3: "language/fr", 4: "language/undetected"}
    kept = wds.WebDataset(sorted(str(p) for p in (out / "shards/image").glob("*.tar")), shardshuffle=False)
    metas = sorted((json.loads(s["json"]) for s in kept), key=lambda m: m["source_meta"]["n"])
    assert [(m["source_meta"]["n"], m["language"]) for m in metas] == [(0, "en"), (1, "en")]
    assert all(0 < m["language_confidence"] <= 1 for m in metas)
