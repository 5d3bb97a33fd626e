"""The Ray generation driver's edge cases, against a fake ``ray`` module (no cluster).

The fake runs each actor call at once, in this process, with the fake backend; a test
decides what a call does (reply, die after publishing, never get placed). What is
tested is the driver: the job record it writes, when it gives up, what it regenerates.
The same paths on a real cluster: test_ray_retry.py, test_ray_multinode.py.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpu_worker.job import run_generation
from gpu_worker.ray_job import ShardActor
from shared.errors import TandemError
from shared.spec import RunSpec
from shared.store import Store

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed")
ROOT = Path(__file__).resolve().parents[2]


class Ref:
    """An object ref: its call already ran, or it never will (an unplaced actor)."""

    def __init__(self, call: Callable[[], Any], pending: bool) -> None:
        self.pending = pending
        self.value: Any = None
        self.error: BaseException | None = None
        if not pending:
            try:
                self.value = call()
            except Exception as error:
                self.error = error


class Method:
    def __init__(self, call: Callable[..., Any], pending: bool = False) -> None:
        self.call, self.pending = call, pending

    def remote(self, *args: Any) -> Ref:
        return Ref(lambda: self.call(*args), self.pending)


class FakeActor:
    def __init__(self, ray: FakeRay, number: int, spec, store_uri, record) -> None:
        self.number = number
        self.inner = ShardActor(spec, store_uri, record)
        placed = number not in ray.unplaceable
        self.info = Method(self.inner.info, pending=not placed)
        self.node_id = Method(lambda: f"node-{number}", pending=not placed)
        self.run = Method(lambda job: ray.on_run(self, job))


class FakeRay:
    def __init__(self, resources: dict[str, float] | None = None) -> None:
        self.resources = resources or {"CPU": 2.0}
        self.unplaceable: set[int] = set()  # actor numbers (1 = first) never placed
        self.actors: list[FakeActor] = []
        self.timeouts: list[float | None] = []
        self.on_run: Callable[[FakeActor, Any], Any] = lambda actor, job: actor.inner.run(job)

    def is_initialized(self) -> bool:
        return True

    def cluster_resources(self) -> dict[str, float]:
        return dict(self.resources)

    def remote(self, **_: Any):
        ray = self

        class ActorClass:
            def options(self, **_: Any) -> ActorClass:
                return self

            def remote(self, *args: Any) -> FakeActor:
                actor = FakeActor(ray, len(ray.actors) + 1, *args)
                ray.actors.append(actor)
                return actor

        return lambda cls: ActorClass()

    def get(self, refs: Any) -> Any:
        if isinstance(refs, list):
            return [self.get(ref) for ref in refs]
        if refs.pending:
            raise AssertionError("the driver would block forever on an unplaced actor")
        if refs.error is not None:
            raise refs.error
        return refs.value

    def wait(self, refs: list[Ref], num_returns: int = 1, timeout: float | None = None):
        self.timeouts.append(timeout)
        ready = [ref for ref in refs if not ref.pending]
        if ready:
            return ready[:num_returns], [r for r in refs if r is not ready[0]]
        if timeout is None:
            raise AssertionError("the driver would wait forever: nothing can finish")
        return [], refs

    def kill(self, actor: FakeActor, no_restart: bool = True) -> None:
        pass


@pytest.fixture
def fake_ray(monkeypatch) -> FakeRay:
    import ray.exceptions  # noqa: F401  the real ones stay in sys.modules for the driver

    ray = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # never dialled: the fake is initialized
    return ray


def node_died() -> Exception:
    from ray.exceptions import RayActorError

    return RayActorError(error_msg="The actor died because its node has died.")


def spec_for(data_dir: Path, run_id: str, shards: int = 3) -> RunSpec:
    return RunSpec(
        run_id=run_id,
        backend="fake",
        tasks=("ifeval",),
        limit={"ifeval": shards},
        shard_size=1,
        data_dir=str(data_dir),
        generation={"max_new_tokens": 8},
    )


def only_job(store: Path, run_id: str):
    jobs = Store(store).jobs(run_id)
    assert len(jobs) == 1
    return jobs[0]


def test_no_placeable_replacement_fails_instead_of_hanging(
    tmp_path, data_dir, fake_ray, monkeypatch
) -> None:
    """One worker, its node lost, the replacement never placed: the job stops after the
    placement timeout and says so, in the error and in the job record."""
    monkeypatch.setenv("TANDEM_RAY_PLACEMENT_TIMEOUT", "0.25")
    fake_ray.unplaceable = {2}

    def dies(actor: FakeActor, job: Any) -> Any:
        raise node_died()

    fake_ray.on_run = dies
    store = tmp_path / "store"
    with pytest.raises(TandemError, match=r"no worker could be placed .* for 0.25 s; .*rerun"):
        run_generation(spec_for(data_dir, "lost"), str(store), local=False, workers=1)
    assert fake_ray.timeouts[-1] == 0.25  # only waiting on the replacement: bounded
    assert None in fake_ray.timeouts  # a shard in flight is waited on without a limit
    record = only_job(store, "lost")
    assert record.status == "failed" and "no worker could be placed" in (record.error or "")
    assert record.actors_started == 2


def test_placement_timeout_must_be_positive(tmp_path, data_dir, fake_ray, monkeypatch) -> None:
    monkeypatch.setenv("TANDEM_RAY_PLACEMENT_TIMEOUT", "soon")
    with pytest.raises(TandemError, match="TANDEM_RAY_PLACEMENT_TIMEOUT='soon'"):
        run_generation(spec_for(data_dir, "patience"), str(tmp_path), local=False, workers=1)


def test_shard_published_before_its_worker_died_is_not_generated_again(
    tmp_path, data_dir, fake_ray
) -> None:
    """The worker publishes the shard and dies before replying: the shard is done where
    it ran, the file stays the first one, and no other worker regenerates it."""
    runs: list[tuple[int, str]] = []
    victim = "0000001-0000002"

    def publishes_then_dies(actor: FakeActor, job: Any) -> Any:
        runs.append((actor.number, job.ref.name))
        stats = actor.inner.run(job)
        if job.ref.name == victim and actor.number == 1:
            raise node_died()
        return stats

    fake_ray.on_run = publishes_then_dies
    store = tmp_path / "store"
    result = run_generation(spec_for(data_dir, "published"), str(store), local=False, workers=1)
    assert result.shards_done == 3
    assert [name for _, name in runs].count(victim) == 1
    stats = {s["shard"]: s for s in result.stats}
    assert stats[victim]["already_published"] and stats[victim]["node_id"] == "node-1"
    assert stats[victim]["samples"] == 1
    record = only_job(store, "published")
    assert record.status == "done" and record.actors_started == 2
    placed = {s.shard: s for s in record.shards}
    assert placed[victim].node_id == "node-1" and placed[victim].attempts == 1
    assert len(Store(store).list_shards("published", "generations", "ifeval")) == 3


def test_run_shard_never_replaces_a_published_shard(tmp_path, data_dir) -> None:
    from gpu_worker.backends import create_backend
    from gpu_worker.job import plan, provenance
    from gpu_worker.shards import run_shard
    from shared.tasks import TASKS

    spec = spec_for(data_dir, "once", shards=1)
    store = Store(tmp_path)
    _, jobs, _, record = plan(spec, store, None, None)
    backend = create_backend(spec)
    job = jobs[0]

    def run() -> dict[str, Any]:
        args = (job.ref, job.samples, job.chat, provenance(spec, record))
        return run_shard(backend, store, spec, TASKS[job.task], *args)

    first = run()
    path = Path(store.shard_path("generations", job.ref))
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    again = run()
    assert "already_published" not in first and again["already_published"] is True
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert {k: v for k, v in again.items() if k != "already_published"} == first


def test_bad_ray_resource_leaves_a_failed_job_record(tmp_path, data_dir, fake_ray) -> None:
    store = tmp_path / "store"
    with pytest.raises(TandemError, match="no 'gpu_slot' resource"):
        run_generation(
            spec_for(data_dir, "noslot"), str(store), local=False, ray_resource="gpu_slot"
        )
    record = only_job(store, "noslot")
    assert record.status == "failed" and "gpu_slot" in (record.error or "")
    assert record.finished_at and record.actors_started == 0
    assert not Store(store).list_runs()  # no run.json: nothing was generated


def test_a_job_record_that_cannot_be_written_does_not_hide_the_failure(
    tmp_path, data_dir, fake_ray, monkeypatch, capsys
) -> None:
    def broken(self, record) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Store, "publish_job", broken)
    with pytest.raises(TandemError, match="no 'gpu_slot' resource"):
        run_generation(
            spec_for(data_dir, "norecord"),
            str(tmp_path / "store"),
            local=False,
            ray_resource="gpu_slot",
        )
    assert "could not write the job record" in capsys.readouterr().err


def test_a_job_record_that_cannot_be_written_fails_a_finished_job(
    tmp_path, data_dir, fake_ray, monkeypatch
) -> None:
    def broken(self, record) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Store, "publish_job", broken)
    with pytest.raises(OSError, match="disk full"):
        run_generation(spec_for(data_dir, "done"), str(tmp_path / "store"), local=False)


@pytest.mark.parametrize("local", [True, False])
def test_ray_resource_without_ray_is_refused(tmp_path, local: bool) -> None:
    """--ray-resource does nothing off Ray: --local, or no RAY_ADDRESS, is an error."""
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    argv = [sys.executable, "-m", "tandem", "generate", str(ROOT / "examples" / "fake.toml")]
    argv += ["--store", str(store), "--ray-resource", "gpu_slot", "--quiet"]
    argv += ["--local"] if local else []
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert err.startswith("tandem: error: --ray-resource gpu_slot only applies to a job on Ray")
    assert "--local" in err if local else "RAY_ADDRESS is not set" in err
    assert "Traceback" not in done.stderr and err.count("\n") == 0
    assert not store.exists()
