"""Curation pipelines: sources -> decode -> patchify -> filter -> embed -> dedup -> concepts -> shards."""
