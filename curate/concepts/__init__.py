"""Concept banks: open_clip embeddings, k-means to millions of centroids, top-k labels, sidecar relabels.

``embed`` (embeddings), ``kmeans`` (torch GEMM k-means and assignment; faiss for small k), ``bank``
(the versioned artifact), ``store`` (embeddings keyed by sample key), ``sidecar`` (relabel a shard
set), ``config`` and ``cli``. The pipeline stages live in ``curate.stages.concepts``.
"""
