"""Compact distributed trainer: sparse-token ViT with 3D-RoPE, partial-FC concept heads, release.

Modules: ``config`` (manifest schema), ``rope``, ``packing``, ``model``, ``loss``, ``optim``,
``parallelize`` (the one distribution seam), ``inputs`` (one sample -> tokens), ``data`` (resumable
shard stream), ``checkpoint``, ``loop`` (build, step, log), ``release`` (``native``, ``hf``, ``onnx``;
``modeling`` and ``processing``, the transformers classes an ``hf`` release ships through ``bundle``;
one CLI).
``experimental`` (``probe``, ``codec_vs_frames``) is fenced: nothing above imports it. The trainer
reads its data through ``shards`` and ``manifests`` only; its one import of ``curate`` is
``release.processing`` using ``curate.codec`` for raw video files. Nothing here imports ray.
"""
