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


class ClusterError(RuntimeError):
    """A cluster this driver cannot join; the message says what to give it."""


def init_ray(ray_cfg) -> None:
    """Join ``ray_cfg.address`` or start a local cluster sized to the machine (or to ``num_cpus``);
    then set the shuffle strategy of this driver's Ray Data (see ``RayConfig.shuffle``).

    A cluster started by ``ray start`` uses token authentication by default; Ray finds the token in
    ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names, or ``~/.ray/auth_token`` (where
    ``ray start`` on the head wrote it)."""
    import ray
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    if ray_cfg.address and not ray.is_initialized():
        # Ray 2.60 (pinned): a driver joining by address sends no token unless RAY_AUTH_MODE=token, even
        # where one is available; take token mode when a token is (RAY_AUTH_MODE, if set, still decides)
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        try:
            ray.init(address=ray_cfg.address, log_to_driver=False)
        except ConnectionError as exc:
            if "InvalidAuthToken" not in _causes(exc):
                raise
            raise ClusterError(
                f"cluster {ray_cfg.address} refused this driver's token (missing or not the cluster's); give it "
                "the head's token: RAY_AUTH_TOKEN=TOKEN, RAY_AUTH_TOKEN_PATH=FILE, or the head's ~/.ray/auth_token "
                "copied here (`ray get-auth-token` on the head prints it)"
            ) from None
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


def _causes(exc: BaseException) -> str:
    """The messages of an exception and of every exception that caused it."""
    text = ""
    while exc is not None:
        text, exc = text + f"{type(exc).__name__}: {exc}\n", exc.__cause__ or exc.__context__
    return text
