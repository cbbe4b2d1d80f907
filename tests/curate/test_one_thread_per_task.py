"""A pipeline task owns one core, so FFmpeg must not start threads of its own inside one.

PyAV's ``reformat`` without ``threads`` lets swscale start a thread per visible core for every
frame: the video signature's 64x64 grey thumbnails took 2.76 CPU-s for 60 clips on two visible cores
against 0.70 with ``threads=1`` (and the 2-CPU pipeline run spent 40 % more worker CPU than the run
confined to one core; tests/benchmarks/RESULTS.md, End-to-end curation). Frame-threaded decoding
(``thread_type = "AUTO"``) costs CPU time the same way. This checks every call site in the
pipeline's packages, so a new one cannot bring the cost back.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("curate", "shards")


def _calls():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                yield path.relative_to(ROOT), node


def test_every_reformat_in_the_pipeline_asks_for_one_thread():
    found, missing = 0, []
    for path, node in _calls():
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "reformat":
            found += 1
            threads = {k.arg: k.value for k in node.keywords}.get("threads")
            if not (isinstance(threads, ast.Constant) and threads.value == 1):
                missing.append(f"{path}:{node.lineno}")
    assert found >= 3  # the codec grid (twice) and the video signature's thumbnails
    assert not missing, f"reformat without threads=1 at {missing}"


def test_no_decoder_in_the_pipeline_is_frame_threaded_unless_a_manifest_asks():
    """``codec_patchify``'s ``threads`` (default 1) may ask for FFmpeg's threads; nothing else may."""
    asked, auto = set(), []
    for path, node in _calls():
        if isinstance(node, ast.If) and "threads" in ast.unparse(node.test):
            asked |= {id(n) for n in ast.walk(node)}
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Attribute) and t.attr == "thread_type" for t in node.targets)
            and ast.unparse(node.value) == "'AUTO'"
        ):
            auto.append((path, node))
    assert len(auto) >= 1  # the codec's opt-in
    unasked = [f"{path}:{node.lineno}" for path, node in auto if id(node) not in asked]
    assert not unasked, f"frame-threaded decoding at {unasked}"
