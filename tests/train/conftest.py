"""Fixtures of the trainer tests; the shard factory itself lives in trainkit.py."""

import pytest
from trainkit import write_shards


@pytest.fixture
def shard_factory(tmp_path):
    def make(**kw):
        folder = tmp_path / kw.pop("sub", "shards")
        return write_shards(folder, **kw)

    return make


@pytest.fixture(autouse=True)
def _no_process_group():
    """Every test starts and ends without a default process group."""
    import torch.distributed as dist

    yield
    if dist.is_initialized():
        dist.destroy_process_group()
