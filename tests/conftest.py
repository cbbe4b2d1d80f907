"""Session fixtures: one real local Ray cluster, one real S3 server on 127.0.0.1, one demo corpus, and
that corpus curated once by the local executor."""

from __future__ import annotations

import os
import subprocess
import sys

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


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    from curate.demo_corpus import build

    root = tmp_path_factory.mktemp("demo-corpus")
    build(str(root))
    return root


@pytest.fixture(scope="session")
def demo_local(demo_corpus, tmp_path_factory):
    """The demo manifest curated once by the local executor in a fresh process: the reference that the
    Ray, cluster and resume tests compare with. Read it only; copy it to change it."""
    out = tmp_path_factory.mktemp("demo-local")
    cmd = [sys.executable, "-m", "curate", "run", "manifests/demo.toml", f"--output.dir={out}", "--executor=local"]
    env = dict(os.environ, DEMO_CORPUS=str(demo_corpus))
    done = subprocess.run([*cmd, "--quiet"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out
