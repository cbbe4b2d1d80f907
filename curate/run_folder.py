"""The run's output folder: what the project writes there, reconciled with the current inputs.

A rerun over a corpus that changed (fewer inputs, so fewer partitions; a source removed) leaves no
marker, ledger part, pass rows or shard of a partition that no longer exists, so the ledger never
holds more rows than inputs. ``--force`` removes only the files the project writes (never a file
of the user's, never through a symlink) and refuses when the folder holds the run's own inputs.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

from curate.sink import place_shards, shard_folder
from shards import format as fmt
from shards import storage
from shards.writer import write_index

# paths (relative to the output folder) of the files a run writes; `curate concepts` label sets stay
PROJECT_FILE = re.compile(
    r"(_partitions/\d{6}\.json|ledger/part-\d{6}\.parquet|_work/.+"
    r"|shards/(image|video|ocr)/([^/]+-v\d+-\d{6}\.tar|index\.json)"
    r"|summary\.json|report\.html|manifest\.resolved\.toml|_logs/ray\.log)"
)
TEMPORARY = re.compile(r"(?P<dir>(.*/)?)\.(?P<name>[^/]+)\.[a-z0-9_]{8}")  # storage.temp_file's names
PARTITION_FILE = re.compile(
    r"(_partitions/|ledger/part-|_work/pass\d+/part-|_work/shards/(image|video|ocr)/part-)(?P<partition>\d{6})\.[\w.]+"
)
PROJECT_FOLDERS = ("_partitions", "ledger", "_work", "shards")


class RunFolderError(ValueError):
    """The output folder cannot be used as asked (it holds the run's own inputs)."""


def _files(out: str) -> list[tuple[str, str]]:
    """``(uri, path relative to out)`` of every file under ``out``, hidden ones included; a symlink is a
    file here (removing it removes the link), and a linked folder is never entered."""
    if storage.is_s3(out):
        prefix = out.rstrip("/") + "/"
        try:
            return [(uri, uri[len(prefix) :]) for uri, _ in storage.list_files(out)]
        except FileNotFoundError:
            return []
    found = []
    for root, folders, files in os.walk(out):  # followlinks=False
        for name in files + [f for f in folders if os.path.islink(os.path.join(root, f))]:
            path = os.path.join(root, name)
            found.append((path, os.path.relpath(path, out).replace(os.sep, "/")))
    return found


def _is_project_file(relative: str) -> bool:
    temporary = TEMPORARY.fullmatch(relative)
    if temporary:
        relative = temporary["dir"] + temporary["name"]
    return PROJECT_FILE.fullmatch(relative) is not None


def _real(uri: str) -> str:
    return uri.rstrip("/") if storage.is_s3(uri) else os.path.realpath(uri)


def clear(out: str, sources: list[str]) -> None:
    """``--force``: remove what earlier runs wrote into ``out``, after checking it holds no source
    (folder, shard or table) of the run."""
    root = _real(out)
    inside = [uri for uri in sources if (_real(uri) + "/").startswith(root + ("/" if storage.is_s3(out) else os.sep))]
    if inside:
        raise RunFolderError(
            f"{out} holds inputs of this run ({len(inside)} sources, e.g. {inside[0]}); --force would clear that "
            "folder, so it refuses: write the run somewhere else"
        )
    for uri, relative in _files(out):
        if _is_project_file(relative):
            storage.remove(uri)
    if not storage.is_s3(out):
        for folder in (os.path.join(out, f) for f in PROJECT_FOLDERS):
            if os.path.islink(folder):  # a linked folder is the user's: not entered, not emptied
                continue
            for root, _, _ in sorted(os.walk(folder), reverse=True):  # deepest first
                if not os.listdir(root):
                    os.rmdir(root)


def forget(out: str, partitions: set[int], redo: list[int]) -> list[int]:
    """Before partitions run: drop every partition that no longer exists, and the markers and ledger
    parts of those about to be redone (a key that moved to another partition would otherwise be
    counted twice); return the partitions that no longer exist.

    Markers go first, so an interrupted clean-up leaves a partition unfinished, never finished without
    its ledger part. Shards of gone partitions stay published until :func:`publish` replaces the index.
    """
    found = defaultdict(list)  # partition -> [(folder, uri)]
    for folder in ("_partitions", "ledger", "_work"):
        for uri, relative in _files(storage.join(out, folder)):
            match = PARTITION_FILE.fullmatch(f"{folder}/{relative}")
            if match:
                staged = folder == "_work" and relative.startswith("shards/")  # a staged tar: redone with its partition
                found[int(match["partition"])].append(("staged" if staged else folder, uri))
    gone = sorted(p for p in found if p not in partitions)
    doomed = [
        (folder != "_partitions", uri)  # markers first
        for p in [*gone, *redo]
        for folder, uri in found.get(p, [])
        if p in gone or folder in ("_partitions", "ledger", "staged")
    ]
    for _, uri in sorted(doomed):
        storage.remove(uri)
    return gone


def publish(out: str, run_name: str, set_name: str, version: str, markers: dict[int, dict]) -> dict[str, dict]:
    """One index per modality over the shards :func:`curate.sink.place_shards` numbers and places,
    then the removal of tars no index lists.

    The new index replaces the old one in one atomic write, and tars it no longer lists go only after
    it, so a reader never meets an index that names a removed tar; where numbers shift (a partition
    that now keeps samples of a modality), a reader of the old index may meet the new tar under an
    old name, which its sha256 tells. A modality with no shards now loses its index first.
    """
    placed = place_shards(out, set_name, version, markers)
    indexes = {}
    for modality in fmt.MODALITIES:
        folder = shard_folder(out, modality)
        shards = placed.get(modality)
        if shards:
            extra = {"modality": modality, "run": run_name}
            indexes[modality] = write_index(folder, f"{set_name}_{modality}", version, shards, extra)
        else:
            storage.remove(storage.join(folder, fmt.INDEX_NAME))
        listed = {s["name"] for s in shards or []}
        for uri, relative in _files(folder):
            if relative.endswith(".tar") and "/" not in relative and relative not in listed:
                storage.remove(uri)  # left by an earlier run over other inputs
    return indexes
