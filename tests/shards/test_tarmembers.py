"""The fast ustar path and tarfile read every kind of tar alike, and broken tars fail loudly."""

from __future__ import annotations

import io
import tarfile

import pytest

from shards import tarmembers


def make_tar(entries, fmt=tarfile.USTAR_FORMAT) -> bytes:
    """``entries``: (name, payload bytes or None for a directory, mtime)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, payload, mtime in entries:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if payload is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def read_all(data: bytes, base: int = 0):
    reopen = tarmembers.bytes_reopener(data, base)
    with reopen(base) as stream:
        return list(tarmembers.members(stream, base, reopen))


def by_tarfile(data: bytes):
    return list(tarmembers._tarfile_members(io.BytesIO(data), 0))


PAYLOADS = [b"", b"x", bytes(range(256)) * 3, b"y" * 512, b"z" * 513]
PLAIN = [(f"k{i:03d}.f{i}", p, 0) for i, p in enumerate(PAYLOADS)]
LONG = "d" * 80 + "/" + "e" * 90 + ".jpg"  # over 100 characters: ustar prefix, or a GNU/pax long name


@pytest.mark.parametrize(
    "entries, fmt",
    [
        (PLAIN, tarfile.USTAR_FORMAT),
        (PLAIN + [("dir", None, 0), (LONG, b"long", 0)], tarfile.USTAR_FORMAT),  # prefix field, a directory
        (PLAIN + [(LONG, b"long", 0)], tarfile.GNU_FORMAT),  # GNU long-name header midway: tarfile takes over
        (PLAIN[:2] + [("f.0", b"pax", 0.5)] + PLAIN[2:], tarfile.PAX_FORMAT),  # float mtime: a pax header
    ],
    ids=["ustar", "ustar-prefix-dir", "gnu-longname", "pax-midway"],
)
def test_both_paths_give_the_same_members_and_spans(entries, fmt):
    data = make_tar(entries, fmt)
    got = read_all(data)
    assert got == by_tarfile(data)
    files = [(n, p) for n, p, _ in entries if p is not None]
    assert [(n, d) for n, d, _, _ in got] == files
    for name, payload, start, end in got:  # each span is a valid tar of that member alone
        assert read_all(data[start:end] + bytes(1024))[0][:2] == (name, payload)
    start = got[2][2]  # from a member's byte on, as a resumed reader does
    assert read_all(data[start:], start) == got[2:]


def test_broken_and_truncated_tars_raise_tar_errors():
    data = bytearray(make_tar(PLAIN))
    second = read_all(bytes(data))[1][2]
    data[second : second + 4] = b"XXXX"
    with pytest.raises(tarfile.HeaderError, match=f"bad checksum in the header at byte {second}"):
        read_all(bytes(data))
    whole = make_tar(PLAIN)
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        read_all(whole[: read_all(whole)[2][2] + 600])  # cut inside the third member's payload
    with pytest.raises(tarfile.ReadError, match="truncated header"):
        read_all(whole[: read_all(whole)[1][2] + 100])
