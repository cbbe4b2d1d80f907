"""Memory stays bounded when the input grows tenfold: the driver holds one partition at a time."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

SCRIPT = """
import json, os, sys
from curate.config import load_run
from curate.pipeline import run
cfg, stages = load_run(sys.argv[1])
summary = run(cfg, stages, progress=False, report=False)
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child would report its parent's peak
peak_kib = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
print(json.dumps({"kept": summary["kept"], "peak_mib": peak_kib / 1024}), flush=True)
# measured; leave without interpreter teardown, which once aborted in a library's C++ thread pool
# ("terminate called without an active exception", after the run had finished): not what this measures
os._exit(0)
"""


def _corpus(root, n, rng):
    root.mkdir(parents=True)
    for i in range(n):  # noise compresses badly: every image is ~0.5 MB in and ~150 kB out
        Image.fromarray(rng.integers(0, 255, (640, 640, 3), dtype=np.uint8)).save(root / f"i{i:04d}.jpg", quality=90)


def _peak(tmp_path, corpus, name) -> dict:
    manifest = tmp_path / f"{name}.toml"
    manifest.write_text(
        f'name = "{name}"\nexecutor = "local"\npartition_size = 20\n[output]\ndir = "{tmp_path / name}"\n'
        f'[[sources]]\nmodality = "image"\nuri = "{corpus}"\n[[stages]]\nname = "image_decode"\nsize = 448\n'
    )
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(manifest)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_rss_does_not_grow_with_the_corpus(tmp_path):
    rng = np.random.default_rng(0)
    _corpus(tmp_path / "small", 20, rng)
    _corpus(tmp_path / "large", 200, rng)
    small, large = _peak(tmp_path, tmp_path / "small", "small"), _peak(tmp_path, tmp_path / "large", "large")
    assert (small["kept"], large["kept"]) == (20, 200)
    held_if_unbounded = sum(p.stat().st_size for p in (tmp_path / "large" / "shards").rglob("*.tar")) / 2**20
    print(f"peak RSS: {small['peak_mib']:.0f} MiB for 20 inputs, {large['peak_mib']:.0f} MiB for 200")
    # holding every output at once would add ~held_if_unbounded MiB; one partition at a time adds far less
    assert large["peak_mib"] - small["peak_mib"] < held_if_unbounded / 3, (small, large, held_if_unbounded)
