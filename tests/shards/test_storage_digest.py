"""The exact-dedup content digest: BLAKE3 of a file's bytes, through a memory map or an S3 stream."""

from __future__ import annotations

import pytest

from shards import storage

EMPTY = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"  # BLAKE3 of b"" (the spec's vector)


def test_a_file_digest_is_the_digest_of_its_bytes(tmp_path):
    data = bytes(range(256)) * 9000 + b"tail"  # 2.2 MB: several of BLAKE3's chunks and mmap pages
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert storage.file_digest(str(path)) == storage.digest(data)
    path.write_bytes(data[:-1] + b"T")  # one byte differs: another digest
    assert storage.file_digest(str(path)) != storage.digest(data)
    (tmp_path / "empty.bin").write_bytes(b"")
    assert storage.file_digest(str(tmp_path / "empty.bin")) == storage.digest(b"") == EMPTY


def test_a_missing_file_names_its_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        storage.file_digest(str(tmp_path / "nope.bin"))
