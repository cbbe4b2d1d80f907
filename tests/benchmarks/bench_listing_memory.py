"""Driver memory while listing a large table: listing in Ray tasks against listing on the driver.

    .venv/bin/python tests/benchmarks/bench_listing_memory.py [--rows 1000000 10000000] [--baseline-max 1000000]

For each row count a parquet table is generated (``bench_sources.build_table``: URI, caption, two kept
columns, row groups of 100,000 rows, each a listing unit). A fresh child process (the driver) then
starts a local Ray cluster and runs ``curate.listing.list_run`` as a curation run does (each row
group listed in a Ray task that writes its inputs to ``_work/listing``; the driver keeps a count and
a key hash per partition) and reports its own peak RSS (``VmHWM``) and the partition count. The
baseline, in another fresh child, lists the same table on the driver (``curate.sources.list_inputs``,
every input a Python dict: how listing worked before), for row counts up to --baseline-max.
Peak RSS is the driver process alone (Ray's own processes are not counted on either side).
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench_sources import build_table
from common import machine

CHILD = r"""
import json, sys, time
from curate.config import OutputConfig, RayConfig, RunConfig, SourceConfig
mode, table, out = sys.argv[1:4]
peak = lambda: int(next(x.split()[1] for x in open("/proc/self/status") if x.startswith("VmHWM"))) / 1024
src = SourceConfig(modality="image", uri=table, format="parquet", uri_column="url", caption_column="caption",
                   keep_columns=("license", "score"))
start = time.perf_counter()
if mode == "ray":
    from curate.listing import list_run
    cfg = RunConfig(name="m", sources=(src,), stages=(), output=OutputConfig(dir=out),
                    ray=RayConfig(num_cpus=2))
    base = peak()
    partitions, _ = list_run(cfg, out, in_ray=True)
    n, inputs = len(partitions), sum(d["count"] for d in partitions.values())
else:
    from curate.sources import list_inputs
    base = peak()
    items, _ = list_inputs([src], 64)
    n, inputs = len({it["partition"] for it in items}), len(items)
print(json.dumps({"base_mib": base, "peak_mib": peak(), "partitions": n, "inputs": inputs,
                  "seconds": time.perf_counter() - start}))
"""


def child(mode: str, table: str, out: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, table, out], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{mode} child failed:\n{proc.stderr[-3000:]}")
    # the measurement is the last JSON line: Ray may print to stdout after it (at 10M rows, at shutdown)
    return json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--baseline-max", type=int, default=1_000_000)
    args = ap.parse_args()
    print(machine())
    print(f"{'rows':>11} {'run':<28} {'driver peak MiB':>15} {'after imports':>13} {'partitions':>10} {'s':>6}")
    for rows in args.rows:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            made = time.perf_counter()
            table = build_table(Path(tmp), rows)
            made = time.perf_counter() - made
            runs = [("Ray tasks (list_run)", child("ray", table, str(Path(tmp, "out"))))]
            if rows <= args.baseline_max:
                runs.append(("driver (list_inputs, before)", child("driver", table, str(Path(tmp, "out2")))))
            for name, r in runs:
                assert r["inputs"] == rows, r
                print(
                    f"{rows:>11,} {name:<28} {r['peak_mib']:>15,.0f} {r['base_mib']:>13,.0f} "
                    f"{r['partitions']:>10,} {r['seconds']:>6.0f}"
                )
            if len(runs) == 2:
                print(
                    f"{'':>11} driver peak, Ray tasks / on the driver: {runs[0][1]['peak_mib'] / runs[1][1]['peak_mib']:.2f}"
                )
            print(f"{'':>11} (table of {Path(table).stat().st_size / 2**20:,.0f} MiB made in {made:.0f} s)")


if __name__ == "__main__":
    main()
