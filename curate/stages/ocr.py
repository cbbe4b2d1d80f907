"""OCR stages: ``ocr`` (read text), ``ocr_filter``, ``ocr_crop``, ``ocr_vocab`` (global step), ``ocr_labels``.

A manifest lists ``image_decode`` (and ``ocr_text`` where transcripts exist), then ``ocr``,
``ocr_filter``, optionally ``ocr_crop``, then ``ocr_vocab``; the pipeline ends the pass there,
the step writes ``ocr_vocab.tsv`` under its work folder and returns the ``ocr_labels`` stage that
heads the next pass and gives each OCR'd sample its word ids (``words_npy``: int32 .npy bytes):
a page's from all its words, a crop's from the words inside it.

OCR reads the page at reading resolution (the decoded file, a PDF page rendered at its DPI), never
the training-size ``jpg``, on which small text is unreadable; ``ocr_crop`` then stores what the
encoder can read: the text-dense regions at the training resolution, and the whole page where its
text stays legible at training size.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Literal

import numpy as np

from curate.ocr import crops
from curate.ocr.engines import load_engine, osd_script, parse_spec, read_page
from curate.ocr.scripts import letter_scripts
from curate.ocr.text import tokenize, word_scores
from curate.ocr.vocab import count_words, count_words_local, label, lines_of, rank, read_vocab, write_vocab
from curate.pictures import read_picture
from curate.stage import Filter, GlobalStep, Stage
from manifests import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt, Range
from shards import storage
from shards.format import encode_npy


def _picture(row: dict) -> np.ndarray:
    """The page at reading resolution: the source file decoded, or the PDF page rendered at its DPI."""
    return np.asarray(read_picture(row["uri"], row["meta"])[0])


@dataclasses.dataclass(frozen=True)
class OcrRead(Stage):
    """Read text lines with boxes and confidences into ``meta["ocr"]``; one engine per actor.

    ``meta["ocr"]["lines"]`` holds ``{"text", "conf", "box": [x0, y0, x1, y1], "words": [[x0, x1], ...]}``
    records in reading order, in the pixels of the page at reading resolution (``meta["ocr"]["size"]``;
    pages of more than ``strip_pixels`` are read in overlapping strips, ``engines.read_page``), and
    ``meta["ocr"]["x_height"]`` the median x-height of its lines (``crops.x_height``). The filter
    columns ``ocr_text_area``, ``ocr_mean_conf`` (character-weighted) and ``ocr_words`` go to the top of ``meta``. A row with a known transcript
    (``txt``: a PDF page's text layer, a JSONL or ``.txt`` transcript) also gets ``ocr_agreement``,
    the word F1 of what OCR read against it, and ``meta["ocr"]["transcript"]`` its precision and recall.
    ``ocr_scripts`` (each writing script's share of the letters of the known transcript, else the
    script tesseract detects on the page, where ``route`` asks for detection, else of what OCR read)
    and ``ocr_unsupported`` (the shares of scripts the engine that read the page does not read) let
    ``ocr_filter`` name a page's script instead of blaming low confidence.

    ``route`` lists further engines (``rapidocr:<model set>``, ``tesseract:<packs>``): a page whose
    main script the stage's own engine does not read is read by the first of them that does, and
    ``meta["ocr"]["engine"]`` names the one that read it. The main script comes from the page's
    transcript where it has one, else from tesseract's script detection (``engines.osd_script``,
    where tesseract is installed), else from what the stage's own engine read
    (``meta["ocr"]["script"]`` says which). Without ``route`` nothing is detected, nothing changes.
    """

    name = "ocr"
    modalities = ("image", "ocr")
    outputs = ("txt",)
    batch_size = 8

    engine: Literal["rapidocr", "tesseract"] = "rapidocr"
    models: str = "ppocrv6-tiny"  # rapidocr: ppocrv4 | ppocrv5 | ppocrv6-tiny | ppocrv6-small (engines.MODEL_SETS)
    det_model: str = ""  # rapidocr: explicit weights (local path or s3://) override the set's
    rec_model: str = ""
    rec_keys: str = ""
    lang: str = "eng"  # tesseract: traineddata names, e.g. "eng+deu"
    threads: PositiveInt = 1  # per actor; scale out with actors, not threads
    min_conf: Fraction = 0.5  # lines read with less confidence are discarded
    read: tuple[str, ...] = ("ocr",)  # modalities to OCR; other rows pass through untouched
    strip_pixels: PositiveInt = 4_000_000  # the most pixels one engine pass reads (taller pages: strips)
    strip_overlap: PositiveInt = 192  # rows strips share; more than the tallest line
    write_txt: bool = False  # rows without a transcript get the OCR text as ``txt``
    cjk: Literal["char", "bigram"] = "char"
    route: tuple[str, ...] = ()  # further engines by script: "tesseract:rus", "rapidocr:ppocrv6-small", ...

    def setup(self) -> None:
        if self.engine == "rapidocr":
            params = {
                "models": self.models,
                "det_model": self.det_model,
                "rec_model": self.rec_model,
                "rec_keys": self.rec_keys,
            }
        else:
            params = {"lang": self.lang}
        engines = [(self._tag(), load_engine(self.engine, threads=self.threads, min_conf=self.min_conf, **params))]
        for spec in self.route:
            name, params = parse_spec(spec)
            engine = load_engine(name, threads=self.threads, min_conf=self.min_conf, **params)
            if engine.scripts is None:
                raise ValueError(f"ocr.route: {spec} does not say which scripts it reads, so no page can go to it")
            engines.append((spec, engine))
        self.hold("_engines", engines)

    def _tag(self) -> str:
        if self.engine == "rapidocr":
            return f"rapidocr:{self.models}" + ("+own-weights" if self.det_model or self.rec_model else "")
        return f"tesseract:{self.lang}"

    def _route(self, script: str | None):
        """The first configured engine that reads ``script``: the stage's own unless it does not."""
        first = self._engines[0]
        if script is None or first[1].scripts is None or script in first[1].scripts:
            return first
        return next((e for e in self._engines[1:] if script in e[1].scripts), first)

    def process_row(self, row: dict) -> dict:
        if row["modality"] not in self.read:
            return row
        rgb = _picture(row)
        h, w = rgb.shape[:2]
        known = bytes(row["txt"]).decode("utf-8") if row.get("txt") is not None else None
        script, found_by = _main_script(known), "transcript"
        if script is None and len(self._engines) > 1:
            script, found_by = osd_script(rgb), "osd"
        tag, engine = self._route(script)
        lines = read_page(engine, rgb, self.strip_pixels, self.strip_overlap)
        text = "\n".join(line.text for line in lines)
        if script is None and len(self._engines) > 1:  # no transcript, no OSD: what the first engine read
            script, found_by = _main_script(text), "ocr"
            routed = self._route(script)
            if routed[0] != tag:
                tag, engine = routed
                lines = read_page(engine, rgb, self.strip_pixels, self.strip_overlap)
                text = "\n".join(line.text for line in lines)
        gray = rgb.min(axis=2) if rgb.ndim == 3 else rgb
        chars = [len(line.text) for line in lines]
        meta = row["meta"]
        heights = [crops.x_height(gray, line.box) for line in lines]
        meta["ocr"] = {
            "engine": tag,
            "size": [w, h],
            **({"script": {"name": script, "by": found_by}} if script is not None and len(self._engines) > 1 else {}),
            "x_height": round(float(np.median(heights)), 1) if heights else 0.0,
            "lines": [line.compact() for line in lines],
        }
        meta["ocr_text_area"] = round(crops.text_area_ratio([line.box for line in lines], w, h), 4)
        meta["ocr_mean_conf"] = round(float(np.average([x.conf for x in lines], weights=chars)) if lines else 0.0, 4)
        meta["ocr_words"] = len(tokenize(text, self.cjk))
        if known is not None:
            precision, recall = word_scores(text, known, self.cjk)
            meta["ocr"]["transcript"] = {"precision": round(precision, 4), "recall": round(recall, 4)}
            meta["ocr_agreement"] = round(
                2 * precision * recall / (precision + recall) if precision + recall else 0.0, 4
            )
        if found_by == "osd" and script is not None:
            self._scripts(meta, {script: 1}, engine)  # the detector's call on the whole page beats a misreading
        else:
            self._scripts(meta, letter_scripts(known if known is not None else text), engine)
        if self.write_txt and row.get("txt") is None:
            row["txt"] = text.encode("utf-8")
        return row

    def _scripts(self, meta: dict, counts, engine) -> None:
        """``ocr_scripts``: each script's share of the page's letters (``counts``: letters per script);
        ``ocr_unsupported``: those of scripts the engine does not read (where it says which it reads)."""
        total = sum(counts.values())
        if not total:
            return
        meta["ocr_scripts"] = {s: round(n / total, 4) for s, n in sorted(counts.items(), key=lambda kv: -kv[1])}
        if engine.scripts is not None:
            meta["ocr_unsupported"] = {s: v for s, v in meta["ocr_scripts"].items() if s not in engine.scripts}


def _main_script(text: str | None) -> str | None:
    """The script most of ``text``'s letters are in; None without letters."""
    counts = letter_scripts(text or "")
    return counts.most_common(1)[0][0] if counts else None


@dataclasses.dataclass(frozen=True)
class OcrFilter(Filter):
    """Drop OCR'd rows with no readable words, too little text area, or low mean confidence.

    ``min_mean_conf`` 0.85 suits the default models: rendered pages read at >= 0.92 (ppocrv6-tiny
    and tesseract, clean and degraded), while the "text" ppocrv6-tiny finds in text-free photographs
    (coins, a portrait) scores 0.67-0.69. With ``ppocrv6-small`` use about 0.95: its pages read at
    >= 0.989 but it invents text in 7 of 16 photographs at up to 0.90.

    ``min_agreement`` drops a row whose OCR and known transcript disagree (``ocr_agreement``, word
    F1): a page read badly, or a PDF text layer that is not the visible text (a broken font encoding,
    hidden text). Rows without a transcript are not judged by it. A page with more than
    ``max_unsupported_script`` of its letters in scripts the engine does not read is dropped as
    ``unsupported_script``, naming the script, before any other check: its low confidence or
    missing words say nothing about the page.
    """

    name = "ocr_filter"
    modalities = ("image", "ocr")

    min_words: NonNegativeInt = 1
    min_text_area: Fraction = 0.0  # share of the picture covered by text lines
    min_mean_conf: Fraction = 0.85
    min_agreement: Fraction = 0.0
    max_unsupported_script: Fraction = 0.5

    def reason(self, row: dict) -> str | None:
        meta = row["meta"]
        if "ocr" not in meta:
            return None  # not OCR'd (another modality, or not in ``ocr.read``)
        words, area, conf = meta["ocr_words"], meta["ocr_text_area"], meta["ocr_mean_conf"]
        unsupported = meta.get("ocr_unsupported") or {}
        if sum(unsupported.values()) > self.max_unsupported_script:
            script, share = max(unsupported.items(), key=lambda kv: kv[1])
            engine = meta["ocr"]["engine"]
            how = "by tesseract's script detection" if meta["ocr"].get("script", {}).get("by") == "osd" else None
            how = how or f"{share:.0%} of the page's letters"
            return f"unsupported_script: {script} ({how}); {engine} does not read it"
        if words == 0 and self.min_words > 0:
            return f"no_text: no readable words ({len(meta['ocr']['lines'])} lines)"
        if words < self.min_words:
            return f"too_few_words: {words} < {self.min_words}"
        if area < self.min_text_area:
            return f"low_text_area: {area:.4f} < {self.min_text_area}"
        if conf < self.min_mean_conf:
            return f"low_confidence: {conf:.3f} < {self.min_mean_conf}"
        agreement = meta.get("ocr_agreement")
        if agreement is not None and agreement < self.min_agreement:
            return f"low_agreement: OCR and transcript agree on {agreement:.3f} of words < {self.min_agreement}"
        return None


@dataclasses.dataclass(frozen=True)
class OcrCrop(Stage):
    """Store what the encoder can read of a page: its text-dense crops, and the whole page if legible.

    Crops are ``size`` x ``size`` windows of the page at reading resolution (``crops.dense_crops``:
    the densest window first, then the densest of the text left, near-ties in reading order, up to
    ``max_crops``, each holding at least ``min_words`` words no earlier crop holds and sharing at
    most ``max_overlap`` of its area with another); each is a sample ``{key}-r{n}`` of its own: its
    ``jpg``, its ``txt`` (the OCR text of the words inside it) and ``meta["ocr"]`` (those words'
    lines, in the crop's pixels), from which ``ocr_labels`` gives it its own word ids.
    ``meta["ocr_crop"]`` records its window in the page's pixels.

    Legibility rule: the whole page (its training-size ``jpg``) is stored too when the median
    x-height of its OCR'd lines, scaled to the training copy (``image_decode``'s ``out_width`` /
    ``out_height`` over the page's size), is at least ``min_x_height`` pixels. The shipped recogniser
    reads text down to an x-height of 4 px (PDF pages at 150 dpi: 7- and 8-px Latin, x-height 4,
    word recall 0.967 and 0.991; 6-px, x-height 3, 0.824; tests/benchmarks/RESULTS.md, "PDF pages
    and dense documents"); the default 5 px keeps a pixel of margin for a copy shrunk from a larger
    page. The page sample is ``{key}-page`` beside crops, or keeps the page's key when it is the only
    sample; so does a lone crop. A page that fits one window gives no crops (its training copy is
    already at reading size). A page with neither a legible whole nor a crop is dropped as
    ``illegible``.
    """

    name = "ocr_crop"
    modalities = ("image", "ocr")
    outputs = ("jpg", "txt")
    fans_out = True

    size: PositiveInt = 448
    max_crops: PositiveInt = 64  # a 2000x2800 page of 10-px text gives 38
    min_words: PositiveInt = 8
    max_overlap: Fraction = 0.3  # of a crop's area, shared with any other crop of the page
    min_x_height: NonNegativeFloat = 5.0
    quality: Annotated[int, Range(1, 100)] = 92

    def process_row(self, row: dict) -> list[dict]:
        meta = row["meta"]
        ocr = meta.get("ocr")
        if not ocr or not ocr["lines"]:
            return [row]
        lines = lines_of(meta)
        w, h = ocr["size"]
        if "out_width" not in meta:
            raise ValueError("ocr_crop needs the training copy's size (meta out_width): run image_decode first")
        x_height = ocr.get("x_height", 0.0) * max(meta["out_width"] / w, meta["out_height"] / h)
        legible = x_height >= self.min_x_height
        windows = []
        if w > self.size or h > self.size:
            boxes = crops.word_boxes(lines)
            windows = crops.dense_crops(boxes, w, h, self.size, self.max_crops, self.min_words, self.max_overlap)
        summary = {"crops": len(windows), "page": legible, "x_height_at_training": round(x_height, 2)}
        meta["ocr_crops"] = summary
        if not windows and not legible:
            why = f"x-height {x_height:.1f} px at training size < {self.min_x_height} and no crop of {self.min_words}+ words"
            return [dict(row, keep=False, drop_reason=f"illegible: {why}")]
        if not windows:
            return [row]
        rgb = _picture(row)
        if rgb.shape[:2] != (h, w):
            raise ValueError(f"picture is {rgb.shape[1]}x{rgb.shape[0]}, OCR read {w}x{h}: run ocr_crop after ocr")
        samples = [self._crop(row, rgb, lines, n, window) for n, window in enumerate(windows)]
        if legible:
            samples.insert(0, dict(row, key=f"{row['key']}-page", meta=dict(meta, ocr_crops=summary)))
        if len(samples) == 1:  # the page is its one sample: kept, dropped or failed as that sample
            return [dict(samples[0], key=row["key"], meta=dict(samples[0]["meta"], ocr_crops=summary))]
        return [row, *samples]

    def _crop(self, row: dict, rgb: np.ndarray, lines: list, n: int, window) -> dict:
        held = crops.crop_lines(lines, window)
        text = "\n".join(line.text for line in held)
        meta = {k: v for k, v in row["meta"].items() if k != "ocr_crops"}
        x0, y0, x1, y1 = window
        meta["ocr"] = dict(meta["ocr"], size=[x1 - x0, y1 - y0], lines=[line.compact() for line in held])
        meta.update(out_width=x1 - x0, out_height=y1 - y0, ocr_words=sum(len(line.words) for line in held))
        meta["ocr_crop"] = {"box": list(window), "n": n, "txt": "ocr"}
        return {
            "key": f"{row['key']}-r{n}",
            "jpg": crops.crop_jpeg(rgb, window, self.quality),
            "txt": text.encode(),
            "meta": meta,
        }


@dataclasses.dataclass(frozen=True)
class OcrVocab(GlobalStep):
    """Build the word vocabulary over every live OCR'd row; return ``ocr_labels`` for the next pass."""

    name = "ocr_vocab"
    columns = ("key", "modality", "meta")

    size: PositiveInt = 365_187  # the reference's OCR head
    min_count: PositiveInt = 5  # images a word must appear in
    max_words: PositiveInt = 100  # word ids per image
    cjk: Literal["char", "bigram"] = "char"

    def run(self, ds, workdir: str, rows: int) -> Stage:
        return self._vocab(count_words(ds, self.cjk, self.min_count), workdir)

    def run_local(self, table, workdir: str) -> Stage:
        return self._vocab(count_words_local(table, self.cjk), workdir)

    def _vocab(self, counts, workdir: str) -> Stage:
        """The ``size`` most frequent words of ``counts`` (word, images holding it) as the vocabulary."""
        frame = rank(counts, self.size, self.min_count)
        uri = storage.join(workdir, "ocr_vocab.tsv")
        digest = write_vocab(frame, uri)
        summary = {
            "words": len(frame),
            "sha256": digest,
            "config": dataclasses.asdict(self),
            "min_count_seen": int(frame["count"].min()) if len(frame) else None,
        }
        storage.write_bytes(storage.join(workdir, "ocr_vocab.json"), json.dumps(summary, indent=1).encode())
        return OcrLabels(vocab=uri, max_words=self.max_words, cjk=self.cjk)


@dataclasses.dataclass(frozen=True)
class OcrLabels(Stage):
    """Word ids (``words_npy``, int32 .npy, at most ``max_words``) for every OCR'd row.

    Ordered by line confidence, then reading order. A row with no known word gets an empty
    array and ``meta["ocr_no_words"] = True``; no id is ever padding.
    """

    name = "ocr_labels"
    modalities = ("image", "ocr")
    outputs = ("words_npy",)

    vocab: str = ""  # the TSV ``ocr_vocab`` wrote (or a released one)
    max_words: PositiveInt = 100
    cjk: Literal["char", "bigram"] = "char"

    def setup(self) -> None:
        words, digest = read_vocab(self.vocab)
        self.hold("_vocab", words)
        self.hold("_digest", digest[:16])

    def process_row(self, row: dict) -> dict:
        meta = row["meta"]
        if "ocr" not in meta:
            return row
        result = label(lines_of(meta), self._vocab, self.max_words, self.cjk)
        row["words_npy"] = encode_npy(result.ids)
        meta.update(ocr_vocab=self._digest, ocr_label_words=len(result.ids), ocr_oov=result.oov)
        meta["ocr_no_words"] = len(result.ids) == 0
        return row
