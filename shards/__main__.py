"""``python -m shards inspect|stats|verify PATH_OR_S3_URI``."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shards", description="Look into and check WebDataset shard sets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="counts, bytes, modality mix, label coverage and a few samples of every set")
    p.add_argument("path", help="a shard-set folder or a folder above several (local or s3://)")
    p.add_argument("--samples", type=int, default=3, help="samples to preview per set")
    p.add_argument("--preview", metavar="OUT.png", help="also draw the previewed samples into this PNG")
    p = sub.add_parser("stats", help="read every tar: per-field bytes, sample size distribution, modality counts")
    p.add_argument("path", help="a shard-set folder or a folder above several (local or s3://)")
    p = sub.add_parser("verify", help="check index against tars: counts, checksums, every sample's fields")
    p.add_argument("path", help="a shard-set folder or a folder above several (local or s3://)")
    args = parser.parse_args(argv)

    from botocore.exceptions import BotoCoreError, ClientError

    from shards.index import ShardSetError
    from shards.storage import StorageError
    from shards.tools import inspect, preview_image, stats, verify

    try:
        if args.command == "inspect":
            report = inspect(args.path, args.samples)
            print("modality mix: " + ", ".join(f"{m}={n}" for m, n in sorted(report["modality_mix"].items())))
            for s in report["sets"]:
                labels = ", ".join(f"{b}={c:.0%}" for b, c in sorted(s["label_sets"].items())) or "none"
                print(
                    f"{s['folder']}: {s['set']} {s['version']} {s['modality']}: "
                    f"{s['samples']} samples in {s['shards']} shards, {s['bytes']:,} bytes; "
                    f"cls.npy in {s['cls_coverage_first_shard']:.0%} of the first shard; sidecar labels: {labels}"
                )
                for sample in s["preview"]:
                    print(f"    {sample['key']}  {' '.join(sample['fields'])}  <- {sample['source']}")
            if args.preview:
                preview_image(report, args.preview)
                print(f"preview written to {args.preview}")
            return 0
        report = stats(args.path) if args.command == "stats" else verify(args.path)
    except (ShardSetError, FileNotFoundError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (BotoCoreError, ClientError) as exc:  # S3 unreachable, refused or missing, after boto3's retries
        print(f"error: {args.path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0 if report.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
