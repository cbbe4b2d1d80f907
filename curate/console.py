"""What a run shows while it works: our own progress, not Ray's.

Per pass: partitions done of total, inputs kept / dropped / failed so far (``kept`` counts rows
still live in a pass before a global step), rows per second and the time left. On a terminal that
is one updating bar per pass (tqdm); otherwise (a log file, CI) a plain line at the end of each
pass and at most one every ``every_s`` seconds in between. A global step shows its phase: a line
when it starts and one when it is done. ``quiet`` shows nothing (the CLI then prints the summary
alone).

Ray writes its own logging, warnings and progress into the driver's stdout and stderr;
:func:`ray_output_to` sends all of it to ``_logs/ray.log`` in the output folder instead (the
CLI's default; ``--verbose`` lets it through).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import TextIO

from tqdm import tqdm

from shards import storage

RAY_LOG = "_logs/ray.log"  # relative to the output folder


class Console:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False, every_s: float = 30.0):
        self.stream, self.quiet, self.every_s = stream or sys.stdout, quiet, every_s
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())

    def line(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def progress(self, label: str, partitions: int, inputs: int) -> PassProgress:
        return PassProgress(self, label, partitions, inputs)

    @contextlib.contextmanager
    def phase(self, text: str) -> Iterator[None]:
        """``text`` while it runs, then how long it took."""
        started = time.perf_counter()
        self.line(f"{text} ...")
        yield
        self.line(f"{text}: done in {time.perf_counter() - started:.1f} s")


class PassProgress:
    """Counts of one pass as its partitions finish (``update`` takes what ``write_pass`` or
    ``write_partition`` returned for a partition)."""

    def __init__(self, console: Console, label: str, partitions: int, inputs: int):
        self.console, self.label, self.partitions, self.inputs = console, label, partitions, inputs
        self.done, self.rows, self.counts = 0, 0, {"kept": 0, "dropped": 0, "failed": 0}
        self.started = self.last_line = time.perf_counter()
        self.bar = None
        if console.terminal and not console.quiet:
            self.bar = tqdm(
                total=partitions,
                desc=label,
                unit="partition",
                file=console.stream,
                bar_format="{desc}: {n_fmt}/{total_fmt} partitions |{bar:20}| {postfix[0]}, ETA {remaining}",
                postfix=[self._counts()],
            )

    def update(self, finished: dict) -> None:
        self.done += 1
        self.rows += finished["failures"]["inputs"]
        for status, n in finished["outcomes"].items():
            self.counts[status] += n
        if self.bar is not None:
            self.bar.postfix[0] = self._counts()
            self.bar.update(1)
        elif time.perf_counter() - self.last_line >= self.console.every_s and self.done < self.partitions:
            self.last_line = time.perf_counter()
            self.console.line(self._status())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self.console.line(self._status())

    def _rate(self) -> float:
        return self.rows / max(time.perf_counter() - self.started, 1e-9)

    def _counts(self) -> str:
        return ", ".join(f"{k} {n:,}" for k, n in self.counts.items()) + f" | {self._rate():,.1f} rows/s"

    def _status(self) -> str:
        elapsed = time.perf_counter() - self.started
        if self.done >= self.partitions:
            tail = f"{elapsed:.1f} s"
        else:
            tail = f"ETA {(self.inputs - self.rows) / max(self._rate(), 1e-9):.0f} s"
        return (
            f"{self.label}: {self.done}/{self.partitions} partitions, {self.rows:,} inputs ({self._counts()}), {tail}"
        )


@contextlib.contextmanager
def ray_output_to(out: str) -> Iterator[TextIO]:
    """Send everything this process writes to its stdout and stderr (Ray's logging, warnings and
    progress, its C++ core's messages included) to ``out/_logs/ray.log``; yield a stream on the real
    stdout for our own lines. Ray Data's progress bars are turned off (before Ray is imported).

    The file descriptors themselves are redirected: Ray writes from C++ and from handlers that hold
    ``sys.stderr``, which no Python-level redirect reaches. The log collects in a local temporary
    file and is copied into the output folder (local or S3) at the end, also when the run fails.
    """
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log = tempfile.TemporaryFile()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    console = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    try:
        yield console
    finally:
        ray = sys.modules.get("ray")  # a cluster this run started: its shutdown messages belong in the log too
        if ray is not None and ray.is_initialized() and not ray_before:
            ray.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in zip((1, 2), saved, strict=True):
            os.dup2(original, fd)
            os.close(original)
        console.close()
        log.seek(0)
        data = log.read()
        log.close()
        if data:
            try:
                storage.write_bytes(storage.join(out, RAY_LOG), data)
            except OSError as exc:
                print(f"note: Ray's output could not be kept in {storage.join(out, RAY_LOG)}: {exc}", file=sys.stderr)
