"""List an existing WebDataset shard set (the img2dataset layout) as inputs: one per sample.

img2dataset writes ``{key}.jpg`` (any image type), ``{key}.txt`` (the caption) and ``{key}.json``
(its metadata) into each tar, and a ``.parquet`` beside each shard with every sample's download
status. Listing reads each tar's headers once (locally it seeks past the payloads; on S3 it streams)
and keeps the small members (caption and json) in the input's meta; an input's ``uri`` names its
image member by byte range (``storage.member_uri``), so a stage reads only that member. Shards of
video samples (``{key}.mp4`` + caption + json) list alike; the video stages demux the member in
place (``curate.media.open_video``), seeking within it, never reading the tar whole.

A damaged shard fails only the samples it touches, each with its reason: a member cut by the end
of a truncated tar, a sample next to a region whose headers do not parse (``tarfile`` skips such
blocks and we report the gap), a sample the shard's parquet lists as written but the tar lacks,
a caption that is not UTF-8 or a json that does not parse. The rest of the shard goes on.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from shards import storage

BLOCK = tarfile.BLOCKSIZE
SMALL = ("txt", "json")  # members read at listing time (the rest is read by the stages)
ZERO_PADDING = 64 << 10  # the most zero bytes between two members read to tell padding from damage
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
VIDEO_EXTS = ("mp4", "mkv", "mov", "webm", "avi", "ts")  # read in place by the video stages


def shard_units(src) -> tuple[list[dict], Counter]:
    """The listing units of a shard source, one per tar, and the other files passed over, counted by
    extension (the ``.parquet`` beside each tar is not passed over: its tar's unit reads it)."""
    files = storage.list_pattern(src.uri)
    tars = [(uri, size) for uri, size in files if uri.lower().endswith(".tar")]
    if not tars:
        raise FileNotFoundError(f"no .tar shards among {len(files)} files")
    passed = [u for u, _ in files if not u.lower().endswith((".tar", ".parquet"))]
    return [{"kind": "tar", "uri": uri, "size": size} for uri, size in tars], storage.by_extension(passed)


def tar_items(src, unit: dict, make_key) -> list[dict]:
    """The inputs of one tar (a unit of :func:`shard_units`)."""
    exts = tuple(e.lower().lstrip(".") for e in src.extensions) or (
        VIDEO_EXTS if src.modality == "video" else IMAGE_EXTS
    )
    return shard_samples(src, unit["uri"], unit["size"], exts, make_key)


def shard_samples(src, tar: str, size: int, exts: tuple[str, ...], make_key) -> list[dict]:
    """One input (or failed input) per sample of one tar."""
    members, gaps, error = _scan(tar, size)
    gaps = [(start, end) for start, end in gaps if not _zero_filled(tar, start, end)]
    by_key: dict[tuple[str, int], dict] = defaultdict(dict)
    met: Counter = Counter()
    for m in members:
        key, ext = _base_plus_ext(m["name"])
        if key is None:
            continue
        # the n-th member of this key and type belongs to the key's n-th copy of the sample: two shards
        # concatenated, or members appended to a tar, repeat names; each copy is an input of its own
        m["sample"] = (key, met[key, ext.lower()])
        met[key, ext.lower()] += 1
        by_key[m["sample"]][ext.lower()] = m
    suspects = _next_to_gaps(members, gaps)
    items = []
    for (key, copy), group in by_key.items():
        first = min(m["offset"] for m in group.values())
        media = group.get(next((e for e in exts if e in group), None))
        provenance = {"source": src.uri, "shard": tar, "offset": first}
        if media is not None:
            provenance.update(member=media["name"], data_offset=media["data"], size=media["size"])
            uri = storage.member_uri(tar, media["data"], media["data"] + media["size"])
        else:
            uri = tar
        item = {
            "key": make_key(f"{tar}/{key}" + (f"#{copy}" if copy else "")),
            "uri": uri,
            "modality": src.modality,
            "meta": {"bytes": media["size"] if media else 0, "provenance": provenance},
        }
        problem = _problem(key, group, media, src.modality, size, suspects.get((key, copy)), error)
        if problem is None:
            problem = _small_members(item["meta"], group)
        if problem is not None:
            item["error"] = problem
        items.append(item)
    seen, listed = {key for key, _ in by_key}, _listed_keys(tar)
    if not members and not listed:  # not a tar at all (tarfile skips blocks it cannot parse), or empty
        provenance = {"source": src.uri, "shard": tar, "offset": 0}
        meta = {"bytes": 0, "provenance": provenance}
        failed = ["source/unreadable_tar", f"{tar}: no readable member in its {size} bytes ({error or 'no header'})"]
        items.append({"key": make_key(tar), "uri": tar, "modality": src.modality, "meta": meta, "error": failed})
    for key in listed:
        if key not in seen:
            items.append(
                {
                    "key": make_key(f"{tar}/{key}"),
                    "uri": tar,
                    "modality": src.modality,
                    "meta": {"bytes": 0, "provenance": {"source": src.uri, "shard": tar, "offset": None}},
                    "error": [
                        "source/missing_from_tar",
                        f"{key}: the shard's parquet lists it as written, but {tar} has no member of it"
                        + (f" ({error})" if error else ""),
                    ],
                }
            )
    return items


def _scan(tar: str, size: int) -> tuple[list[dict], list[tuple[int, int]], str | None]:
    """Regular members (name, header offset, data offset, size, small payloads), unreadable byte
    ranges between them, and the error that ended the scan early (None: read to the end)."""
    members, gaps, error = [], [], None
    local = not storage.is_s3(tar)
    with open(tar, "rb") if local else storage.open_stream(tar) as f:
        expected = 0
        try:
            with tarfile.open(fileobj=f, mode="r:" if local else "r|", ignore_zeros=True) as archive:
                for info in archive:
                    if info.offset > expected:  # tarfile skipped blocks whose headers did not parse
                        gaps.append((expected, info.offset))
                    expected = info.offset_data + -(-info.size // BLOCK) * BLOCK
                    if not info.isreg():
                        continue
                    member = {"name": info.name, "offset": info.offset, "data": info.offset_data, "size": info.size}
                    if info.name.rsplit(".", 1)[-1].lower() in SMALL and info.offset_data + info.size <= size:
                        member["payload"] = archive.extractfile(info).read()
                    members.append(member)
                    if not local:
                        archive.members = []  # streaming: do not hold every TarInfo
        except (tarfile.TarError, EOFError, OSError) as exc:
            error = f"unreadable after byte {expected}: {exc}"
    return members, gaps, error


def _zero_filled(tar: str, start: int, end: int) -> bool:
    """A region of zero blocks between members is a tar's end-of-archive padding (two tars
    concatenated), not damage; larger regions than a tar's padding are not read to tell."""
    return end - start <= ZERO_PADDING and not storage.read_range(tar, start, end).strip(b"\0")


def _next_to_gaps(members: list[dict], gaps: list[tuple[int, int]]) -> dict[tuple[str, int], str]:
    """Sample (key, copy) -> why it is suspect: its members border an unreadable region (a member of
    it or of its neighbour lost its header there; which one cannot be told, so both are failed)."""
    out = {}
    for start, end in gaps:
        before = [m for m in members if m["offset"] < start and "sample" in m]
        after = [m for m in members if m["offset"] >= end and "sample" in m]
        for m in ([before[-1]] if before else []) + ([after[0]] if after else []):
            out[m["sample"]] = f"tar bytes {start}-{end} are unreadable (corrupt header) next to this sample's members"
    return out


def _problem(key: str, group: dict, media: dict | None, modality: str, size: int, suspect, error: str | None):
    cut = [m["name"] for m in group.values() if m["data"] + m["size"] > size]
    if cut:
        return ["source/truncated", f"{', '.join(cut)}: the tar ends at byte {size}, inside the member"]
    if suspect:
        return ["source/corrupt_member", f"{key}: {suspect}"]
    if media is None:
        return [
            f"source/no_{modality}",
            f"{key}: members {sorted(group)} but no {modality} member" + (f"; {error}" if error else ""),
        ]
    return None


def _small_members(meta: dict, group: dict):
    """The caption (``txt``) and metadata (``json``) into meta; a problem when they do not decode."""
    if "txt" in group:
        try:
            meta["caption"] = group["txt"]["payload"].decode("utf-8")
        except UnicodeDecodeError as exc:
            return ["source/bad_caption", f"{group['txt']['name']}: not UTF-8 ({exc})"]
    else:
        meta["caption"] = None  # a caption source: the sample has none (text filters count it as empty)
    if "json" in group:
        try:
            meta["source_meta"] = json.loads(group["json"]["payload"])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return ["source/bad_json", f"{group['json']['name']}: {exc}"]
    return None


def _listed_keys(tar: str) -> list[str]:
    """Keys img2dataset's parquet beside the shard lists as written (status ``success``); [] without one."""
    data = storage.try_read(tar[: -len(".tar")] + ".parquet")
    if data is None:
        return []
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError):
        return []  # a damaged status file: the tar alone says what it holds
    if "key" not in table.column_names:
        return []
    keys = table["key"].to_pylist()
    status = table["status"].to_pylist() if "status" in table.column_names else ["success"] * len(keys)
    return [str(k) for k, s in zip(keys, status, strict=True) if s == "success" and k is not None]


def _base_plus_ext(name: str) -> tuple[str, str]:
    """webdataset's split of a member name into sample key and field, imported only where a shard set
    is listed (webdataset imports torch: a second of start-up for runs over plain files)."""
    from webdataset.tariterators import base_plus_ext

    return base_plus_ext(name)
