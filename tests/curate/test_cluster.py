"""The demo manifest on a real two-node Ray cluster (two `ray start` processes on this machine)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ports import free_port

from curate.ledger import read_ledger

RAY = str(Path(sys.executable).with_name("ray"))
RAY_LINE = re.compile(r"^\S+ [\d:,]+\s+(INFO|WARNING|ERROR) \S+\.py:\d+ -- ", re.M)  # Ray's logging format


def _tars(out: Path) -> dict:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.tar"))}


@contextlib.contextmanager
def _cluster(nodes: int, cpus: int):
    """``nodes`` `ray start` processes on this machine, ``cpus`` each, each with its own temp folder."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # Ray's default: token authentication
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    port = free_port()
    # own session folders (short: Ray's socket paths have a length limit)
    temps = [tempfile.mkdtemp(prefix=f"ovf-ray{i}-") for i in range(nodes)]
    common = [f"--num-cpus={cpus}", "--object-store-memory=400000000", "--block", "--disable-usage-stats"]
    head = subprocess.Popen(
        [RAY, "start", "--head", f"--port={port}", f"--temp-dir={temps[0]}", "--include-dashboard=false", *common],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    procs = [head]
    try:
        address = f"127.0.0.1:{port}"
        _wait_for(lambda: _listening(port), "head node")
        for temp in temps[1:]:
            procs.append(
                subprocess.Popen(
                    [RAY, "start", f"--address={address}", f"--temp-dir={temp}", *common],
                    env=dict(env, RAY_AUTH_MODE="token"),  # a joining node sends the token only in token mode
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        _wait_for_nodes(address, env, nodes)
        yield address, env
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=5)  # `ray start --block` may ignore SIGTERM while it cleans up
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture()
def two_nodes():
    # two CPUs per node: a demo pass holds up to two actor pools (ocr, embed) beside its task stages;
    # with one CPU per node the run once hung waiting for a CPU (1 of 4 runs)
    with _cluster(2, 2) as cluster:
        yield cluster


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_for_nodes(address: str, env: dict, n: int, seconds: int = 120) -> None:
    code = (
        f"import ray, time; ray.init(address={address!r}, log_to_driver=False)\n"
        f"deadline = time.time() + {seconds}\n"
        f"while sum(x['Alive'] for x in ray.nodes()) < {n}:\n"
        "    assert time.time() < deadline, 'nodes did not join'\n"
        "    time.sleep(0.5)\n"
    )
    env = dict(env, RAY_AUTH_MODE="token")  # a bare ray.init(address) sends the token only in token mode
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=seconds + 60)
    assert out.returncode == 0, out.stderr[-3000:]


def _wait_for(check, what: str, seconds: float = 90):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not come up in {seconds}s")


@pytest.mark.slow
def test_demo_manifest_on_a_two_node_cluster_equals_the_local_run(two_nodes, demo_corpus, demo_local, tmp_path):
    address, env = two_nodes
    env = dict(env, DEMO_CORPUS=str(demo_corpus))
    base = [sys.executable, "-m", "curate", "run", "manifests/demo.toml"]
    cluster = subprocess.run(
        [*base, f"--output.dir={tmp_path / 'cluster'}", "--address", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert cluster.returncode == 0, cluster.stdout[-3000:] + cluster.stderr[-3000:]
    assert "inputs = kept + dropped + failed: checked" in cluster.stdout
    assert _tars(tmp_path / "cluster") == _tars(demo_local) != {}
    # the console shows our progress and summary only (166 lines of Ray's and ours before); Ray's is in _logs
    lines = cluster.stdout.splitlines()
    assert 40 < len(lines) < 100 and cluster.stderr == "", cluster.stdout + cluster.stderr
    assert [line for line in lines if RAY_LINE.search(line)] == []
    assert sum(line.startswith("pass 4/4: 7/7 partitions, 90 inputs (kept 64,") for line in lines) == 1
    assert "global step concepts over the rows of pass 2: done in " in cluster.stdout
    log = (tmp_path / "cluster" / "_logs" / "ray.log").read_text()
    assert "Starting execution of Dataset" in log and len(RAY_LINE.findall(log)) > 10
    # a driver holding another token is refused with one line that says where the token comes from
    wrong = subprocess.run(
        [*base, "--quiet", f"--output.dir={tmp_path / 'refused'}", "--address", address],
        env=dict(env, RAY_AUTH_TOKEN="0" * 64),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr, wrong.stderr[-3000:]
    assert f"error: cluster {address} refused this driver's token" in wrong.stderr and "RAY_AUTH_TOKEN" in wrong.stderr


def _image_corpus(root: Path) -> None:
    """Six distinct photographs, a byte copy and a half-size copy of the first: two duplicates to drop."""
    import skimage.data
    from PIL import Image

    root.mkdir()
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket", "camera", "coins")):
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((320, 240)).save(root / f"p{i}.jpg")
    shutil.copy(root / "p0.jpg", root / "p0_copy.jpg")
    Image.open(root / "p0.jpg").resize((200, 150)).save(root / "p0_half.png")


def _curated_bytes(out: Path) -> dict:
    """Every published file of a run that must not depend on where it ran: shards, their indexes, the ledger."""
    files = [*out.glob("shards/**/*"), *out.glob("ledger/*.parquet")]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files) if p.is_file()}


@pytest.mark.slow
def test_two_one_cpu_nodes_curate_the_bytes_one_two_cpu_node_does(tmp_path):
    """Partitions spread over two nodes (separate temp folders, Ray's token authentication) and the dedup
    shuffle crossing them give the shards and ledger that one node with both CPUs gives."""
    _image_corpus(tmp_path / "images")
    manifest = tmp_path / "small.toml"
    manifest.write_text(
        f'name = "small"\npartition_size = 2\n[output]\ndir = "{tmp_path / "unused"}"\n'
        f'[[sources]]\nmodality = "image"\nuri = "{tmp_path / "images"}"\n'
        '[[stages]]\nname = "image_decode"\nsize = 128\n[[stages]]\nname = "dedup_signatures"\n'
        '[[stages]]\nname = "dedup_group"\nkinds = ["exact", "pixel", "perceptual"]\n'
    )
    base = [sys.executable, "-m", "curate", "run", str(manifest), "--quiet"]
    with _cluster(2, 1) as (address, env):
        two = subprocess.run(
            [*base, f"--output.dir={tmp_path / 'two'}", "--address", address], env=env, capture_output=True, text=True
        )
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = subprocess.run(
        [*base, f"--output.dir={tmp_path / 'one'}", "--ray.num_cpus=2"], capture_output=True, text=True
    )
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    curated = _curated_bytes(tmp_path / "two")
    assert (
        curated == _curated_bytes(tmp_path / "one") and len([f for f in curated if f.endswith(".tar")]) == 4
    )  # a shard per partition
    ledger = read_ledger(str(tmp_path / "two")).set_index("key")
    assert (ledger["status"].value_counts().to_dict(), len(ledger)) == ({"kept": 6, "dropped": 2}, 8)
