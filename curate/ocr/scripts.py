"""Writing scripts of text, and which scripts a recogniser covers.

A letter's script is the first word of its Unicode name (``CYRILLIC SMALL LETTER PE`` is Cyrillic),
after NFKC folding (full-width Latin is Latin), with ``CJK`` named Han; digits, punctuation and
marks belong to no script and are not counted. A recogniser covers a script when its character
dictionary holds at least :data:`MIN_LETTERS` of its letters: an alphabet, not a few letters kept as
symbols (ppocrv5's 11 Cyrillic ones). What a dictionary spells a model may still not read: the
engines correct that for the model sets they ship (``curate.ocr.engines``).
"""

from __future__ import annotations

import unicodedata
from collections import Counter

MIN_LETTERS = 20
_NOT_SCRIPTS = {"MODIFIER", "FEMININE", "MASCULINE", "MICRO", "PLANCK", "ANGSTROM", "SUPERSCRIPT", "BLACK-LETTER"}
_RENAMED = {"CJK": "Han"}


def script_of(ch: str) -> str | None:
    """The script of one letter, or None for anything that is not a letter of a script."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    first = unicodedata.name(ch, "").split(" ", 1)[0]
    if not first or first in _NOT_SCRIPTS:
        return None
    return _RENAMED.get(first, first.title())


def letter_scripts(text: str) -> Counter:
    """Letters per script in ``text``."""
    return Counter(s for ch in unicodedata.normalize("NFKC", text) if (s := script_of(ch)) is not None)


def covered_scripts(characters) -> frozenset[str]:
    """The scripts a recogniser whose dictionary is ``characters`` covers (see the module docstring)."""
    counts = letter_scripts("".join(characters))
    return frozenset(s for s, n in counts.items() if n >= MIN_LETTERS)


# tesseract language packs (Debian's tesseract-ocr-LANG) and the scripts they read
TESSERACT_SCRIPTS = {
    **dict.fromkeys(
        "eng deu fra spa ita por nld swe dan nor fin pol ces slk slv hrv hun ron tur vie lat cat eus glg est lav lit".split(),
        ("Latin",),
    ),
    **dict.fromkeys("rus ukr bel bul srp mkd kaz kir mon tgk".split(), ("Cyrillic",)),
    "ell": ("Greek",),
    **dict.fromkeys("ara fas urd pus".split(), ("Arabic",)),
    "heb": ("Hebrew",),
    **dict.fromkeys("hin mar nep san".split(), ("Devanagari",)),
    "tha": ("Thai",),
    "chi_sim": ("Han",),
    "chi_tra": ("Han",),
    "jpn": ("Han", "Hiragana", "Katakana"),
    "kor": ("Hangul", "Han"),
}


def tesseract_scripts(lang: str) -> frozenset[str] | None:
    """The scripts of a tesseract ``-l`` value (``eng+rus``; ``script/Cyrillic`` packs name theirs), or
    None where a pack is not in :data:`TESSERACT_SCRIPTS` (then no page is judged by its script)."""
    out = set()
    for pack in lang.split("+"):
        if pack.startswith("script/"):
            out.add(pack.split("/", 1)[1].split("_")[0].title())
        elif pack in TESSERACT_SCRIPTS:
            out.update(TESSERACT_SCRIPTS[pack])
        else:
            return None
    return frozenset(out)
