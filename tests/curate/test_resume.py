"""A run killed with SIGKILL mid-way, rerun with the same command, equals an uninterrupted run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from curate.pipeline import read_ledger

ARGS = ["--executor=local", "--partition_size=4", "--quiet"]


def _curate(out: Path, corpus: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, DEMO_CORPUS=str(corpus))
    cmd = [sys.executable, "-m", "curate", "run", "manifests/demo.toml", f"--output.dir={out}", *ARGS]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def _state(out: Path):
    tars = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.tar"))}
    index = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("index.json"))}
    return tars, index, read_ledger(str(out)).sort_values("key").reset_index(drop=True)


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_result(demo_corpus, tmp_path):
    whole = tmp_path / "whole"
    assert _curate(whole, demo_corpus).wait(timeout=300) == 0

    killed = tmp_path / "killed"
    proc = _curate(killed, demo_corpus)
    deadline = time.time() + 300
    while not (killed / "_partitions" / "000002.json").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((killed / "_partitions").glob("*.json")))
    total = len(list((whole / "_partitions").glob("*.json")))
    assert 3 <= done < total and not (killed / "summary.json").exists()

    rerun = _curate(killed, demo_corpus)
    output = rerun.communicate(timeout=300)[0].decode()
    assert rerun.returncode == 0, output
    tars, index, ledger = _state(killed)
    want_tars, want_index, want_ledger = _state(whole)
    assert tars == want_tars and index == want_index
    pd.testing.assert_frame_equal(ledger, want_ledger)
