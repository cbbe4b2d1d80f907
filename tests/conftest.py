"""Session fixtures: one real local Ray cluster, one real S3 server on 127.0.0.1, one demo corpus, and
that corpus curated once by the local executor."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ports import free_port


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    # address="local": always a fresh cluster of our own, never one that `ray start` left on the machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=1 << 30, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server over HTTP on loopback; boto3 finds it through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env["AWS_ENDPOINT_URL"]
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


def _shared(tmp_path_factory, name: str, build) -> Path:
    """A session artefact built once for all test processes: with pytest-xdist the first worker to
    ask builds it under the run's common temp folder while the others wait on a lock."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    from curate.demo.corpus import build

    return _shared(tmp_path_factory, "demo-corpus", lambda root: build(str(root)))


# ``python -m curate`` in a process where ``import ray`` fails, as on a machine without Ray
WITHOUT_RAY = """
import runpy, sys
class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "ray":
            raise ImportError(f"No module named {name!r} (this test's process has no Ray)")
sys.meta_path.insert(0, NoRay())
runpy.run_module("curate", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="session")
def demo_local(demo_corpus, tmp_path_factory):
    """The demo manifest curated once by the local executor in a fresh process that cannot import Ray:
    the reference that the Ray, cluster and resume tests compare with. Read it only; copy it to change it."""

    def curate(out: Path) -> None:
        cmd = [
            sys.executable,
            "-c",
            WITHOUT_RAY,
            "run",
            "manifests/demo.toml",
            f"--output.dir={out}",
            "--executor=local",
        ]
        env = dict(os.environ, DEMO_CORPUS=str(demo_corpus))
        done = subprocess.run([*cmd, "--quiet"], env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    return _shared(tmp_path_factory, "demo-local", curate)
