"""Shard sets on a real S3 server (moto on 127.0.0.1 over HTTP): write, list, read, ranged read, publish."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from ports import free_port
from shardkit import make_sample

from shards import format as fmt
from shards import storage
from shards.index import ShardSetError, find_sets
from shards.publish import ShardSetWriter
from shards.reader import ShardStream, open_set, read_sample, sample_ranges

HERE = Path(__file__).parent
NO_DECODE = {"image": lambda s: {}}


@pytest.fixture()
def bucket(s3_server):
    name = "ovforge-publish"
    storage.s3_client().create_bucket(Bucket=name)
    yield f"s3://{name}"
    for page in storage.s3_client().get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            storage.s3_client().delete_object(Bucket=name, Key=obj["Key"])
    storage.s3_client().delete_bucket(Bucket=name)


def _write(folder, n=10, per=4):
    with ShardSetWriter(folder, "t_image", "v1", max_samples=per, extra={"modality": "image"}) as w:
        for i in range(n):
            w.write(make_sample(f"img{i:03d}", "image"))
    return w.shards


def test_write_list_read_and_ranged_read_on_s3_match_local(bucket, tmp_path):
    folder = f"{bucket}/sets/image"
    shards = _write(folder)
    _write(str(tmp_path / "image"))
    assert [s["samples"] for s in shards] == [4, 4, 2] and find_sets(bucket) == [folder]
    listed = [u.rsplit("/", 1)[-1] for u, _ in storage.list_files(folder)]
    assert listed == [fmt.INDEX_NAME] + [fmt.shard_name("t_image", "v1", i) for i in range(3)]
    assert open_set(folder)["samples"] == 10

    second = f"{folder}/{shards[1]['name']}"
    ranges = sample_ranges(second)
    assert list(ranges) == ["img004", "img005", "img006", "img007"]
    one = read_sample(second, *ranges["img006"])  # one ranged GET
    want = make_sample("img006", "image")
    assert {k: one[k] for k in want} == want

    def run(sets, state=None, n=None):
        stream = ShardStream(sets, seed=5, shuffle_buffer=3, epochs=2, transforms=NO_DECODE)
        if state:
            stream.load_state_dict(state)
        return [s["__key__"] for s in itertools.islice(stream, n)], stream

    remote, _ = run({"image": folder})
    assert remote == run({"image": str(tmp_path / "image")})[0] and len(remote) == 20
    head, stream = run({"image": folder}, n=7)  # resume on S3: byte offsets and buffer by ranged GETs
    assert head + run({"image": folder}, stream.state_dict())[0] == remote


KILLED_WRITER = """
import sys, time
from shardkit import make_sample
from shards.publish import ShardSetWriter
w = ShardSetWriter(sys.argv[1], "t_image", "v1", max_samples=1)
for i in range(40):
    w.write(make_sample(f"k{i:03d}", "image"))
    print("tar", flush=True)
    time.sleep(0.1)
w.close()
"""


def test_a_writer_killed_between_tars_or_failing_leaves_no_visible_set(bucket):
    folder = f"{bucket}/killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[1])])}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, folder], stdout=subprocess.PIPE, env=env, text=True)
    assert [proc.stdout.readline() for _ in range(5)] == ["tar\n"] * 5
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    names = [u.rsplit("/", 1)[-1] for u, _ in storage.list_files(folder)]
    assert fmt.shard_name("t_image", "v1", 4) in names and fmt.INDEX_NAME not in names
    assert find_sets(folder) == []
    with pytest.raises(ShardSetError, match="never published"):
        ShardStream({"image": folder})

    with pytest.raises(RuntimeError, match="injected"), ShardSetWriter(folder, "t_image", "v1", max_samples=2) as w:
        for i in range(5):
            w.write(make_sample(f"k{i:03d}", "image"))
        raise RuntimeError("injected between the tars and the index")
    assert len(w.shards) == 2 and not storage.exists(f"{folder}/{fmt.INDEX_NAME}")

    _write(folder)  # a clean run: 3 tars, and the killed run's tars 3, 4, ... are gone
    names = [u.rsplit("/", 1)[-1] for u, _ in storage.list_files(folder)]
    assert names == [fmt.INDEX_NAME] + [fmt.shard_name("t_image", "v1", i) for i in range(3)]
    with pytest.raises(FileExistsError, match="published set is here"):
        ShardSetWriter(folder, "t_image", "v1")
    ShardSetWriter(folder, "t_image", "v1", overwrite=True)  # unpublishes before writing any tar
    assert not storage.exists(f"{folder}/{fmt.INDEX_NAME}")


def test_an_unreachable_endpoint_gives_a_clear_error_naming_it(s3_server, monkeypatch, capsys):
    from shards.__main__ import main as shards_main

    port = free_port()  # bound, then closed: nothing listens
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(storage, "S3_RETRIES", {"max_attempts": 1, "mode": "standard"})  # fail fast
    storage._client.cache_clear()
    with pytest.raises(storage.StorageError, match=rf"EndpointConnectionError from http://127.0.0.1:{port} after 2"):
        ShardStream({"image": "s3://nowhere/image"}, attempts=2)
    assert shards_main(["inspect", "s3://nowhere/image"]) == 2
    assert f"127.0.0.1:{port}" in capsys.readouterr().err
    storage._client.cache_clear()


class CuttingProxy:
    """A TCP relay to the S3 server that drops the connection once, mid-response, after ``cut_after`` bytes."""

    def __init__(self, target: str, cut_after: int):
        self.target, self.cut_after, self.cuts_left = target, cut_after, 1
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            client, _ = self.server.accept()
            host, port = self.target.removeprefix("http://").split(":")
            upstream = socket.create_connection((host, int(port)))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src, dst, may_cut):
        sent = 0
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                sent += len(data)
                if may_cut and self.cuts_left and sent > self.cut_after:
                    self.cuts_left -= 1
                    break
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)  # wakes the relay's other direction at once
            s.close()


def test_a_read_cut_mid_body_reconnects_at_its_byte_and_says_so_when_out_of_attempts(bucket, monkeypatch):
    payload = bytes(np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8))
    storage.write_bytes(f"{bucket}/big.bin", payload)
    proxy = CuttingProxy(os.environ["AWS_ENDPOINT_URL"], cut_after=1 << 20)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    with storage.open_stream(f"{bucket}/big.bin") as stream:
        assert stream.read() == payload and proxy.cuts_left == 0  # cut once, resumed by a ranged GET
    proxy.cuts_left = 1
    with pytest.raises(storage.StorageError, match=r"big.bin: .*Error from http://127.0.0.1:\d+ after 1 attempt"):
        with storage.open_stream(f"{bucket}/big.bin", attempts=1) as stream:
            stream.read()
    storage._client.cache_clear()
