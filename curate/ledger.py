"""The ledger of a run: one row per input (kept, dropped with reason, failed with error), read back,
checked against the input list, and summarised. The pipeline writes it; the summary, the report
and the CLI read it here, so none of them depends on the others."""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict

import pandas as pd

from shards import format as fmt
from shards import storage


class AccountingError(RuntimeError):
    """The ledger does not account for every input exactly once."""


def read_ledger(out: str) -> pd.DataFrame:
    parts = [uri for uri, _ in storage.list_files(storage.join(out, "ledger")) if uri.endswith(".parquet")]
    return pd.concat([pd.read_parquet(io.BytesIO(storage.read_bytes(u))) for u in parts], ignore_index=True)


def account(items: list[dict], ledger: pd.DataFrame, indexes: dict, skipped: int, seconds: float) -> dict:
    """Check inputs = kept + dropped + failed (by key), and summarise the run."""
    expected = {it["key"] for it in items}
    ledger = ledger[ledger["key"].isin(expected)]
    seen = ledger["key"].tolist()
    missing = expected - set(seen)
    if missing or len(seen) != len(set(seen)):
        dupes = len(seen) - len(set(seen))
        raise AccountingError(f"ledger lost {len(missing)} inputs (e.g. {sorted(missing)[:3]}) and repeats {dupes}")
    counts = ledger["status"].value_counts().to_dict()
    reasons = {
        status: ledger[ledger["status"] == status]["reason"].value_counts().sort_index().to_dict()
        for status in ("dropped", "failed")
    }
    kept_by_modality = ledger[ledger["status"] == "kept"]["modality"].value_counts().sort_index().to_dict()
    warnings = Counter(w for m in ledger["meta"] if m and '"warnings"' in m for w in json.loads(m)["warnings"])
    shard_samples = sum(ix["samples"] for ix in indexes.values())
    if shard_samples != counts.get("kept", 0):
        raise AccountingError(f"shards hold {shard_samples} samples but the ledger keeps {counts.get('kept', 0)}")
    return {
        "inputs": len(items),
        "kept": counts.get("kept", 0),
        "dropped": counts.get("dropped", 0),
        "failed": counts.get("failed", 0),
        "kept_by_modality": kept_by_modality,
        "dropped_by_reason": reasons["dropped"],
        "failed_by_reason": reasons["failed"],
        "files_passed_over": skipped,
        "warnings": dict(sorted(warnings.items())),
        "shards": sum(len(ix["shards"]) for ix in indexes.values()),
        "shard_bytes": sum(ix["bytes"] for ix in indexes.values()),
        "seconds": round(seconds, 1),
        "format_version": fmt.FORMAT_VERSION,
    }


def stage_throughput(markers) -> dict:
    """Rows and busy seconds per stage over all partitions (from the markers), and rows per busy second."""
    total = defaultdict(lambda: [0, 0.0])
    for marker in markers:
        for stage, st in marker.get("stage_stats", {}).items():
            total[stage][0] += st["rows"]
            total[stage][1] += st["seconds"]
    return {
        stage: {"rows": n, "seconds": round(sec, 3), "rows_per_second": round(n / sec, 1) if sec else None}
        for stage, (n, sec) in total.items()
    }


def format_summary(summary: dict) -> str:
    """The end-of-run table a person reads."""
    lines = [
        f"{'inputs':<34}{summary['inputs']:>10}",
        f"{'kept':<34}{summary['kept']:>10}   " + ", ".join(f"{m} {n}" for m, n in summary["kept_by_modality"].items()),
        f"{'dropped':<34}{summary['dropped']:>10}",
        *[f"  {r:<32}{n:>10}" for r, n in summary["dropped_by_reason"].items()],
        f"{'failed':<34}{summary['failed']:>10}",
        *[f"  {r:<32}{n:>10}" for r, n in summary["failed_by_reason"].items()],
        f"{'shards':<34}{summary['shards']:>10}",
        f"{'shard bytes':<34}{summary['shard_bytes']:>10,}",
        f"{'time (s)':<34}{summary['seconds']:>10}",
        "stage throughput (rows per busy second of one worker):",
        *[f"  {name:<32}{st['rows_per_second'] or 0:>10,.0f}" for name, st in summary.get("stages", {}).items()],
    ]
    rule = "-" * 46
    notes = [f"WARNING ({n} samples): {w}" for w, n in summary.get("warnings", {}).items()]
    return "\n".join([rule, *lines, rule, "inputs = kept + dropped + failed: checked", *notes])
