"""Read a shard set's index and check it against the contract's format version."""

from __future__ import annotations

import json

from shards import format as fmt
from shards import storage


class ShardSetError(ValueError):
    """A shard set that cannot be read as the contract says; the message names the place."""


def read_index(folder: str) -> dict:
    uri = storage.join(folder, fmt.INDEX_NAME)
    try:
        index = json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        raise ShardSetError(f"{uri}: no index; the set is missing or was never published") from None
    except json.JSONDecodeError as exc:
        raise ShardSetError(f"{uri}: index is not valid JSON: {exc}") from None
    version = index.get("format_version")
    if version != fmt.FORMAT_VERSION:
        raise ShardSetError(f"{uri}: format_version {version!r}, this ovforge reads {fmt.FORMAT_VERSION}")
    return index


def find_sets(root: str) -> list[str]:
    """Folders under ``root`` (itself included) that hold an index.json."""
    files = storage.list_files(root)
    suffix = "/" + fmt.INDEX_NAME
    return sorted(uri[: -len(suffix)] for uri, _ in files if uri.replace("\\", "/").endswith(suffix))


def shard_uris(folder: str, index: dict) -> list[str]:
    return [storage.join(folder, s["name"]) for s in index["shards"]]
