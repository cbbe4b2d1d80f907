"""``python -m train manifests/runs/<run>.toml [--key=value ...]`` (or under torchrun)."""

from __future__ import annotations

import os
import sys

import manifests
from train.config import RunConfig


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        cfg = manifests.load(RunConfig, argv[0], manifests.parse_overrides(argv[1:]))
    except manifests.ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from shards.reader import BadDataError
    from train.loop import train

    try:
        train(cfg)
    except (ValueError, BadDataError) as exc:  # bad data, banks or checkpoints: the message says which and where
        if os.environ.get("OVFORGE_DEBUG"):
            raise
        text = str(exc).strip()
        if "Original Traceback" in text:  # re-raised from a DataLoader worker: its last line is the error
            text = text.splitlines()[-1].split(": ", 1)[-1]
        print(f"error: {text} (OVFORGE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
