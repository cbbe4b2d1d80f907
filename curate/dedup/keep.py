"""Keep policy: which member of a duplicate group survives, and the group table the apply stage reads.

Every member gets a rank ``(r1, r2)`` from its metadata under the configured rule; the highest rank
is kept, ties go to the first source (URI order, then key), so the choice never depends on the
order rows arrived in. The group id hashes the sorted member keys: stable across reruns.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

RULES = ("resolution", "longest", "first")
# the order a member's kind is reported in when several kinds link it to its group
KIND_ORDER = ("exact", "pixel", "perceptual", "video", "minhash", "semantic")


def rank(meta: dict, rule: str) -> tuple[float, float]:
    """``resolution``: most pixels, then most bytes (the better encode); ``longest``: longest
    duration or text, then most pixels; ``first``: no preference, the first source wins."""
    pixels = float(meta.get("width") or 0) * float(meta.get("height") or 0)
    length = float(meta.get("duration") or meta.get("text_chars") or 0)
    if rule == "resolution":
        return pixels, float(meta.get("bytes") or 0)
    if rule == "longest":
        return length, pixels
    if rule == "first":
        return 0.0, 0.0
    raise ValueError(f"keep rule must be one of {RULES}, got {rule!r}")


def group_table(edges: pd.DataFrame) -> pd.DataFrame:
    """Verified edges (``a, b, kind`` and both ends' ``r1, r2, uri``) -> one row per group member.

    Connected components come from scipy's sparse graph routine over the edge list; the edge list
    holds only duplicate links (spanning forests per bucket), not every row of the corpus.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    columns = ["key", "group", "kept", "dup_of", "kind", "size"]
    if edges.empty:
        return pd.DataFrame(columns=columns)
    nodes = pd.concat(
        [
            edges[["a", "a_r1", "a_r2", "a_uri"]].set_axis(["key", "r1", "r2", "uri"], axis=1),
            edges[["b", "b_r1", "b_r2", "b_uri"]].set_axis(["key", "r1", "r2", "uri"], axis=1),
        ]
    ).drop_duplicates("key")
    nodes = nodes.sort_values("key").reset_index(drop=True)
    index = pd.Series(np.arange(len(nodes)), index=nodes["key"])
    a, b = index[edges["a"]].to_numpy(), index[edges["b"]].to_numpy()
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(nodes), len(nodes)))
    _, label = connected_components(graph, directed=False)
    nodes["component"] = label
    # a member's kind: the strongest kind among the edges that touch it
    order = {k: i for i, k in enumerate(KIND_ORDER)}
    ends = pd.concat(
        [edges[["a", "kind"]].set_axis(["key", "kind"], axis=1), edges[["b", "kind"]].set_axis(["key", "kind"], axis=1)]
    )
    ends["order"] = ends["kind"].map(order)
    kind_of = ends.sort_values(["key", "order"]).drop_duplicates("key").set_index("key")["kind"]
    nodes["kind"] = kind_of[nodes["key"]].to_numpy()
    ranked = nodes.sort_values(["component", "r1", "r2", "uri", "key"], ascending=[True, False, False, True, True])
    kept = ranked.drop_duplicates("component").set_index("component")["key"]
    members = nodes.groupby("component")["key"].apply(lambda keys: "\n".join(sorted(keys)))
    gid = members.map(lambda s: "g" + hashlib.blake2b(s.encode(), digest_size=6).hexdigest())
    out = pd.DataFrame(
        {
            "key": nodes["key"],
            "group": gid[nodes["component"]].to_numpy(),
            "kept": kept[nodes["component"]].to_numpy(),
            "kind": nodes["kind"],
            "size": nodes["component"].map(nodes["component"].value_counts()).to_numpy(),
        }
    )
    out["dup_of"] = out["kept"].where(out["key"] != out["kept"])  # missing for the kept member
    return out[columns].sort_values(["group", "key"]).reset_index(drop=True)
