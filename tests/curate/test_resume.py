"""A run killed with SIGKILL mid-way, rerun with the same command, equals an uninterrupted run.

Killed in the last pass (shards being written) under the local executor, and in the first pass
(before the dedup step) under Ray, whose driver dies with its local cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from curate.ledger import read_ledger

ARGS = ["--quiet"]  # the demo manifest's 16 inputs per partition: seven partitions, so a run can die between them


def _curate(out: Path, corpus: Path, executor: str = "local", **kw) -> subprocess.Popen:
    env = dict(os.environ, DEMO_CORPUS=str(corpus))
    cmd = [sys.executable, "-m", "curate", "run", "manifests/demo.toml", f"--output.dir={out}", *ARGS]
    cmd.append(f"--executor={executor}")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def _state(out: Path):
    tars = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.tar"))}
    index = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("index.json"))}
    return tars, index, read_ledger(str(out)).sort_values("key").reset_index(drop=True)


@pytest.mark.parametrize(
    "executor, marker", [("local", "_partitions/000002.json"), ("ray", "_work/pass0/part-000002.done")]
)
def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_result(demo_local, demo_corpus, tmp_path, executor, marker):
    whole = demo_local  # the uninterrupted run
    killed = tmp_path / "killed"
    proc = _curate(killed, demo_corpus, executor)
    deadline = time.time() + 600
    while not (killed / marker).exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    pattern = "_partitions/*.json" if marker.startswith("_partitions") else "_work/pass0/*.done"
    done, total = len(list(killed.glob(pattern))), len(list(whole.glob(pattern)))
    assert 1 <= done < total and not (killed / "summary.json").exists()

    rerun = _curate(killed, demo_corpus, executor)
    output = rerun.communicate(timeout=300)[0].decode()
    assert rerun.returncode == 0, output
    tars, index, ledger = _state(killed)
    want_tars, want_index, want_ledger = _state(whole)
    assert tars == want_tars and index == want_index
    pd.testing.assert_frame_equal(ledger, want_ledger)
    # the rerun's dedup step counts its rows from the markers the killed run left and those it wrote
    groups = [
        json.loads(next(out.glob("_work/step*-dedup_group/dedup_summary.json")).read_text()) for out in (killed, whole)
    ]
    assert groups[0]["rows"] == groups[1]["rows"] > 50
