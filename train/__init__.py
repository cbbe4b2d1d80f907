"""Compact distributed trainer: sparse-token ViT with 3D-RoPE, partial-FC concept heads, release.

Modules: ``config`` (manifest schema), ``rope``, ``packing``, ``model``, ``loss``, ``optim``,
``parallelize`` (the one distribution seam), ``data`` (resumable shard stream), ``checkpoint``,
``loop``, ``release``. Nothing here imports ray.
"""
