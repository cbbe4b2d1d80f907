"""The ledger of a run: one row per input (kept, dropped with reason, failed with error), read back,
checked against the input list, and summarised. The pipeline writes it; the summary, the report
and the CLI read it here, so none of them depends on the others."""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from shards import format as fmt
from shards import storage

if TYPE_CHECKING:
    import pandas as pd  # imported where a ledger is read: a second of start-up before the first input


class AccountingError(RuntimeError):
    """The ledger does not account for every input exactly once."""


def read_ledger(out: str) -> pd.DataFrame:
    import pandas as pd

    parts = [uri for uri, _ in storage.list_files(storage.join(out, "ledger")) if uri.endswith(".parquet")]
    return pd.concat([pd.read_parquet(io.BytesIO(storage.read_bytes(u))) for u in parts], ignore_index=True)


def account(listed: dict[int, int], ledger: pd.DataFrame, indexes: dict, skipped: dict, seconds: float) -> dict:
    """Check inputs = kept + dropped + failed (per partition, against the listing's count of each,
    ``listed``, no key twice, and no row of a partition the listing no longer has), likewise for the
    samples split inputs became (a video's clips), and that the shards hold exactly the kept samples;
    summarise the run.

    ``skipped``: files the sources list but do not take as inputs, counted by extension."""
    import pandas as pd

    parent = ledger["parent"] if "parent" in ledger else pd.Series([None] * len(ledger), index=ledger.index)
    derived = parent.notna() & (parent != "")
    inputs = ledger[~derived & ledger["partition"].isin(list(listed))]
    got = inputs["partition"].value_counts().to_dict()
    short = {p: n - got.get(p, 0) for p, n in listed.items() if got.get(p, 0) != n}
    dupes = int(inputs["key"].duplicated().sum())
    if short or dupes:
        lost = sum(v for v in short.values() if v > 0)
        raise AccountingError(
            f"ledger lost {lost} inputs (partitions {sorted(short)[:3]} differ from their listing) and repeats {dupes}"
        )
    expected = set(inputs["key"])
    stray = ledger[(~derived & ~ledger["partition"].isin(list(listed))) | (derived & ~parent.isin(expected))]
    if len(stray):  # rows of inputs that are gone: more ledger rows than the run has inputs
        raise AccountingError(f"ledger holds {len(stray)} rows of no current input (e.g. {stray['key'].iloc[0]})")
    samples = ledger[derived & parent.isin(expected)]
    if samples["key"].duplicated().any() or samples["key"].isin(expected).any():
        raise AccountingError("samples of split inputs repeat a key, or reuse an input's key")
    split = inputs["meta"].map(lambda m: bool(m) and '"samples"' in m and "samples" in json.loads(m))
    kept_samples = int((samples["status"] == "kept").sum() + ((inputs["status"] == "kept") & ~split).sum())
    shard_samples = sum(ix["samples"] for ix in indexes.values())
    if shard_samples != kept_samples:
        raise AccountingError(f"shards hold {shard_samples} samples but the ledger keeps {kept_samples}")
    counts = inputs["status"].value_counts().to_dict()
    warnings = Counter(w for m in ledger["meta"] if m and '"warnings"' in m for w in json.loads(m)["warnings"])
    summary = {
        "inputs": sum(listed.values()),
        "kept": counts.get("kept", 0),
        "dropped": counts.get("dropped", 0),
        "failed": counts.get("failed", 0),
        "kept_by_modality": inputs[inputs["status"] == "kept"]["modality"].value_counts().sort_index().to_dict(),
        "dropped_by_reason": _reasons(inputs, "dropped"),
        "failed_by_reason": _reasons(inputs, "failed"),
        "files_passed_over": sum(skipped.values()),
        "files_passed_over_by_extension": dict(sorted(skipped.items())),
        "warnings": dict(sorted(warnings.items())),
        "shards": sum(len(ix["shards"]) for ix in indexes.values()),
        "shard_samples": shard_samples,
        "shard_bytes": sum(ix["bytes"] for ix in indexes.values()),
        "seconds": round(seconds, 1),
        "format_version": fmt.FORMAT_VERSION,
    }
    if len(samples):
        by_status = samples["status"].value_counts().to_dict()
        summary["split_inputs"] = int(split.sum())
        summary["samples_of_split_inputs"] = {s: by_status.get(s, 0) for s in ("kept", "dropped", "failed")}
        summary["samples_dropped_by_reason"] = _reasons(samples, "dropped")
        summary["samples_failed_by_reason"] = _reasons(samples, "failed")
    return summary


def _reasons(rows: pd.DataFrame, status: str) -> dict:
    return rows[rows["status"] == status]["reason"].value_counts().sort_index().to_dict()


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


SCALE = 100_000_000  # inputs the projection is for


def projected_cost(stages: dict, steps: dict, inputs: int) -> dict:
    """Core-seconds per 1,000 inputs of each stage (its busy seconds in workers, a worker holding one
    core, from the markers) and of each global step (``steps``: core-seconds as the pipeline measured
    them), and the core-hours ``SCALE`` inputs of this mix would take, scaled linearly."""
    seconds = {name: st["seconds"] for name, st in stages.items()} | steps
    per_1000 = {name: round(1000 * sec / max(inputs, 1), 3) for name, sec in seconds.items()}
    return {
        "core_seconds_per_1000_inputs": per_1000,
        "global_steps": sorted(steps),
        "core_hours_at_scale": round(sum(per_1000.values()) * SCALE / 1000 / 3600, 1),
        "scale_inputs": SCALE,
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
        *_sample_lines(summary),
        *_passed_over_lines(summary),
        f"{'shards':<34}{summary['shards']:>10}",
        f"{'shard bytes':<34}{summary['shard_bytes']:>10,}",
        f"{'time (s)':<34}{summary['seconds']:>10}",
    ]
    rule = "-" * 46
    notes = [f"WARNING ({n} samples): {w}" for w, n in summary.get("warnings", {}).items()]
    return "\n".join([rule, *lines, rule, "inputs = kept + dropped + failed: checked", *notes, *_cost_lines(summary)])


def _cost_lines(summary: dict) -> list[str]:
    """The run's cost at scale, per stage as measured on this run, projected linearly."""
    cost = summary.get("cost")
    if not cost or not cost["core_seconds_per_1000_inputs"]:
        return []
    steps = set(cost["global_steps"])
    return [
        "cost: core-seconds per 1,000 inputs, measured on this run:",
        *[
            f"  {name + (' (global step)' if name in steps else ''):<32}{sec:>10,.2f}"
            for name, sec in cost["core_seconds_per_1000_inputs"].items()
        ],
        f"{cost['scale_inputs']:,} inputs of this mix: {cost['core_hours_at_scale']:,.0f} core-hours "
        "(scaled linearly; a global step on Ray counts its wall time x the cluster's CPUs)",
    ]


def _passed_over_lines(summary: dict) -> list[str]:
    """Files the sources list but did not take (not inputs, so outside the ledger), by extension."""
    by_ext = summary.get("files_passed_over_by_extension") or {}
    if not by_ext:
        return []
    return [
        f"{'skipped (not inputs)':<34}{sum(by_ext.values()):>10}   " + ", ".join(f"{e} {n}" for e, n in by_ext.items())
    ]


def _sample_lines(summary: dict) -> list[str]:
    """Lines for the samples split inputs became (a video's clips), where there are any."""
    if not summary.get("split_inputs"):
        return []
    counts = summary["samples_of_split_inputs"]
    lines = [f"{'samples of ' + str(summary['split_inputs']) + ' split inputs':<34}{sum(counts.values()):>10}"]
    lines += [f"  {status:<32}{n:>10}" for status, n in counts.items()]
    reasons = {**summary["samples_dropped_by_reason"], **summary["samples_failed_by_reason"]}
    return lines + [f"    {r:<30}{n:>10}" for r, n in reasons.items()]
