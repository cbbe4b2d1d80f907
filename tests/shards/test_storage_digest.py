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


def test_a_tar_member_digest_streams_the_member_in_place(tmp_path):
    """A member's digest is that of its bytes alone, read in windows: a video of gigabytes inside a tar
    is never held whole (Python's allocations stay far below the member's 48 MB)."""
    import tracemalloc

    member = bytes(range(256)) * (48 << 12)  # 48 MB
    path = tmp_path / "t.tar"
    path.write_bytes(b"H" * 1536 + member + b"T" * 512)
    uri = storage.member_uri(str(path), 1536, 1536 + len(member))
    tracemalloc.start()
    try:
        got = storage.file_digest(uri)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == storage.digest(member) != storage.file_digest(str(path))
    assert peak < 8 << 20, peak
    with pytest.raises(FileNotFoundError, match="nope.tar"):
        storage.file_digest(storage.member_uri(str(tmp_path / "nope.tar"), 0, 10))


def test_a_tar_member_cut_short_is_an_error_not_a_digest(tmp_path):
    path = tmp_path / "t.tar"
    path.write_bytes(b"H" * 512 + b"m" * 1000)  # the member should run to byte 512 + 4096
    with pytest.raises(EOFError, match="ends after 1000 of the member's 4096 bytes"):
        storage.file_digest(storage.member_uri(str(path), 512, 512 + 4096))
