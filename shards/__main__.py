"""``python -m shards inspect|verify PATH_OR_S3_URI``."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shards", description="Look into and check WebDataset shard sets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="counts, bytes, modality mix and a few samples of every set under PATH")
    p.add_argument("path", help="a shard-set folder or a folder above several (local or s3://)")
    p.add_argument("--samples", type=int, default=3, help="sample keys to preview per set")
    p = sub.add_parser("verify", help="check index against tars: counts, checksums, every sample's fields")
    p.add_argument("path", help="a shard-set folder or a folder above several (local or s3://)")
    args = parser.parse_args(argv)

    from shards.index import ShardSetError
    from shards.tools import inspect, verify

    try:
        if args.command == "inspect":
            report = inspect(args.path, args.samples)
            for s in report["sets"]:
                print(
                    f"{s['folder']}: {s['set']} {s['version']} {s['modality']}: "
                    f"{s['samples']} samples in {s['shards']} shards, {s['bytes']:,} bytes"
                )
                for sample in s["preview"]:
                    print(f"    {sample['key']}  {' '.join(sample['fields'])}  <- {sample['source']}")
            return 0
        report = verify(args.path)
    except (ShardSetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
