"""Run one row of a stage in a child process, so a crashing or hanging decoder fails one input.

A native decoder that segfaults would otherwise take the whole Ray worker (and its batch) down,
and one that hangs would stall a partition forever. The child is forked (no re-import, so it
starts in milliseconds), keeps the stage's ``setup()`` state between rows, and is replaced
after a crash or a timeout.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

_READY: dict[int, object] = {}  # in the child: stages whose setup() ran, by identity of their parameters


class WorkerCrashed(RuntimeError):
    """The child process died while handling the row (a crash in native code, or it was killed)."""


class StageTimeout(TimeoutError):
    """The row took longer than the stage's ``timeout_s``."""


def _process_in_child(stage, row: dict) -> dict:
    key = hash(stage)
    if key not in _READY:
        faulthandler.disable()  # a crash is reported as the row's failure, not as a dump in the log
        stage.setup()
        _READY[key] = stage
    stage = _READY[key]
    return stage.process_row(row) if stage.fans_out else stage.process_batch([row])[0]


class IsolatedRunner:
    """One child process per stage per worker; replaced when it crashes or times out."""

    def __init__(self, stage):
        self.stage = stage
        self.pool: ProcessPoolExecutor | None = None

    def __call__(self, row: dict) -> dict:
        if self.pool is None:
            self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
        future = self.pool.submit(_process_in_child, self.stage, row)
        timeout = self.stage.timeout_s or None
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            self._discard()
            raise StageTimeout(f"no result after {timeout:g}s; the worker process was killed") from None
        except BrokenProcessPool:
            codes = [c for c in self._discard() if c is not None]
            how = f"exit code {codes[0]}" if codes else "exit code not known: the child was reaped before it was read"
            raise WorkerCrashed(f"the worker process died ({how})") from None

    def _discard(self) -> list:
        pool, self.pool = self.pool, None
        processes = list((pool._processes or {}).values()) if pool else []  # noqa: SLF001
        for proc in processes:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
        if pool:
            pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:  # the executor's own thread may be reaping it: its exit code lands a moment later
            deadline = time.monotonic() + 2
            while proc.exitcode is None and not proc.is_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
        return [p.exitcode for p in processes]
