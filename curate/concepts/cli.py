"""``python -m curate concepts BANK.toml``: refit a concept bank and write a sidecar label set."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m curate concepts",
        description="Fit a concept bank from stored (or recomputed) embeddings and label every sample of a "
        "shard set with its top-k concepts as a sidecar ({set}/labels/{bank_version}/), leaving the tars as they are.",
        epilog="Any --dotted.key=value overrides the manifest, e.g. --kmeans.k=4096 --labels.bank=PATH.",
    )
    parser.add_argument("manifest", help="TOML bank manifest, e.g. manifests/banks/demo_bank.toml")
    parser.add_argument("--quiet", action="store_true", help="print only the final JSON line")
    args, extra = parser.parse_known_args(argv)

    import manifests
    from curate.concepts.bank import BankError
    from curate.concepts.config import load_bank_manifest
    from curate.concepts.sidecar import relabel
    from shards import storage
    from shards.index import ShardSetError

    try:
        cfg = load_bank_manifest(args.manifest, manifests.parse_overrides(extra))
        storage.configure(cfg.s3.endpoint_url)
        report = relabel(cfg, progress=(lambda *_: None) if args.quiet else print)
    except (manifests.ManifestError, BankError, ShardSetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report["random_weights"]:
        print("WARNING: the embeddings come from random weights: these labels carry no semantics", file=sys.stderr)
    if not args.quiet:
        print(f"bank {report['bank_version']} (k={report['k']}, dim={report['dim']}) in {report['bank']}")
        print(f"labels for {report['samples']} samples in {report['shards']} shards: {report['labels']}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
