"""``python -m curate``: run a manifest, build the demo corpus, inspect one clip's codec tokens."""

from __future__ import annotations

import argparse
import json
import sys

USAGE = """python -m curate COMMAND ...

commands:
  run MANIFEST [--address ADDR] [--force] [--quiet | --verbose] [--key=value ...]
                      curate the corpus a manifest describes into shards, ledger and summary;
                      reruns skip finished partitions (--force redoes everything, removing
                      only what earlier runs wrote); Ray's own output goes to OUT/_logs/ray.log
  demo-corpus OUT_DIR build the demo corpus (clips with motion masks, photos with duplicate
                      families, OCR pages with known text) from what ships with the project
  motion-bench OUT_DIR [--seed N] [--size PX] [--frames N] [--train N] [--test N] [--pretrain N]
                      generate the labelled motion-sensitive video benchmark (path-shape task, static
                      control, pretraining clips) with its ground truth (see: python -m curate motion-bench -h)
  patchify VIDEO ...  select one clip's codec tokens and show them (see: python -m curate patchify -h)
  concepts BANK.toml  (re)build a concept bank and write sidecar labels for a shard set, without
                      rewriting its tars (see: python -m curate concepts -h)
  report OUT_DIR      (re)write OUT_DIR/report.html for a finished run
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        return _run(rest)
    if command == "demo-corpus":
        from curate.demo.corpus import main as demo_main

        return demo_main(rest)
    if command == "motion-bench":
        from curate.demo.motion_bench import main as bench_main

        return bench_main(rest)
    if command == "concepts":
        from curate.concepts.cli import main as concepts_main

        return concepts_main(rest)
    if command == "report":
        from curate.report import build_report

        if len(rest) != 1 or rest[0].startswith("-"):
            print("usage: python -m curate report OUT_DIR", file=sys.stderr)
            return 2
        print(build_report(rest[0]))
        return 0
    if command == "patchify":
        from curate.codec.cli import main as patchify_main

        return patchify_main(rest)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m curate run",
        description="Curate a corpus into WebDataset shards, a per-sample ledger and a summary.",
        epilog="Any --dotted.key=value overrides that key of the manifest, e.g. --output.dir=out/x "
        "--partition_size=32 --stages.0.size=256 --executor=local.",
    )
    parser.add_argument("manifest", help="TOML run manifest, e.g. manifests/demo.toml")
    parser.add_argument("--address", help="join this Ray cluster ('auto' = the one this machine belongs to)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="redo every partition instead of resuming; removes only what earlier runs wrote",
    )
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="no progress output, only the summary")
    shown.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray's logging and progress bars (by default they go to OUTPUT_DIR/_logs/ray.log)",
    )
    args, extra = parser.parse_known_args(argv)

    import manifests
    from curate.cluster import ClusterError
    from curate.config import load_run
    from curate.console import Console, ray_output_to
    from curate.ledger import format_summary
    from curate.pipeline import RunStopped, run
    from curate.run_folder import RunFolderError
    from curate.sources import SourceError

    try:
        overrides = manifests.parse_overrides(extra)
        if args.address:
            overrides["ray.address"] = args.address
        cfg, stages = load_run(args.manifest, overrides)
        if args.verbose:
            summary = run(cfg, stages, force=args.force, progress=Console())
        else:
            with ray_output_to(cfg.output.dir) as stream:
                summary = run(cfg, stages, force=args.force, progress=Console(stream, quiet=args.quiet))
    except (manifests.ManifestError, SourceError, ClusterError, RunFolderError, RunStopped) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        cause = io_error(exc)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(f"outputs in {cfg.output.dir}: shards/, ledger/, report.html, summary.json, manifest.resolved.toml")
    print(json.dumps({k: summary[k] for k in ("inputs", "kept", "dropped", "failed", "shards")}))
    return 0


def io_error(exc: BaseException) -> str | None:
    """One line for the storage error at the root of ``exc`` (disk full, read-only or unmakeable
    output, S3 refusing), also when it is raised inside a Ray task; None for anything else (a bug,
    which keeps its traceback)."""
    from botocore.exceptions import BotoCoreError, ClientError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError holds the worker's exception
        if isinstance(inner, BaseException):
            exc = inner
            continue
        if isinstance(exc, OSError) and exc.filename and exc.strerror:
            return f"{exc.filename}: {exc.strerror}"
        if isinstance(exc, OSError | BotoCoreError | ClientError):
            return str(exc)
        exc = exc.__cause__ or exc.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
