"""OCR text to word tokens, the same way for the vocabulary, the labels and the accuracy metrics.

Normalisation: Unicode NFKC (full-width forms, ligatures and compatibility characters fold to
their plain form), then ``str.casefold`` (``Straße`` and ``STRASSE`` meet). Tokens are language
independent: no stemming and no stop words, the vocabulary decides what counts.

Segmentation: a word is a run of letters, marks and digits (Unicode categories L, M, N), joined
across ``'`` ``’`` ``-`` only between two word characters ("don't", "x-ray" stay one token) and
across ``.`` ``,`` between two digits ("3.14");
everything else separates. Scripts written without spaces (Han, Hiragana, Katakana) cannot be
split by whitespace, so each run of them becomes per-character tokens (``cjk="char"``, the
default: the vocabulary then holds characters, which cover unseen compounds) or overlapping
bigrams (``cjk="bigram"``, a run of one character stays one token). Hangul is written with
spaces and is treated as a whitespace language. Thai, Lao, Khmer and Myanmar also lack spaces
and are not segmented here: a whole run becomes one token.
"""

from __future__ import annotations

import unicodedata
from collections import Counter

JOINERS = frozenset("'’-")
CJK_RANGES = (  # Hiragana, Katakana, Han and its extensions
    (0x3040, 0x30FF),
    (0x31F0, 0x31FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x20000, 0x2FA1F),
)


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def is_cjk(ch: str) -> bool:
    o = ord(ch)
    return any(lo <= o <= hi for lo, hi in CJK_RANGES)


def _is_word(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LMN"


def tokenize(text: str, cjk: str = "char") -> list[str]:
    """Normalised word tokens in reading order (see the module docstring for the rule)."""
    if cjk not in ("char", "bigram"):
        raise ValueError(f"cjk must be 'char' or 'bigram', got {cjk!r}")
    text = normalize(text)
    tokens: list[str] = []
    word: list[str] = []
    run: list[str] = []

    def flush_word():
        if word:
            tokens.append("".join(word))
            word.clear()

    def flush_run():
        if run:
            if cjk == "char" or len(run) == 1:
                tokens.extend(run)
            else:
                tokens.extend(a + b for a, b in zip(run, run[1:], strict=False))
            run.clear()

    for i, ch in enumerate(text):
        if is_cjk(ch):
            flush_word()
            run.append(ch)
        elif _is_word(ch):
            flush_run()
            word.append(ch)
        elif ch in JOINERS and word and i + 1 < len(text) and _is_word(text[i + 1]) and not is_cjk(text[i + 1]):
            word.append(ch)
        elif ch in ".," and word and word[-1].isdigit() and i + 1 < len(text) and text[i + 1].isdigit():
            word.append(ch)  # 3.14, 1,000
        else:
            flush_word()
            flush_run()
    flush_word()
    flush_run()
    return tokens


def word_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) character spans of a line's words, the units OCR places on the page: runs of
    non-space characters, each Han or kana character a word of its own (those scripts write no
    spaces). Tokens never cross a span (a CJK bigram may join two; ``curate.ocr.crops`` keeps
    contiguous spans together)."""
    spans, start = [], None
    for i, ch in enumerate(text):
        if ch.isspace() or is_cjk(ch):
            if start is not None:
                spans.append((start, i))
            start = None
            if is_cjk(ch):
                spans.append((i, i + 1))
        elif start is None:
            start = i
    if start is not None:
        spans.append((start, len(text)))
    return spans


def word_scores(predicted: str, truth: str, cjk: str = "char") -> tuple[float, float]:
    """(precision, recall) of the predicted tokens against the true ones, as multisets."""
    pred, true = Counter(tokenize(predicted, cjk)), Counter(tokenize(truth, cjk))
    hits = sum((pred & true).values())
    return hits / max(1, sum(pred.values())), hits / max(1, sum(true.values()))


def _squash(text: str) -> str:
    """Normalised text, whitespace runs as one space, no space beside a CJK character (none is written)."""
    t = " ".join(normalize(text).split())
    return "".join(c for i, c in enumerate(t) if c != " " or not (is_cjk(t[i - 1]) or is_cjk(t[i + 1])))


def char_accuracy(predicted: str, truth: str) -> float:
    """1 - character error rate (Levenshtein distance / truth length) on squashed text (``_squash``)."""
    a, b = _squash(predicted), _squash(truth)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return max(0.0, 1.0 - prev[-1] / max(1, len(b)))
