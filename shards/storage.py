"""One storage seam for local paths and ``s3://`` URIs: list, read, atomic write, exists.

S3 goes through boto3's standard credential chain; the endpoint comes from ``AWS_ENDPOINT_URL``
or, above it, ``[s3] endpoint_url`` in a manifest (MinIO / moto / other S3-compatible stores). The
one place that holds these settings is :func:`s3_settings`; nothing writes them into ``os.environ``.
Writes are atomic: locally a temporary name beside the file, then ``os.replace``; on S3 an object (single or
multipart upload) only becomes visible once the upload completes.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import mmap
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path, PurePosixPath

S3_RETRIES = {"max_attempts": 5, "mode": "standard"}


def is_s3(uri: str) -> bool:
    """Whether ``uri`` names S3; a malformed S3 URI (``s3:/b/k``, ``S3://b``, ``s3://``) is an error
    here, before any code could take it for a local path and make a folder named ``s3:``."""
    uri = str(uri)
    if uri.startswith("s3://") and len(uri) > len("s3://") and not uri.startswith("s3:///"):
        return True
    if uri[:3].lower() == "s3:":
        raise ValueError(f"{uri}: not an S3 URI; write s3://BUCKET/KEY")
    return False


def suffix(uri: str) -> str:
    """A file name's extension, lower case (``""`` for a name without one), for paths and S3 keys alike."""
    return PurePosixPath(str(uri).replace("\\", "/")).suffix.lower()


def by_extension(uris) -> Counter:
    """How many of ``uris`` end in each extension (``(none)`` for a name without one): how the
    sources report the files they pass over."""
    return Counter(suffix(u) or "(none)" for u in uris)


def split_s3(uri: str) -> tuple[str, str]:
    rest = str(uri)[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket in S3 URI")
    return bucket, key


AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
)


@dataclasses.dataclass(frozen=True)
class S3Settings:
    """This process's S3 settings: the ``AWS_*`` environment, with a manifest's endpoint over it."""

    env: tuple[tuple[str, str], ...]  # the AWS_* variables that are set, endpoint override applied

    def get(self, name: str) -> str | None:
        return dict(self.env).get(name) or None

    @property
    def endpoint_url(self) -> str | None:
        return self.get("AWS_ENDPOINT_URL")

    def as_env(self) -> dict[str, str]:
        """The variables a worker process needs to reach the same store."""
        return dict(self.env)


_ENDPOINT_OVERRIDE: list[str] = []  # set by configure(); empty: the environment's endpoint


def configure(endpoint_url: str | None) -> None:
    """Use ``endpoint_url`` (a manifest's ``[s3] endpoint_url``) in this process; None keeps the environment's."""
    _ENDPOINT_OVERRIDE[:] = [endpoint_url] if endpoint_url else []


def s3_settings() -> S3Settings:
    env = {k: os.environ[k] for k in AWS_VARIABLES if os.environ.get(k)}
    if _ENDPOINT_OVERRIDE:
        env["AWS_ENDPOINT_URL"] = _ENDPOINT_OVERRIDE[0]
    return S3Settings(tuple(sorted(env.items())))


@functools.lru_cache(maxsize=4)
def _client(endpoint: str | None):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, config=Config(retries=S3_RETRIES))


def arrow_filesystem(uri: str):
    """For Arrow readers running in Ray tasks (``ray.data.read_parquet``): None for local paths; for
    S3 a pyarrow S3FileSystem holding the driver's endpoint and keys, so listing and reading tasks
    reach the same store even on nodes whose environment lacks them (the default filesystem would
    resolve credentials on the worker)."""
    if not is_s3(uri):
        return None
    from pyarrow import fs

    cfg = s3_settings()
    endpoint = cfg.endpoint_url
    return fs.S3FileSystem(
        access_key=cfg.get("AWS_ACCESS_KEY_ID"),
        secret_key=cfg.get("AWS_SECRET_ACCESS_KEY"),
        session_token=cfg.get("AWS_SESSION_TOKEN"),
        region=cfg.get("AWS_DEFAULT_REGION") or "us-east-1",
        endpoint_override=endpoint,
        scheme="http" if endpoint and endpoint.startswith("http://") else "https",
    )


def s3_client():
    """A cached boto3 S3 client for the configured endpoint (None = AWS)."""
    return _client(s3_settings().endpoint_url)


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base, *parts))


def list_files(uri: str) -> list[tuple[str, int]]:
    """Every file under ``uri`` (recursively) as ``(uri, size)``, sorted; a missing root is an error."""
    if is_s3(uri):
        bucket, prefix = split_s3(uri)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        out = retrying(
            uri, lambda: [(f"s3://{bucket}/{o['Key']}", o["Size"]) for p in pages for o in p.get("Contents", [])]
        )
        if not out:
            raise FileNotFoundError(f"{uri}: no objects under this prefix")
        return sorted(out)
    root = Path(uri)
    if root.is_file():
        return [(str(root), root.stat().st_size)]
    if not root.is_dir():
        raise FileNotFoundError(f"{uri}: no such file or folder")
    return sorted((str(p), p.stat().st_size) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


_MEMBER = re.compile(r"^(?P<uri>.+)#bytes=(?P<start>\d+)-(?P<end>\d+)$")


def member_uri(uri: str, start: int, end: int) -> str:
    """A URI for bytes ``[start, end)`` of ``uri``: one member of a tar shard, read by one ranged read.

    Every reader of this module takes it where it takes a file (``read_bytes``, ``file_digest``), so
    a stage reads a sample of an existing shard set without fetching the rest of the tar.
    """
    return f"{uri}#bytes={start}-{end}"


def split_member(uri: str) -> tuple[str, int, int] | None:
    """``(file, start, end)`` of a :func:`member_uri`, or None for a whole file."""
    match = _MEMBER.match(str(uri))
    return None if match is None else (match["uri"], int(match["start"]), int(match["end"]))


def size_of(uri: str) -> int:
    """Bytes of one file or object; a missing one is ``FileNotFoundError``."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return retrying(uri, lambda: s3_client().head_object(Bucket=bucket, Key=key))["ContentLength"]
    return Path(uri).stat().st_size


def list_pattern(uri: str) -> list[tuple[str, int]]:
    """:func:`list_files` of each expansion of a brace pattern (``shard-{00000..00099}.tar``,
    ``{a,b}/``), in the pattern's order: a name that is a file is itself, else the files under it."""
    from braceexpand import braceexpand

    out = []
    for one in braceexpand(str(uri)):
        if is_s3(one) and split_s3(one)[1] and not one.endswith("/"):
            try:
                out.append((one, size_of(one)))
                continue
            except FileNotFoundError:
                pass  # a prefix, not an object
        out += list_files(one)
    return out


def read_bytes(uri: str) -> bytes:
    """The whole object (or tar member); on S3 retried with backoff, a missing key is ``FileNotFoundError``."""
    member = split_member(uri)
    if member is not None:
        data = read_range(*member)
        if len(data) != member[2] - member[1]:
            raise EOFError(f"{uri}: the file ends after {len(data)} of the member's {member[2] - member[1]} bytes")
        return data
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return retrying(uri, lambda: s3_client().get_object(Bucket=bucket, Key=key)["Body"].read())
    return Path(uri).read_bytes()


def digest(data: bytes) -> str:
    """The content digest of exact deduplication: BLAKE3, hex.

    BLAKE3 rather than SHA-256 because exact dedup hashes every source byte of a corpus: on one core
    SHA-256 (with SHA-NI) runs at 2.2 GB/s, below reading from the page cache (2.7 GB/s), BLAKE3 at
    about 8 GB/s (tests/benchmarks/RESULTS.md, Deduplication). Shard indexes keep SHA-256.
    """
    import blake3  # imported where hashed, like boto3: an hf release copies this module for open_media alone

    return blake3.blake3(data).hexdigest()


DIGEST_WINDOW = 16 << 20  # bytes of a local file mapped at once while hashing (a multiple of mmap's granularity)


def file_digest(uri: str) -> str:
    """:func:`digest` of an object, streamed: at most a window of it is held at any time.

    A local file is hashed through read-only memory maps of :data:`DIGEST_WINDOW` bytes, one after
    another, after asking the kernel to read the whole file ahead (``POSIX_FADV_WILLNEED``,
    ``MADV_SEQUENTIAL``): from disk the hash then keeps pace with a plain sequential read, where
    faulting the pages in one by one falls behind it; unmapping each window keeps a film's pages
    out of the worker's resident set. S3 streams through :func:`open_stream`, so a body that breaks
    mid-read resumes where it stopped; a tar member streams through :func:`open_media`.
    """
    import blake3

    hasher = blake3.blake3()
    member = split_member(uri) is not None  # a tar member (a video can be gigabytes): read in place
    if member or is_s3(uri):
        with open_media(uri) if member else open_stream(uri) as stream:
            while chunk := stream.read(1 << 20):
                hasher.update(chunk)
        return hasher.hexdigest()
    with open(uri, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        if size and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        for offset in range(0, size, DIGEST_WINDOW):  # an empty file has no window (it cannot be mapped)
            with mmap.mmap(fd, min(DIGEST_WINDOW, size - offset), access=mmap.ACCESS_READ, offset=offset) as view:
                if hasattr(mmap, "MADV_SEQUENTIAL"):
                    view.madvise(mmap.MADV_SEQUENTIAL)
                hasher.update(view)
    return hasher.hexdigest()


def try_read(uri: str) -> bytes | None:
    """The object's bytes, or None when it does not exist (local or S3)."""
    try:
        return read_bytes(uri)
    except FileNotFoundError:
        return None


def exists(uri: str) -> bool:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except s3_client().exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
    return Path(uri).exists()


def _umask() -> int:
    """This process's umask, read without changing it where Linux reports it (set and restore elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_file(uri: str) -> str:
    """An empty file to write ``uri``'s content into, then hand to :func:`put_file`.

    For a local ``uri`` it lies beside it, so the rename never crosses filesystems (the temporary
    folder is often another one), and its mode follows the umask like any file the user writes
    (``mkstemp`` makes 0600). For S3 it lies in the temporary folder, to be uploaded.
    """
    if is_s3(uri):
        fd, tmp = tempfile.mkstemp(prefix=".upload-")
    else:
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return tmp


def write_bytes(uri: str, data: bytes) -> None:
    """Atomically write ``data`` to ``uri``."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    tmp = temp_file(uri)
    try:
        Path(tmp).write_bytes(data)
        os.replace(tmp, uri)
    finally:
        Path(tmp).unlink(missing_ok=True)


def put_file(local: str, uri: str) -> None:
    """Move a finished file from :func:`temp_file` to ``uri`` atomically (multipart upload for large S3 objects)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().upload_file(str(local), bucket, key)  # boto3 switches to multipart above 8 MiB
        os.unlink(local)
        return
    os.replace(local, uri)


def place(src: str, uri: str) -> bool:
    """Make ``uri`` hold ``src``'s bytes, atomically, leaving ``src``; False when it already did.

    Locally a hard link (no second copy of the bytes; a copy where links are refused, e.g. across
    filesystems) made under a temporary name, then renamed over ``uri``. On S3 a server-side copy,
    skipped when both objects carry the same ETag and length.
    """
    if is_s3(src) != is_s3(uri):
        raise ValueError(f"{src} -> {uri}: place stays on one store")
    if is_s3(uri):
        from botocore.exceptions import ClientError

        (sb, sk), (db, dk) = split_s3(src), split_s3(uri)
        client = s3_client()
        head = client.head_object(Bucket=sb, Key=sk)
        try:
            there = client.head_object(Bucket=db, Key=dk)
            if (there["ETag"], there["ContentLength"]) == (head["ETag"], head["ContentLength"]):
                return False
        except ClientError:  # not there yet
            pass
        client.copy({"Bucket": sb, "Key": sk}, db, dk)  # multipart copy for large objects
        return True
    if os.path.exists(uri) and os.path.samefile(src, uri):
        return False
    tmp = temp_file(uri)
    os.unlink(tmp)  # the name only: link and copy create the file
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, uri)
    return True


def remove(uri: str) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().delete_object(Bucket=bucket, Key=key)
    else:
        Path(uri).unlink(missing_ok=True)  # a symlink goes, never what it points to


# --- reads for the training reader: retries with backoff, ranged GETs, resumable streams ---

READ_ATTEMPTS = 4


class StorageError(OSError):
    """A read that still failed after its retries; the message names the URI and the endpoint."""


def _endpoint() -> str:
    return s3_settings().endpoint_url or "AWS S3"


def retrying(uri: str, fn, attempts: int = READ_ATTEMPTS, backoff: float = 0.2):
    """Call ``fn()`` up to ``attempts`` times with exponential backoff; a missing object is FileNotFoundError.

    boto3 retries each request, but not a body that breaks mid-read; this covers both. Local paths
    run ``fn`` once (and need no boto3: the GPU machine has none).
    """
    if not is_s3(uri):
        return fn()
    from botocore.exceptions import BotoCoreError, ClientError

    for attempt in range(attempts):
        try:
            return fn()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                raise FileNotFoundError(f"{uri}: no such object ({code})") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StorageError(f"{uri}: access denied by {_endpoint()} ({code}); check the credentials") from None
            error = exc
        except (BotoCoreError, ConnectionError, TimeoutError) as exc:
            error = exc
        if attempt + 1 < attempts:
            time.sleep(min(backoff * 2**attempt, 10.0))
    raise StorageError(f"{uri}: {type(error).__name__} from {_endpoint()} after {attempts} attempt(s): {error}")


def _get(uri: str, start: int = 0, end: int | None = None):
    bucket, key = split_s3(uri)
    extra = {"Range": f"bytes={start}-{'' if end is None else end - 1}"} if start or end is not None else {}
    return s3_client().get_object(Bucket=bucket, Key=key, **extra)["Body"]


def read_range(uri: str, start: int, end: int, attempts: int = READ_ATTEMPTS) -> bytes:
    """Bytes ``[start, end)`` of a file: one ranged GET on S3, a seek locally."""
    if is_s3(uri):
        return retrying(uri, lambda: _get(uri, start, end).read(), attempts)
    with open(uri, "rb") as f:
        f.seek(start)
        return f.read(end - start)


class _S3Stream(io.RawIOBase):
    """A sequential S3 read that reconnects at the current byte (ranged GET) when the body breaks."""

    def __init__(self, uri: str, start: int, attempts: int):
        self.uri, self.pos, self.attempts, self.body = uri, start, attempts, None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        def read():
            try:
                if self.body is None:
                    self.body = _get(self.uri, self.pos)
                return self.body.read(len(buffer))
            except BaseException:
                self.body = None  # reconnect from self.pos on the next attempt
                raise

        data = retrying(self.uri, read, self.attempts)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def close(self):
        if self.body is not None:
            self.body.close()
        super().close()


def open_stream(uri: str, start: int = 0, attempts: int = READ_ATTEMPTS):
    """A buffered binary stream of ``uri`` from byte ``start``; S3 reads survive dropped connections."""
    if is_s3(uri):
        return io.BufferedReader(_S3Stream(uri, start, attempts), buffer_size=1 << 20)
    f = open(uri, "rb")  # noqa: SIM115 - the caller closes it
    f.seek(start)
    return f


# --- media: decoders read a source where they seek, never all of it at once ---

MEDIA_BLOCK = 8 << 20  # bytes per ranged GET of a seekable S3 stream
MEDIA_BLOCKS = 3  # blocks kept (least recently used dropped): the header at the end, the data, one behind


class _Seekable(io.RawIOBase):
    """What the seekable readers below share: a read-only file of ``size`` bytes, read from ``pos``."""

    uri = ""
    size = 0
    pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        if target < 0:
            raise ValueError(f"{self.uri}: seek to negative position {target}")
        self.pos = target
        return self.pos


class _S3Seekable(_Seekable):
    """A seekable S3 object: reads are served from a few cached blocks, each one ranged GET (retried).

    Demuxers seek (an mp4's index sits at its end, a clip starts at a keyframe) and then read on
    sequentially, so whole aligned blocks are fetched ahead of the reads; no connection stays open
    between reads, and at most ``blocks * block`` bytes of the object are held.
    """

    def __init__(self, uri: str, block: int = MEDIA_BLOCK, blocks: int = MEDIA_BLOCKS, attempts: int = READ_ATTEMPTS):
        bucket, key = split_s3(uri)
        head = retrying(uri, lambda: s3_client().head_object(Bucket=bucket, Key=key), attempts)
        self.uri, self.size, self.block, self.blocks, self.attempts = (
            uri,
            head["ContentLength"],
            block,
            blocks,
            attempts,
        )
        self.pos = 0
        self.cache: dict[int, bytes] = {}  # block index -> bytes, in order of use (oldest first)
        self.gets = 0  # ranged GETs issued (for tests and benchmarks)

    def _block(self, index: int) -> bytes:
        data = self.cache.pop(index, None)
        if data is None:
            start = index * self.block
            data = read_range(self.uri, start, min(start + self.block, self.size), self.attempts)
            self.gets += 1
            while len(self.cache) >= self.blocks:
                del self.cache[next(iter(self.cache))]
        self.cache[index] = data
        return data

    def readinto(self, buffer) -> int:
        if self.pos >= self.size:
            return 0
        index, within = divmod(self.pos, self.block)
        data = self._block(index)
        n = min(len(buffer), len(data) - within)
        buffer[:n] = data[within : within + n]
        self.pos += n
        return n

    def close(self):
        self.cache.clear()
        super().close()


class _Window(_Seekable):
    """Bytes ``[start, end)`` of a seekable binary file, read in place as a file of their own: a tar
    member for a demuxer or a hash, whose seeks move within the member, never over the whole tar."""

    def __init__(self, file, start: int, end: int, uri: str = ""):
        self.file, self.start, self.size, self.pos, self.uri = file, start, end - start, 0, uri

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        self.file.seek(self.start + self.pos)
        got = self.file.readinto(memoryview(buffer)[:n]) if n else 0
        if n and not got:  # as read_bytes says of a member cut short
            raise EOFError(f"{self.uri}: the file ends after {self.pos} of the member's {self.size} bytes")
        self.pos += got
        return got

    def close(self):
        self.file.close()
        super().close()


def open_media(uri: str, block: int = MEDIA_BLOCK, blocks: int = MEDIA_BLOCKS):
    """A source a decoder can seek in without holding it: a local file's path as is (FFmpeg reads
    it), an S3 object as a buffered seekable stream of ranged GETs, a tar member (:func:`member_uri`)
    as a buffered stream over its bytes in the tar, local or on S3 (the caller closes a stream)."""
    member = split_member(uri)
    if member is not None:
        tar, start, end = member
        file = _S3Seekable(tar, block, blocks) if is_s3(tar) else open(_existing(tar), "rb")  # noqa: SIM115
        return io.BufferedReader(_Window(file, start, end, uri), buffer_size=1 << 16)
    if is_s3(uri):
        return io.BufferedReader(_S3Seekable(uri, block, blocks), buffer_size=1 << 16)
    return _existing(uri)


def _existing(path: str) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return str(path)
