"""What every benchmark prints beside its figures: the machine, and a CPU-time measure."""

from __future__ import annotations

import os
import platform
import statistics
import time


def machine(extra: str = "") -> str:
    """CPU model, usable cores, OS and Python: the line RESULTS.md quotes with each table."""
    cpu = "?"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    line = f"{cpu}, {cores} cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}"
    return f"{line}, {extra}" if extra else line


def cpu_seconds(fn, repeat: int, reduce=statistics.median, clock=time.process_time, warmup: bool = True) -> float:
    """Seconds of ``fn()`` over ``repeat`` runs, after one warm-up, reduced (median; min = least disturbed).

    CPU seconds by default; ``clock=time.perf_counter`` for wall time where threads or I/O count.
    """
    if warmup:
        fn()
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append(clock() - start)
    return reduce(times)
