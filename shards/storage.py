"""One storage seam for local paths and ``s3://`` URIs: list, read, atomic write, exists.

S3 goes through boto3's standard credential chain; the endpoint comes from ``AWS_ENDPOINT_URL``
(set it, or ``[s3] endpoint_url`` in a manifest, for MinIO / moto / other S3-compatible stores).
Writes are atomic: locally a temporary name then ``os.replace``; on S3 an object (single or
multipart upload) only becomes visible once the upload completes.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

S3_RETRIES = {"max_attempts": 5, "mode": "standard"}


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    rest = str(uri)[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket in S3 URI")
    return bucket, key


@functools.lru_cache(maxsize=4)
def _client(endpoint: str | None):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, config=Config(retries=S3_RETRIES))


def s3_client():
    """A cached boto3 S3 client for the current ``AWS_ENDPOINT_URL`` (None = AWS)."""
    return _client(os.environ.get("AWS_ENDPOINT_URL") or None)


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base, *parts))


def list_files(uri: str) -> list[tuple[str, int]]:
    """Every file under ``uri`` (recursively) as ``(uri, size)``, sorted; a missing root is an error."""
    if is_s3(uri):
        bucket, prefix = split_s3(uri)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        out = []
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            out += [(f"s3://{bucket}/{o['Key']}", o["Size"]) for o in page.get("Contents", [])]
        if not out:
            raise FileNotFoundError(f"{uri}: no objects under this prefix")
        return sorted(out)
    root = Path(uri)
    if root.is_file():
        return [(str(root), root.stat().st_size)]
    if not root.is_dir():
        raise FileNotFoundError(f"{uri}: no such file or folder")
    return sorted((str(p), p.stat().st_size) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return Path(uri).read_bytes()


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


def write_bytes(uri: str, data: bytes) -> None:
    """Atomically write ``data`` to ``uri``."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def put_file(local: str, uri: str) -> None:
    """Move a finished local file to ``uri`` atomically (multipart upload for large S3 objects)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().upload_file(str(local), bucket, key)  # boto3 switches to multipart above 8 MiB
        os.unlink(local)
        return
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    os.replace(local, uri)


def remove(uri: str) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().delete_object(Bucket=bucket, Key=key)
    elif Path(uri).exists():
        Path(uri).unlink()
