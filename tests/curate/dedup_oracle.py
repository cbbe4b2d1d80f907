"""The dedup test oracle: every pair of the same kind and modality verified, no LSH, no clustering,
no Ray. The banded and clustered paths in ``curate.dedup`` must find what this finds."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from curate.dedup.grouping import EDGE, DedupConfig, band_records, similarity, spanning_edges, upper_pairs
from curate.dedup.keep import group_table
from curate.dedup.semantic import cluster_edges, vector_records


def reference_semantic_edges(rows: list[dict], cfg: DedupConfig) -> pa.Table:
    """All pairs of one modality compared, no clustering (the reference the clustered path approximates)."""
    records = vector_records(pd.DataFrame(rows), cfg).to_pandas()
    tables = [cluster_edges(part, cfg) for _, part in records.groupby("modality")]
    return pa.concat_tables(tables or [EDGE.empty_table()])


def reference_groups(rows: list[dict], cfg: DedupConfig) -> pd.DataFrame:
    """Driver-side reference groups: every pair of the same kind and modality verified."""
    records = band_records(pd.DataFrame(rows), cfg).to_pandas()
    modality = {r["key"]: r["modality"] for r in rows}
    records["modality"] = records["key"].map(modality)
    tables = []
    for (kind, _), part in records.groupby(["kind", "modality"]):
        part = part.drop_duplicates("key").sort_values("key").reset_index(drop=True)
        verified = upper_pairs(*similarity(kind, list(part["sig"]), cfg))
        tables.append(pa.Table.from_pylist(spanning_edges(part, verified, kind), schema=EDGE))
    if "semantic" in cfg.kinds:
        tables.append(reference_semantic_edges(rows, cfg))
    edges = pa.concat_tables(tables or [EDGE.empty_table()]).to_pandas()
    return group_table(edges)
