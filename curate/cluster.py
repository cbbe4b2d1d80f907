"""Ray cluster settings for the driver and its tasks: joining or starting a cluster, the S3 settings
workers need, and the shuffle width. Imports nothing of curate, so domain code (dedup, OCR
vocabulary, concept banks) can size its Ray work without reaching into the stage adapter."""

from __future__ import annotations

import os

from shards import storage


def worker_env() -> dict:
    """The driver's S3 settings, forwarded to every task so workers reach the same store."""
    env = storage.s3_settings().as_env()
    return {"runtime_env": {"env_vars": env}} if env else {}


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)))


def shuffle_partitions() -> int:
    """Hash partitions of a shuffle or aggregation: two per cluster CPU, not Ray Data's 200, which
    cost seconds of scheduling per step on small inputs and buy nothing on a small cluster."""
    return 2 * cluster_cpus()


def init_ray(ray_cfg) -> None:
    """Join ``ray_cfg.address`` or start a local cluster sized to the machine (or to ``num_cpus``);
    then set the shuffle strategy of this driver's Ray Data (see ``RayConfig.shuffle``)."""
    import ray
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    if ray_cfg.address and not ray.is_initialized():
        ray.init(address=ray_cfg.address, log_to_driver=False)
    elif not ray.is_initialized():
        ray.init(
            address="local",  # a new cluster sized to this machine, even if `ray start` runs here
            num_cpus=ray_cfg.num_cpus,
            include_dashboard=False,
            object_store_memory=int(ray_cfg.object_store_gb * 2**30),
            log_to_driver=False,
        )
    # the demo (three global steps) curated in 34 s with "sort", 48 s with Ray Data's default: same shards
    strategy = {"sort": ShuffleStrategy.SORT_SHUFFLE_PULL_BASED, "hash": ShuffleStrategy.HASH_SHUFFLE}[ray_cfg.shuffle]
    DataContext.get_current().shuffle_strategy = strategy
