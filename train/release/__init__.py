"""Encoder releases: ``native`` (safetensors; what this package re-exports), ``hf`` (a folder transformers
loads with remote code: ``modeling`` and ``processing`` copied in by ``bundle``), ``onnx`` (one ONNX graph).

Only ``native`` is imported here, so ``import train.release`` needs neither transformers nor ONNX;
``hf`` and ``onnx`` build on ``native``, and only the CLI (``python -m train.release``) imports all three.
"""

from train.release.native import checkpoint_encoder, export, load_encoder, load_release

__all__ = ["checkpoint_encoder", "export", "load_encoder", "load_release"]
