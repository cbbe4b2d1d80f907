"""Deduplication at corpus scale: signatures (per row), grouping (one global step on Ray), keep policy.

``signatures`` computes exact digests, perceptual image and video-frame hashes and datasketch-exact
MinHash; ``lsh`` turns them into band keys; ``grouping`` shuffles by band key, verifies candidates
and reduces them to edges; ``semantic`` does the same for embeddings after faiss k-means; ``keep``
picks one member per connected component. The stages live in ``curate.stages.dedup``.
"""
