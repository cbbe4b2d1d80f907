"""What a run over image files imports before its first image: nothing it does not use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_local_image_run_imports_neither_torch_nor_ray_before_its_first_image():
    """torch came in through webdataset (the shard writer, the shard-set lister), over a second of
    start-up for runs that never touch a shard set; Ray is for the Ray executor and global steps;
    PyAV (FFmpeg) for video; pandas for reading the ledger once the inputs are done."""
    code = (
        "import sys; import curate.__main__, curate.pipeline, curate.sink, curate.sources, curate.stages.images; "
        "print(sorted(m for m in ('torch', 'ray', 'webdataset', 'av', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
