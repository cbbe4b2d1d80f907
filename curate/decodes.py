"""One decode per picture for every stage of a task that needs its pixels.

Stages read pixels independently (``dedup_signatures``, ``tiny_embed`` and ``embed`` open the curated
``jpg``; ``ocr`` and ``ocr_crop`` read the page at reading resolution from its source), and a stage
knows nothing of the others. Inside
:func:`shared` (the stage chain of one partition: ``curate.stage.apply_chain``, in process and in
a Ray task alike), :func:`once` computes each decode once and hands every later stage the same
result; outside it, every call decodes. Results are keyed by what was decoded (the bytes
themselves, or a source URI with its decode settings), so a hit is always the very decode a
stage would have made: outputs are the same bits with and without sharing.

:data:`COUNTS` counts the decodes this process made, by kind: tests and benchmarks read it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import Counter
from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")

COUNTS: Counter[str] = Counter()
BUDGET = 512 << 20  # bytes of decoded pixels one chain holds; past it, later decodes are not kept
_memo: contextvars.ContextVar[dict | None] = contextvars.ContextVar("decodes", default=None)


@contextlib.contextmanager
def shared(budget: int = BUDGET):
    """Share decodes among the stages run inside (nested: the outermost context holds them)."""
    if _memo.get() is not None:
        yield
        return
    token = _memo.set({"held": 0, "budget": budget, "results": {}})
    try:
        yield
    finally:
        _memo.reset(token)


def once(kind: str, key: Hashable, decode: Callable[[], T], nbytes: Callable[[T], int]) -> T:
    """``decode()`` (counted under ``kind``), or the result an earlier stage of this chain got for ``key``."""
    memo = _memo.get()
    if memo is not None and (kind, key) in memo["results"]:
        return memo["results"][kind, key]
    result = decode()
    COUNTS[kind] += 1
    if memo is not None and memo["held"] + nbytes(result) <= memo["budget"]:
        memo["results"][kind, key] = result
        memo["held"] += nbytes(result)
    return result
