"""The run's own console: per-pass progress as plain lines or one updating bar, global step phases,
the projected cost at the end of the summary, and Ray's output kept out of the console."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from curate.console import RAY_LOG, Console
from curate.ledger import format_summary, projected_cost

# three partitions as write_pass returns them: 4 + 4 + 2 inputs
FINISHED = [
    {"failures": {"inputs": 4}, "outcomes": {"kept": 3, "dropped": 1, "failed": 0}},
    {"failures": {"inputs": 4}, "outcomes": {"kept": 2, "dropped": 0, "failed": 2}},
    {"failures": {"inputs": 2}, "outcomes": {"kept": 2, "dropped": 0, "failed": 0}},
]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_off_a_terminal_count_every_outcome():
    stream = io.StringIO()
    console = Console(stream, every_s=0.0)  # a line for every partition but the last, then the pass's own
    shown = console.progress("pass 1/2", 3, 10)
    for finished in FINISHED:
        shown.update(finished)
    shown.close()
    with console.phase("global step dedup_group"):
        pass
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5 and "\r" not in stream.getvalue()
    assert (
        lines[0].startswith("pass 1/2: 1/3 partitions, 4 inputs (kept 3, dropped 1, failed 0 | ") and "ETA" in lines[0]
    )
    assert lines[2].startswith("pass 1/2: 3/3 partitions, 10 inputs (kept 7, dropped 1, failed 2 | ")
    assert lines[2].endswith(" s") and "ETA" not in lines[2]
    assert lines[3] == "global step dedup_group ..." and lines[4].startswith("global step dedup_group: done in ")


def test_off_a_terminal_lines_come_at_most_every_interval():
    stream = io.StringIO()
    shown = Console(stream).progress("pass 1/1", 3, 10)  # the default interval: 30 s
    for finished in FINISHED:
        shown.update(finished)
    shown.close()
    assert stream.getvalue().count("\n") == 1


def test_a_terminal_gets_one_updating_bar_and_quiet_gets_nothing():
    tty = _Terminal()
    shown = Console(tty).progress("pass 1/1", 3, 10)
    for finished in FINISHED:
        shown.update(finished)
    shown.close()
    text = tty.getvalue()
    assert text.count("\n") == 1 and text.count("\r") >= 2  # drawn, then redrawn in place
    assert "3/3 partitions" in text and "kept 7, dropped 1, failed 2" in text and "ETA" in text

    quiet = _Terminal()
    console = Console(quiet, quiet=True)
    shown = console.progress("pass 1/1", 3, 10)
    shown.update(FINISHED[0])
    shown.close()
    console.line("x")
    assert quiet.getvalue() == ""


def test_the_summary_ends_with_the_cost_at_scale():
    stages = {"image_decode": {"seconds": 2.0}, "ocr": {"seconds": 8.0}}
    cost = projected_cost(stages, {"dedup_group": 10.0}, inputs=200)
    assert cost["core_seconds_per_1000_inputs"] == {"image_decode": 10.0, "ocr": 40.0, "dedup_group": 50.0}
    assert cost["core_hours_at_scale"] == round(100 * 100_000_000 / 1000 / 3600, 1)  # 100 core-s per 1,000 inputs
    summary = {
        "inputs": 200,
        "kept": 200,
        "dropped": 0,
        "failed": 0,
        "kept_by_modality": {"image": 200},
        "dropped_by_reason": {},
        "failed_by_reason": {},
        "shards": 1,
        "shard_bytes": 1,
        "seconds": 1.0,
        "cost": cost,
    }
    lines = format_summary(summary).splitlines()
    assert lines[-5] == "cost: core-seconds per 1,000 inputs, measured on this run:"
    assert lines[-2].split() == ["dedup_group", "(global", "step)", "50.00"]
    assert lines[-1].startswith("100,000,000 inputs of this mix: 2,778 core-hours")


def test_ray_output_goes_to_the_run_log_and_ours_to_the_console(tmp_path):
    """Writes to the file descriptors (as Ray's C++ core does) and to sys.stderr land in _logs/ray.log."""
    code = (
        "import os, sys\n"
        "from curate.console import ray_output_to\n"
        f"with ray_output_to({str(tmp_path)!r}) as console:\n"
        "    os.write(1, b'from C++ on fd 1\\n')\n"
        "    os.write(2, b'from C++ on fd 2\\n')\n"
        "    print('a warning on sys.stderr', file=sys.stderr)\n"
        "    print('print on sys.stdout')\n"
        "    print('our progress', file=console)\n"
        "print('the summary')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=os.getcwd())
    assert done.returncode == 0, done.stderr
    assert done.stdout == "our progress\nthe summary\n" and done.stderr == ""
    log = (tmp_path / RAY_LOG).read_text()
    assert sorted(log.splitlines()) == [
        "a warning on sys.stderr",
        "from C++ on fd 1",
        "from C++ on fd 2",
        "print on sys.stdout",
    ]
