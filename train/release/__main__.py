"""``python -m train.release CHECKPOINT OUT_DIR [--format native|hf|onnx]``: a self-contained encoder release.

Writes ``model.safetensors`` (encoder only; the concept heads are training machinery),
``config.json`` (architecture and preprocessing), and a model card ``README.md`` listing the
data manifests, concept-bank versions and final metrics. ``load_release(OUT_DIR)`` rebuilds
the encoder in any process; its embeddings equal the checkpoint's bit for bit. ``--format hf``
(``train.release.hf``) and ``--format onnx`` (``train.release.onnx``) build on the native release;
each format is imported only when asked for, so a native release needs neither transformers nor ONNX.
"""

from __future__ import annotations

import argparse
import sys

from train.checkpoint import CheckpointError
from train.release.native import export


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.release", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out_dir")
    parser.add_argument(
        "--format",
        choices=("native", "hf", "onnx"),
        default="native",
        help="hf: transformers AutoModel/AutoProcessor folder; onnx: adds encoder.onnx",
    )
    parser.add_argument("--probe", help="a probe's results JSON (train.experimental.probe --out) for the card")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.format == "hf":
        from train.release.hf import export_hf as write
    elif args.format == "onnx":
        from train.release.onnx import export_onnx_release as write
    else:
        write = export
    try:
        out = write(args.checkpoint, args.out_dir, probe=args.probe)
    except (
        CheckpointError,
        OSError,
        KeyError,
        ValueError,
    ) as exc:  # also a probe file that is not one  # no checkpoint there, or an output that cannot be written
        parser.exit(1, f"error: {exc}\n")
    print(f"[release] wrote {args.format} release: {', '.join(sorted(p.name for p in out.iterdir()))} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
