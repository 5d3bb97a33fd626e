"""Ray: a dead actor's shard is retried on another actor, a worker that cannot start
says why, and a job stopped by failures resumes where it stopped.

Runs on the private loopback Ray head (tests/conftest.py ``ray_head``) with the fake
backend, so no model loads. Crashes are injected by a ShardActor subclass that kills
its own process (os._exit: no exception, no cleanup, as an OOM kill looks to Ray).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

import gpu_worker.ray_job as ray_job
from gpu_worker.job import run_generation
from gpu_worker.ray_job import ShardActor
from shared.errors import TandemError
from shared.spec import RunSpec
from shared.store import Store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed"),
]


class CrashingActor(ShardActor):
    """Dies (hard) on the shard named in CRASH_SHARD: once, or every time."""

    CRASH_SHARD = "0000002-0000003"
    MARKER = ""  # a file: its existence means "already crashed once"
    ALWAYS = False

    def run(self, job):
        if job.ref.name == self.CRASH_SHARD:
            marker = Path(self.MARKER)
            if self.ALWAYS or not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
        return super().run(job)


def crashing(marker: Path, always: bool) -> type:
    # Class attributes travel with the pickled class to the workers.
    return type(
        "CrashingActorConfigured",
        (CrashingActor,),
        {"MARKER": str(marker), "ALWAYS": always},
    )


@pytest.fixture
def ray_address(ray_head, monkeypatch):
    """This process as a driver of the loopback head, and only of it.

    Ray swaps 127.0.0.1 for the host's network address unless
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set when ray was *imported*; another test
    may have imported it first, so the constant it read is patched too, and the driver
    connects with an explicit loopback node address. ``run_ray`` then finds Ray
    initialized and uses this connection.
    """
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_ADDRESS", ray_head.gcs_address)
    import ray
    import ray._private.ray_constants as constants

    monkeypatch.setattr(constants, "ENABLE_RAY_CLUSTER", False)
    assert ray_head.gcs_address.startswith("127.0.0.1:")
    ray.init(address=ray_head.gcs_address, _node_ip_address="127.0.0.1", log_to_driver=False)
    # The crashing actor lives in this test module, which Ray's workers cannot import.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


def spec_for(data_dir: Path, run_id: str, backend: str = "fake") -> RunSpec:
    return RunSpec(
        run_id=run_id,
        backend=backend,
        tasks=("ifeval",),
        limit={"ifeval": 5},
        shard_size=1,
        data_dir=str(data_dir),
        generation={"max_new_tokens": 8},
    )


def test_dead_actors_shard_is_retried_on_another_actor(
    tmp_path, data_dir, ray_address, monkeypatch
) -> None:
    marker = tmp_path / "crashed"
    monkeypatch.setattr(ray_job, "ShardActor", crashing(marker, always=False))
    store = tmp_path / "store"
    result = run_generation(
        spec_for(data_dir, "retry"), str(store), local=False, workers=2, progress=False
    )
    assert result.shards_done == 5  # every shard exactly once
    assert marker.exists()
    dead_pid = int(marker.read_text())
    retried = [s for s in result.stats if s["shard"] == CrashingActor.CRASH_SHARD]
    assert len(retried) == 1 and retried[0]["actor"] != dead_pid
    shards = Store(store).list_shards("retry", "generations", "ifeval")
    assert len(shards) == 5


def test_worker_that_cannot_start_says_why(tmp_path, data_dir, ray_address) -> None:
    # unsloth is refused without an NVIDIA GPU: in the actor's __init__ on Ray.
    if ray_address.cluster_resources().get("GPU"):
        pytest.skip("this head has a GPU")
    spec = spec_for(data_dir, "nostart").model_copy(update={"backend": "unsloth"})
    with pytest.raises(TandemError, match="a worker could not start: .*NVIDIA"):
        run_generation(spec, str(tmp_path / "store"), local=False, workers=1, progress=False)
    # The job still leaves its record, saying why; no run was started.
    (job,) = Store(tmp_path / "store").jobs("nostart")
    assert job.status == "failed" and "NVIDIA" in (job.error or "")
    assert not Store(tmp_path / "store").list_runs()


def test_job_stopped_by_failures_resumes(tmp_path, data_dir, ray_address, monkeypatch) -> None:
    store = tmp_path / "store"
    spec = spec_for(data_dir, "resume")
    monkeypatch.setattr(ray_job, "ShardActor", crashing(tmp_path / "crashed", always=True))
    with pytest.raises(TandemError, match="worker died 3 times"):
        run_generation(spec, str(store), local=False, workers=2, progress=False)
    published = Store(store).list_shards("resume", "generations", "ifeval")
    assert CrashingActor.CRASH_SHARD not in [s.name for s in published]
    assert len(published) == 4  # the others finished and stay

    monkeypatch.setattr(ray_job, "ShardActor", ShardActor)
    again = run_generation(spec, str(store), local=False, workers=2, progress=False)
    assert again.shards_skipped == 4 and again.shards_done == 1
    assert [s["shard"] for s in again.stats] == [CrashingActor.CRASH_SHARD]


DRIVER = """
import sys, time
import ray
import gpu_worker.ray_job as ray_job
from gpu_worker.job import run_generation
from gpu_worker.ray_job import ShardActor
from shared.spec import RunSpec

class SlowActor(ShardActor):
    def run(self, job):
        time.sleep(1.5)  # slow enough that the driver is killed mid-job
        return super().run(job)

ray_job.ShardActor = SlowActor
ray.init(address=sys.argv[1], _node_ip_address="127.0.0.1", log_to_driver=False)
spec = RunSpec.model_validate_json(sys.argv[2])
run_generation(spec, sys.argv[3], local=False, workers=1, progress=False)
"""


def test_job_killed_mid_run_resumes(tmp_path, data_dir, ray_head, ray_address) -> None:
    """SIGKILL the driver of a running Ray job; the rerun does only what is missing."""
    import signal
    import subprocess
    import time

    store = tmp_path / "store"
    spec = spec_for(data_dir, "killed")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            DRIVER,
            ray_head.gcs_address,
            spec.model_dump_json(),
            str(store),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shards = store / "runs" / "killed" / "generations" / "ifeval"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            done = [p for p in shards.glob("*.parquet")] if shards.exists() else []
            if len(done) >= 2:
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the driver finished before it could be killed"
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait(timeout=30)
    before = {s.name for s in Store(store).list_shards("killed", "generations", "ifeval")}
    assert 2 <= len(before) < 5

    again = run_generation(spec, str(store), local=False, workers=2, progress=False)
    assert again.shards_skipped == len(before)
    assert again.shards_done == 5 - len(before)
    assert {s["shard"] for s in again.stats}.isdisjoint(before)
    after = Store(store).list_shards("killed", "generations", "ifeval")
    assert len(after) == 5
