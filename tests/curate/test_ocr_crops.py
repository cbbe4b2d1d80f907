"""OCR at reading resolution, crops of what the encoder can read, and each crop's own word labels.

Ground truth: pages drawn here with every word's box known (``ocr_kit.dense_page``). The dense page
holds 3,000+ words of 10-px text on 1280x1080 pixels: shrunk to the 448-px training copy its text is
2 px high, so only crops at reading size carry it. OCR's word boxes differ from the drawn ink by up
to 6 px (the detector pads lines; a word's ends come from the recogniser's columns: -4..+6 px over
1,895 words), so the end-to-end test gives a word within 6 px of a crop's edge either outcome; the
assignment itself is checked exactly on the true boxes.
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter

import numpy as np
import pytest
import webdataset as wds
from ocr_kit import blank_page, dense_page, pages
from PIL import Image, ImageDraw, ImageFont

from curate.config import load_run
from curate.demo.corpus import _font
from curate.ledger import read_ledger
from curate.ocr import crops
from curate.ocr.engines import Line, read_page
from curate.ocr.text import tokenize, word_scores
from curate.ocr.vocab import label
from curate.pipeline import run
from curate.report import script_table
from curate.stages.ocr import OcrCrop

MARGIN = 6  # px: how far OCR's word boxes may stray from the ink (see the module docstring)
_SYLLABLES = "ka ho mi re tu sa ne po vi da ru me ko ti ba ga fe hu zo ni".split()  # no l: DejaVu draws l as I


def _vocabulary(n: int = 500, seed: int = 5) -> list[str]:
    """Pseudo-words of 1-3 syllables: many distinct words, so each crop's word set is its own."""
    rng = random.Random(seed)
    return sorted({"".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n)})


def _inside(box, window, grow: int = 0) -> bool:
    return crops.inside(box, (window[0] - grow, window[1] - grow, window[2] + grow, window[3] + grow))


def _truth_lines(text: str, placed) -> list[Line]:
    """The drawn words as OCR lines: each word at its true x-extent, the height of its line's ink."""
    lines, words = [], iter(placed)
    for row_text in text.splitlines():
        row = [next(words) for _ in row_text.split()]
        y0, y1 = min(b[1] for _, b in row), max(b[3] for _, b in row)
        extents = tuple((b[0], b[2]) for _, b in row)
        lines.append(Line(row_text, 1.0, (extents[0][0], y0, extents[-1][1], y1), extents))
    return lines


def test_crops_of_a_dense_page_label_exactly_the_words_inside_them():
    """No OCR: the true word boxes through ``dense_crops`` / ``crop_lines`` / ``label``."""
    _, text, placed = dense_page((1280, 1080), 10, seed=1, words=_vocabulary())
    assert len(placed) >= 3000
    lines = _truth_lines(text, placed)
    assert [w for line in lines for w in line.text.split()] == [w for w, _ in placed]
    windows = crops.dense_crops(crops.word_boxes(lines), 1280, 1080, 448, max_crops=32, min_words=8)
    assert len(windows) >= 6  # 3,000 words do not fit one crop
    covered = set()
    vocab = {w: i for i, w in enumerate(_vocabulary())}
    for window in windows:
        assert window[2] - window[0] == window[3] - window[1] == 448
        held = crops.crop_lines(lines, window)
        # a word is inside when its box is; the crop's lines span the line's ink height
        truth = [
            w
            for line in lines
            for w, (a, b) in zip(line.text.split(), line.words, strict=True)
            if _inside((a, line.box[1], b, line.box[3]), window)
        ]
        assert [w for line in held for w in line.text.split()] == truth  # exactly, in reading order
        assert all(0 <= a < b <= 448 for line in held for a, b in line.words)
        ids = label(held, vocab, max_words=10_000).ids
        assert sorted(ids.tolist()) == sorted({vocab[w] for w in truth})
        covered |= {
            (i, a)
            for i, line in enumerate(lines)
            for a, b in line.words
            if _inside((a, line.box[1], b, line.box[3]), window)
        }
    assert len(covered) >= 0.8 * len(placed)  # 7 crops of 448 px (overlapping by 30 % at most) hold 85 %


def test_x_height_is_measured_from_the_ink():
    """DejaVu Sans' x-height is 0.547 em: 40-px lower-case text without ascenders is 22 px high there."""
    font = ImageFont.truetype(_font().path, 40)
    img = Image.new("L", (400, 80), 255)
    ImageDraw.Draw(img).text((10, 10), "eco case x war", fill=0, font=font)
    gray = np.asarray(img)
    assert 20 <= crops.x_height(gray, (0, 0, 400, 80)) <= 24
    assert 20 <= crops.x_height(255 - gray, (0, 0, 400, 80)) <= 24  # light text on a dark ground


def test_tall_pages_are_read_in_strips_each_line_once():
    """A page read in strips of 200 rows (overlap 64) gives every line once, at its place on the page
    (within 4 px: the detector sees each line among other neighbours)."""
    from curate.ocr.engines import RapidOcr

    rgb, text, _ = dense_page((400, 600), 14, seed=2)
    engine = RapidOcr()
    whole = read_page(engine, rgb)
    strips = read_page(engine, rgb, strip_pixels=400 * 200, overlap=64)
    assert len(strips) == len(whole) == len(text.splitlines())
    assert [line.text for line in strips] == [line.text for line in whole]
    for a, b in zip(strips, whole, strict=True):
        assert np.abs(np.subtract(a.box, b.box)).max() <= 4


def test_a_page_upside_down_reads_whole():
    """The orientation classifier votes for the page: every line of a page turned 180 degrees reads
    right (line by line it turned some lines of small text upside down, and left others)."""
    from curate.ocr.engines import RapidOcr

    rgb, text, _ = dense_page((500, 300), 10, seed=6)
    for page in (rgb, np.ascontiguousarray(rgb[::-1, ::-1])):
        read = "\n".join(line.text for line in read_page(RapidOcr(), page))
        assert word_scores(read, text)[1] >= 0.95


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """One local run over: a dense page, a legible demo page, a blank page, a big page with a few
    small words, and a broken file."""
    root = tmp_path_factory.mktemp("ocr_crops")
    folder = root / "pages"
    folder.mkdir()
    dense, dense_text, placed = dense_page((1280, 1080), 10, seed=1, words=_vocabulary())
    Image.fromarray(dense).save(folder / "dense.png")
    legible, legible_text = pages(1, seed=4)[0]
    Image.fromarray(legible).save(folder / "legible.png")
    Image.fromarray(blank_page()).save(folder / "blank.png")
    sparse = np.full((1400, 1800, 3), 255, np.uint8)
    sparse[600:640, 700:860] = dense_page((160, 40), 12, seed=3)[0]  # 3 words
    Image.fromarray(sparse).save(folder / "sparse.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    out = root / "out"
    manifest = root / "run.toml"
    manifest.write_text(
        f'name = "crops"\nexecutor = "local"\n[output]\ndir = "{out}"\n'
        f'[[sources]]\nmodality = "ocr"\nuri = "{folder}"\n'
        '[[stages]]\nname = "image_decode"\n[[stages]]\nname = "ocr"\nwrite_txt = true\n'
        '[[stages]]\nname = "ocr_filter"\n[[stages]]\nname = "ocr_crop"\n'
        '[[stages]]\nname = "ocr_vocab"\nmin_count = 1\n'
    )
    summary = run(*load_run(str(manifest)), progress=False, report=False)
    shards = sorted(str(p) for p in (out / "shards" / "ocr").glob("*.tar"))
    samples = {s["__key__"]: s for s in wds.WebDataset(shards, shardshuffle=False)}
    vocab = {}
    for row in (out / "_work").rglob("ocr_vocab.tsv"):
        vocab = {w: int(i) for i, w, _ in (r.split("\t") for r in row.read_text().splitlines()[1:])}
    ledger = read_ledger(str(out)).set_index("key")
    return {
        "summary": summary,
        "samples": samples,
        "ledger": ledger,
        "vocab": vocab,
        "dense": (dense, dense_text, placed),
        "legible_text": legible_text,
    }


def _keys(curated, page: str) -> list[str]:
    return sorted(k for k in curated["samples"] if k.startswith(page))


def _key(curated, page: str) -> str:
    (key,) = [k for k in curated["ledger"].index if k.startswith(page) and k.count("-") == 1]
    return key


def test_every_input_is_accounted_for_and_samples_apart(curated):
    summary, ledger = curated["summary"], curated["ledger"]
    inputs = ledger[ledger.parent.isna()]
    assert summary["inputs"] == 5 == summary["kept"] + summary["dropped"] + summary["failed"] == len(inputs)
    assert (summary["kept"], summary["dropped"], summary["failed"]) == (2, 2, 1)
    assert inputs.loc[_key(curated, "blank"), "reason"] == "ocr_filter/no_text"
    assert inputs.loc[_key(curated, "sparse"), "reason"] == "ocr_crop/illegible"
    assert inputs.loc[_key(curated, "broken"), "reason"].startswith("image_decode/")
    samples = ledger[ledger.parent.notna()]
    assert set(samples.parent) == {_key(curated, "dense"), _key(curated, "legible")}
    assert set(samples.status) == {"kept"}
    assert sorted(samples.index) == sorted(curated["samples"])  # one ledger row per stored sample
    for page in ("dense", "legible"):
        record = json.loads(inputs.loc[_key(curated, page), "meta"])
        assert record["samples"] == {"kept": len(_keys(curated, page))}
    # the report's pages per script count pages, not the crops they became
    assert script_table(ledger).loc["Latin", ["pages", "kept"]].tolist() == [3, 2]


def test_a_dense_page_gives_several_crops_and_no_illegible_whole(curated):
    keys = _keys(curated, "dense")
    assert not any(k.endswith("-page") for k in keys) and len(keys) >= 6
    record = json.loads(curated["ledger"].loc[_key(curated, "dense"), "meta"])
    assert record["ocr"]["size"] == [1280, 1080]  # read at reading resolution, not the 448-px copy
    assert record["ocr_crops"]["page"] is False and record["ocr_crops"]["x_height_at_training"] < OcrCrop.min_x_height
    dense, text, _ = curated["dense"]
    read = "\n".join(line["text"] for line in record["ocr"]["lines"])
    assert word_scores(read, text)[1] >= 0.95  # 10-px Latin text, read at reading resolution
    for key in keys:
        sample = curated["samples"][key]
        x0, y0, x1, y1 = json.loads(sample["json"])["ocr_crop"]["box"]
        pixels = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"), dtype=np.int16)
        assert pixels.shape == (448, 448, 3) and (x1 - x0, y1 - y0) == (448, 448)
        assert np.abs(pixels - dense[y0:y1, x0:x1]).mean() < 3  # the page's own pixels, JPEG apart


def test_each_crop_holds_and_labels_the_words_inside_it(curated):
    _, _, placed = curated["dense"]
    vocab = curated["vocab"]
    for key in _keys(curated, "dense"):
        sample = curated["samples"][key]
        window = json.loads(sample["json"])["ocr_crop"]["box"]
        surely = Counter(w for w, box in placed if _inside(box, window, -MARGIN))
        maybe = Counter(w for w, box in placed if _inside(box, window, MARGIN))
        read = Counter(tokenize(sample["txt"].decode()))
        n = sum(surely.values())
        # at most 2 % misread (the page reads at 0.995; a crop of 440 words may hold a few more)
        assert sum((surely - read).values()) <= 0.02 * n, (key, surely - read)
        assert sum((read - maybe).values()) <= 0.02 * n, (key, read - maybe)
        ids = np.load(io.BytesIO(sample["words.npy"]))
        assert len(ids) == min(100, len({vocab[w] for w in read if w in vocab}))
        inside = {vocab[w] for w in maybe if w in vocab}
        assert len(set(ids.tolist()) - inside) <= 0.02 * len(ids)  # ids of words inside the crop only


def test_a_legible_page_is_stored_whole_beside_its_crops(curated):
    keys = _keys(curated, "legible")
    whole = _key(curated, "legible") + "-page"
    assert whole in keys and len(keys) >= 2
    page = curated["samples"][whole]
    meta = json.loads(page["json"])
    assert Image.open(io.BytesIO(page["jpg"])).size == (597, 448)  # the training copy
    assert meta["ocr_crops"]["x_height_at_training"] >= OcrCrop.min_x_height
    assert word_scores(page["txt"].decode(), curated["legible_text"])[1] >= 0.97
    ids = np.load(io.BytesIO(page["words.npy"]))
    crop_ids = [
        set(np.load(io.BytesIO(curated["samples"][k]["words.npy"])).tolist()) for k in keys if k != "legible-page"
    ]
    assert set().union(*crop_ids) <= set(ids.tolist())  # crops label parts of the page's words


def test_a_figure_with_a_caption_is_stored_whole_and_no_text_is_read_into_the_photograph(tmp_path):
    """A page that is mostly a photograph (scikit-image's coffee) over a one-line caption: the caption is
    read, the photograph gives no words, and the page, legible at training size, is stored whole."""
    import skimage.data

    page = np.full((900, 1000, 3), 255, np.uint8)
    page[60:460, 200:800] = skimage.data.coffee()
    caption = "Figure 3: a cup of coffee on a white saucer"
    img = Image.fromarray(page)
    ImageDraw.Draw(img).text((200, 500), caption, fill="black", font=ImageFont.truetype(_font().path, 28))
    (tmp_path / "pages").mkdir()
    img.save(tmp_path / "pages" / "figure.png")
    out = tmp_path / "out"
    manifest = tmp_path / "run.toml"
    manifest.write_text(
        f'name = "figure"\nexecutor = "local"\n[output]\ndir = "{out}"\n'
        f'[[sources]]\nmodality = "ocr"\nuri = "{tmp_path / "pages"}"\n'
        '[[stages]]\nname = "image_decode"\n[[stages]]\nname = "ocr"\nwrite_txt = true\n'
        '[[stages]]\nname = "ocr_filter"\n[[stages]]\nname = "ocr_crop"\n'
    )
    run(*load_run(str(manifest)), progress=False, report=False)
    ledger = read_ledger(str(out)).set_index("key")
    page_row = ledger[ledger.parent.isna()].iloc[0]
    meta = json.loads(page_row["meta"])
    read = "\n".join(line["text"] for line in meta["ocr"]["lines"])
    assert page_row["status"] == "kept" and word_scores(read, caption) == (1.0, 1.0), read
    samples = list(wds.WebDataset(sorted(map(str, out.rglob("*.tar"))), shardshuffle=False))
    # the caption alone makes no crop of min_words words; the legible page is its one sample, whole
    assert meta["ocr_crops"]["crops"] == 0 and meta["ocr_crops"]["page"] is True
    assert [s["__key__"] for s in samples] == [page_row.name]
    assert samples[0]["txt"].decode() == caption
    assert Image.open(io.BytesIO(samples[0]["jpg"])).size == (498, 448)  # the training copy
