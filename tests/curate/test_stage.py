"""Stages run in-process and through Ray give identical rows; failures and drops are isolated per row."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from curate.stage import TIMING, Stage, apply_stage, new_rows, run_in_process


@dataclasses.dataclass(frozen=True)
class Square(Stage):
    """Test stage: fails on negative input, drops odd values, adds a payload column."""

    name = "square"
    modalities = ("image",)
    outputs = ("payload",)
    offset: int = 0

    def process_row(self, row):
        value = int(row["uri"])
        if value < 0:
            raise ValueError(f"negative input {value}")
        if value % 2:
            row["keep"], row["drop_reason"] = False, f"odd: {value} is odd"
        row["payload"] = str(value * value + self.offset).encode()
        row["meta"]["squared"] = True
        return row


def _batch(values):
    return new_rows(
        [{"key": f"k{i:03d}", "uri": str(v), "modality": "image", "partition": i % 3} for i, v in enumerate(values)]
    )


def test_failures_and_drops_become_ledger_statuses_and_good_rows_survive():
    out = apply_stage(Square(offset=1), _batch([2, -1, 3, 4]))
    assert list(out["status"]) == ["live", "failed", "dropped", "live"]
    assert out["reason"][1] == "square/ValueError" and out["detail"][1] == "negative input -1"
    assert out["reason"][2] == "square/odd" and out["detail"][2] == "3 is odd"
    assert list(out["payload"]) == [b"5", None, None, b"17"]  # dropped/failed rows carry no payload
    meta = json.loads(out["meta"][0])
    assert meta["squared"] is True and meta[TIMING]["square"] >= 0  # per-stage seconds ride in meta


def test_stage_skips_rows_of_other_modalities_and_settled_rows():
    batch = _batch([2, 4])
    batch["modality"][1] = "video"
    batch["status"][0] = "failed"
    out = apply_stage(Square(), batch)
    assert list(out["status"]) == ["failed", "live"] and list(out["payload"]) == [None, None]


def test_in_process_and_ray_give_identical_rows(ray_cluster, demo_corpus):
    """Real stages over real files (good, tiny, broken, truncated), through both runners."""
    import ray

    from curate.ray_runner import map_stage, to_arrow
    from curate.stages.filters import MinResolution
    from curate.stages.images import ImageDecode

    files = sorted((demo_corpus / "images").glob("*.*"))
    files = [f for f in files if f.suffix != ".json"][:10] + [demo_corpus / "images" / n for n in BAD]
    items = [{"key": f"k{i:03d}", "uri": str(f), "modality": "image", "partition": 0} for i, f in enumerate(files)]
    stages = [ImageDecode(size=64), MinResolution(min_side=64)]
    local = run_in_process(stages, new_rows(items), batch_size=4)
    table = to_arrow(new_rows(items))
    ds = ray.data.from_arrow([table.slice(0, 7), table.slice(7)])
    for stage in stages:
        ds = map_stage(ds, stage)
    remote = ds.to_pandas().sort_values("key").reset_index(drop=True)
    assert set(remote.columns) == set(local)
    for column in local:
        got = [v if isinstance(v, bytes | str | int) else None if pd.isna(v) else v for v in remote[column]]
        want = list(local[column])
        if column == "meta":  # equal but for the measured seconds
            got, want = ([{k: v for k, v in json.loads(m).items() if k != TIMING} for m in ms] for ms in (got, want))
        assert got == want, column
    statuses = dict(zip([f.name for f in files], local["status"], strict=True))
    assert statuses["tiny_thumbnail.jpg"] == "dropped" and statuses["not_an_image.jpg"] == "failed"
    assert statuses["truncated_photo.jpg"] == "failed"


BAD = ("tiny_thumbnail.jpg", "not_an_image.jpg", "truncated_photo.jpg")


@dataclasses.dataclass(frozen=True)
class Poison(Stage):
    """Test stage: 'crash' kills its own process with SIGSEGV, 'hang' never returns, 'flaky' fails once."""

    name = "poison"

    def setup(self):
        self.hold("ready", os.getpid())

    def process_row(self, row):
        if row["uri"] == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        if row["uri"] == "hang":
            time.sleep(3600)
        if row["uri"].startswith("flaky"):
            marker = Path(row["uri"].split(":", 1)[1])
            if not marker.exists():
                marker.write_text("failed once")
                raise ConnectionError("connection reset by peer")
        row["meta"]["pid"] = self.ready
        return row


def test_isolated_rows_crash_or_hang_alone_and_transient_errors_are_retried(tmp_path):
    uris = ["ok1", "crash", "ok2", f"flaky:{tmp_path / 'm1'}", "ok3"]
    # no time limit here: under load a fresh child can take seconds to start, and a crash must not
    # be mistaken for a timeout; the hang gets its own short limit below
    out = run_in_process([Poison(isolate=True, retries=2)], _batch(uris))
    status = dict(zip(uris, zip(out["status"], out["reason"], out["detail"], strict=True), strict=True))
    hang = run_in_process([Poison(isolate=True, timeout_s=2.0)], _batch(["hang"]))
    status["hang"] = (hang["status"][0], hang["reason"][0], hang["detail"][0])
    assert status["crash"][:2] == ("failed", "poison/WorkerCrashed") and "worker process died" in status["crash"][2]
    # the signal when the exit status could be read (another thread may reap the child first: then it says so)
    assert "exit code -11" in status["crash"][2] or "exit code not known" in status["crash"][2]
    assert status["hang"][:2] == ("failed", "poison/StageTimeout")
    assert [status[u][0] for u in uris if u.startswith(("ok", "flaky"))] == ["live"] * 4
    pids = {json.loads(m)["pid"] for m, s in zip(out["meta"], out["status"], strict=True) if s == "live"}
    assert os.getpid() not in pids  # the rows ran in child processes
    # without retries the same transient error fails the row, with its message
    out = run_in_process([Poison(isolate=True)], _batch([f"flaky:{tmp_path / 'm2'}"]))
    assert (out["status"][0], out["reason"][0], out["detail"][0]) == (
        "failed",
        "poison/ConnectionError",
        "connection reset by peer",
    )


def test_stage_pickles_without_its_loaded_state():
    import pickle

    stage = Poison(retries=1)
    stage.setup()
    clone = pickle.loads(pickle.dumps(stage))
    assert clone == stage and not hasattr(clone, "ready")


@pytest.mark.parametrize(
    "cpus_per_actor, pools, cluster, plan",
    [
        (1, 1, 16, (15, 1)),  # one pool may grow to all but one CPU
        (1, 2, 16, (7, 1)),  # two pools split the 15
        (2, 2, 16, (3, 2)),
        (1, 1, 2, (1, 1)),
        (1, 2, 2, (1, 0.5)),  # the demo's ocr + embed on 2 CPUs: half a CPU each, one CPU left to tasks
        (1, 3, 1, (1, 0.0)),  # one CPU: it stays with the tasks; actors share it
    ],
)
def test_actor_pools_always_leave_a_cpu_to_the_task_stages(cpus_per_actor, pools, cluster, plan):
    from curate.ray_runner import pool_plan

    size, cpus = pool_plan(cpus_per_actor, pools, cluster)
    assert (size, cpus) == plan
    assert pools * size * cpus <= max(0, cluster - 1)


@dataclasses.dataclass(frozen=True)
class KillOnce(Stage):
    """Test stage: the row ``kill:<marker>`` SIGKILLs the worker process the first time it is seen."""

    name = "kill_once"
    outputs = ("payload",)
    loaded: bool = False  # True: an actor stage, else a task stage

    @property
    def stateful(self) -> bool:
        return self.loaded

    def process_row(self, row):
        if row["uri"].startswith("kill:"):
            marker = Path(row["uri"].split(":", 1)[1])
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
        row["payload"] = row["uri"].encode()[::-1]
        return row


@pytest.mark.parametrize("loaded", [False, True], ids=["task", "actor"])
def test_a_worker_killed_mid_run_is_replaced_and_the_rows_come_out_the_same(ray_cluster, tmp_path, loaded):
    import sys

    import ray
    from ray import cloudpickle

    from curate.ray_runner import map_stage, to_arrow

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    marker = tmp_path / "killed"
    uris = ["a", "b", f"kill:{marker}", "c", "d", "e"]
    items = [{"key": f"k{i}", "uri": u, "modality": "image", "partition": i // 2} for i, u in enumerate(uris)]
    table = to_arrow(new_rows(items))
    ds = map_stage(ray.data.from_arrow([table.slice(i, 2) for i in range(0, 6, 2)]), KillOnce(loaded=loaded))
    remote = ds.to_pandas().sort_values("key").reset_index(drop=True)
    killed = int(marker.read_text())
    assert killed != os.getpid() and not Path(f"/proc/{killed}").exists()  # a real worker died
    local = run_in_process([KillOnce()], new_rows(items), batch_size=2)  # the marker exists: nobody dies
    assert list(remote["status"]) == list(local["status"]) == ["live"] * 6
    assert list(remote["payload"]) == list(local["payload"]) == [u.encode()[::-1] for u in uris]


def test_every_registered_stage_resolves_and_a_video_worker_loads_no_torch():
    """The registry names each stage's module; importing the video stages leaves torch (the concepts
    stage's) unloaded, so a video worker's memory is the video's, not a model library's."""
    import subprocess
    import sys

    from curate.stages import STAGES, stage_class

    assert all(stage_class(name).name == name for name in STAGES)
    probe = "import sys, curate.stages.codec, curate.stages.video, curate.stages.dedup; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "False", out.stderr[-2000:]
