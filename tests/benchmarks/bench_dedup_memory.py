"""Driver memory of Ray dedup grouping as the rows grow: peak RSS of the driver process at each size.

    .venv/bin/python tests/benchmarks/bench_dedup_memory.py [--rows 100000 1000000] [--baseline-max 100000]

For each row count a fresh child process (the driver) starts a local 2-CPU Ray cluster as a run does,
makes that many MinHash signatures in Ray tasks (``bench_dedup.family_caption``: every 10th caption is
a near-copy of the one before, so the true pairs are known), and runs ``dedup_group`` over them as the
pipeline does (``DedupGroup.run`` with the row count the pass markers give). It reports its own peak
RSS (``VmHWM``, shared object-store pages it touched included) and peak private memory (``RssAnon``,
sampled every 0.2 s), both also as they stood before grouping. The baseline, for row counts up to
--baseline-max, pulls the same edges to the driver (``to_pandas``) and groups them there: how the step
worked before. Ray's own processes are not counted.
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common import machine

CHILD = r"""
import json, sys, tempfile, threading, time
import pandas as pd, ray
from bench_dedup import signature_rows
from curate.cluster import init_ray
from curate.config import RayConfig
from curate.dedup.grouping import band_partitions, ray_edges
from curate.stages.dedup import DedupGroup

def status(key):
    return int(next(x.split()[1] for x in open("/proc/self/status") if x.startswith(key))) / 1024

anon = {"peak": 0.0}
def sample():
    while True:
        anon["peak"] = max(anon["peak"], status("RssAnon:"))
        time.sleep(0.2)
threading.Thread(target=sample, daemon=True).start()

mode, rows = sys.argv[1], int(sys.argv[2])
init_ray(RayConfig(num_cpus=2))
ds = ray.data.range(rows, override_num_blocks=max(2, rows // 20000))
ds = ds.map_batches(signature_rows, batch_format="numpy", batch_size=20000).materialize()
time.sleep(0.5)
before = {"hwm": status("VmHWM:"), "anon": anon["peak"]}
work = tempfile.mkdtemp()
step = DedupGroup(kinds=("minhash",))
start = time.perf_counter()
if mode == "task":
    stage = step.run(ds, work, rows)
else:  # before: the edges pulled to the driver and grouped there
    stage = step._groups(ray_edges(ds, step.config(), rows).to_pandas(), work, {"rows": rows, "band_partitions": 0})
seconds = time.perf_counter() - start
time.sleep(0.5)  # one more sample; then the peaks, before the check below reads the group table here
peaks = {"hwm": status("VmHWM:"), "anon": anon["peak"]}
table = pd.read_parquet(stage.table)
found = {tuple(sorted(g["key"])) for _, g in table.groupby("group")}
truth = {(f"doc{i - 1:08d}", f"doc{i:08d}") for i in range(9, rows, 10)}
print(json.dumps({"before": before, **peaks, "seconds": seconds,
                  "partitions": band_partitions(step.config(), rows), "groups": len(found),
                  "true": len(truth), "right": len(found & truth)}))
"""


def child(mode: str, rows: int) -> dict:
    path = os.pathsep.join([str(ROOT), str(Path(__file__).parent)])  # the workers import bench_dedup too
    env = dict(os.environ, PYTHONPATH=path, RAY_USAGE_STATS_ENABLED="0", RAY_DATA_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(rows)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{mode} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--baseline-max", type=int, default=100_000)
    args = ap.parse_args()
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"{machine()}; 1-min load average {load} at the start")
    print("| rows | groups on | driver peak RSS | before grouping | peak private | before grouping | partitions | s |")
    print("|---|---|---|---|---|---|---|---|")
    peaks = {}
    for rows in args.rows:
        modes = ["task"] + (["driver"] if rows <= args.baseline_max else [])
        for mode in modes:
            r = child(mode, rows)
            assert r["right"] == r["groups"] > 0.85 * r["true"], r  # no false group; LSH recall ~0.9
            peaks[rows, mode] = r["hwm"]
            where = "a Ray task (now)" if mode == "task" else "the driver (`to_pandas`, before)"
            print(
                f"| {rows:,} | {where} | {r['hwm']:,.0f} MiB | {r['before']['hwm']:,.0f} MiB | {r['anon']:,.0f} MiB "
                f"| {r['before']['anon']:,.0f} MiB | {r['partitions']} | {r['seconds']:.0f} |",
                flush=True,
            )
    sizes = [rows for rows in args.rows if (rows, "task") in peaks]
    if len(sizes) > 1:
        lo, hi = peaks[sizes[0], "task"], peaks[sizes[-1], "task"]
        print(f"driver peak RSS at {sizes[-1]:,} / at {sizes[0]:,} rows: {hi / lo:.2f} (goal <= 1.2)")
    print(f"1-min load average {Path('/proc/loadavg').read_text().split()[0]} at the end")


if __name__ == "__main__":
    main()
