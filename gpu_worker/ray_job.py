"""The generation job over Ray: a pool of ``ShardActor`` replicas (one per GPU, one per
unit of a custom resource, or CPU actors that split the node's cores), each taking the
next shard when it is free; a dead actor's shard is retried on a live one and the actor
replaced. ``gpu_worker.job.run_generation`` calls ``run_ray`` when the job runs on Ray;
the job's record (``jobs/<job_id>.json``) says where each shard ran and why any was
retried.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from typing import Any

from gpu_worker.environment import utc_now
from gpu_worker.job import (
    ShardJob,
    provenance,
    show_progress,
    start_run,
    worker_info,
)
from shared.errors import TandemError
from shared.records import JobRecord, RunRecord, ShardAttempt, ShardPlacement, WorkerInfo
from shared.spec import RunSpec
from shared.store import GENERATIONS, Store
from shared.tasks import TASKS

# Attempts per shard before the job stops (a rerun resumes it).
MAX_ATTEMPTS = 3


class ShardActor:
    """One model replica. Ray places it (one per GPU, or a share of the CPU cores)."""

    def __init__(self, spec: RunSpec, store_uri: str, record: RunRecord):
        from gpu_worker.backends import create_backend

        self.spec = spec
        self.store = Store(store_uri)
        self.record = record
        self.backend = create_backend(spec)
        self.worker = worker_info(self.backend)

    def info(self) -> WorkerInfo:
        """What this replica resolved; the driver records it in run.json."""
        return self.worker

    def node_id(self) -> str:
        """The Ray node this replica runs on (answered once its backend has loaded)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, job: ShardJob) -> dict[str, Any]:
        from gpu_worker.shards import run_shard

        stats = run_shard(
            self.backend,
            self.store,
            self.spec,
            TASKS[job.task],
            job.ref,
            job.samples,
            job.chat,
            provenance(self.spec, self.record),
            self.worker,
        )
        stats["actor"] = os.getpid()
        return stats


def _actor_options(
    spec: RunSpec, workers: int | None, resource: str | None = None
) -> tuple[int, dict[str, Any]]:
    import ray

    resources = ray.cluster_resources()
    if resource:
        # A custom resource stands for a GPU (or any slot the operator declared with
        # `ray start --resources`): one actor per unit, wherever the units are.
        slots = int(resources.get(resource, 0))
        if slots < 1:
            have = ", ".join(sorted(k for k in resources if not k.startswith("node:")))
            raise TandemError(
                f"--ray-resource {resource}: the cluster has no {resource!r} resource "
                f"(it has: {have}); start its nodes with "
                f"`ray start --resources '{{\"{resource}\": 1}}'`"
            )
        return workers or slots, {"num_cpus": 1, "resources": {resource: 1}}
    gpus = int(resources.get("GPU", 0))
    if gpus and spec.device != "cpu":
        count = workers or gpus
        return count, {"num_gpus": 1, "num_cpus": 1}
    cpus = max(1, int(resources.get("CPU", 1)))
    count = workers or 1
    per_actor = max(1, cpus // count)
    # Each actor's torch uses exactly its share of cores: oversubscribed threads are
    # ~10x slower on small CPUs.
    env = {"TANDEM_THREADS": str(per_actor), "OMP_NUM_THREADS": str(per_actor)}
    return count, {"num_cpus": per_actor, "runtime_env": {"env_vars": env}}


def _init_error(error: Exception) -> str:
    """The user-facing line of an actor's failed __init__ (Ray passes only the text)."""
    text = str(error)
    if "TandemError:" in text:
        return text.rsplit("TandemError:", 1)[1].strip()
    return text.strip().splitlines()[-1] if text.strip() else repr(error)


def _failure_reason(error: Exception) -> str:
    """Why an attempt failed, in the words the job record uses."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    if isinstance(error, ActorUnavailableError):
        return "worker unavailable"
    if isinstance(error, RayActorError):
        return "node died" if "node has died" in str(error) else "worker died"
    return "failed"


def _first_lines(error: Exception, lines: int = 4) -> str:
    return "\n".join(str(error).strip().splitlines()[:lines])[:600]


def run_ray(
    spec: RunSpec,
    store_uri: str,
    jobs: list[ShardJob],
    record: RunRecord,
    workers: int | None,
    progress: bool,
    resource: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Shards spread over a pool of actors, each taking the next shard when it is free.

    A shard whose actor dies goes to the back of the queue and runs on a live actor;
    the dead actor is replaced by a fresh one (Ray places it wherever the
    resources are, so a lost GPU node's share moves elsewhere). A replacement takes
    shards only once it is up: until then the survivors drain the queue, so a cluster
    that lost a node's resources for good still finishes. A shard that fails
    MAX_ATTEMPTS times stops the job; what was published stays, so a rerun resumes.
    A shard whose worker died after publishing it is done: it is never generated again.
    When only replacements are left to wait for and none is up within
    ``placement_timeout()`` (the cluster lost the resources for good), the job fails.
    The job's record (``jobs/<job_id>.json``) says where each shard ran and why any was
    retried; it is written however the job ends, once Ray is importable.
    """
    try:
        import ray
        from ray.exceptions import RayActorError
    except ImportError as error:
        raise TandemError(
            "running over Ray needs ray: pip install 'tandem-eval[worker]'"
        ) from error
    store = Store(store_uri)
    job_record = JobRecord(
        run_id=record.run_id,
        job_id=f"{utc_now().replace(':', '').replace('-', '')[:15]}Z-{secrets.token_hex(3)}",
        started_at=utc_now(),
    )
    # Everything from here on ends in the job record, done or failed: a placement the
    # cluster cannot give and a backend that cannot load are failures of this job too.
    failed = False
    try:
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=True)
        count, options = _actor_options(spec, workers, resource)
        count = min(count, len(jobs))
        job_record.placement = {k: v for k, v in options.items() if k != "runtime_env"}
        # No Ray-level restarts: a restarted actor would take new shards while reloading
        # the model, and its lost shard would be retried on the same node. We replace dead
        # actors ourselves, up to a budget, so a crash loop cannot run forever.
        actor_class = ray.remote(max_restarts=0, max_task_retries=0)(ShardActor)

        def new_actor():
            job_record.actors_started += 1
            return actor_class.options(**options).remote(spec, store_uri, record)

        actors = [new_actor() for _ in range(count)]
        # Every replica loads its backend before anything is written: a backend that
        # cannot load stops the job here, with nothing in the store but the job record.
        try:
            infos = ray.get([actor.info.remote() for actor in actors])
            node_ids = ray.get([actor.node_id.remote() for actor in actors])
        except RayActorError as error:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            if error.actor_init_failed:
                raise TandemError(f"a worker could not start: {_init_error(error)}") from None
            raise TandemError(f"a worker died while loading its backend: {error}") from error
        from shared.records import distinct_workers

        start_run(store, record, distinct_workers(infos))
        print(
            f"ray: {count} actor(s) with {options.get('num_gpus', 0)} GPU / "
            f"{options['num_cpus']} CPU / "
            f"{options.get('resources') or 'no custom resource'} each",
            file=sys.stderr,
        )
        yield from _drive(
            ray, store, jobs, actors, node_ids, new_actor, job_record, progress, count
        )
    except BaseException as error:
        failed = True
        job_record.status = "failed"
        job_record.error = _first_lines(error) if isinstance(error, Exception) else "stopped"
        raise
    finally:
        job_record.finished_at = utc_now()
        _publish_job(store, job_record, raise_errors=not failed)


def _publish_job(store: Store, job_record: JobRecord, *, raise_errors: bool) -> None:
    """Write the job record. When the job itself failed, a failure to write the record
    is only reported: it must not hide why the job failed."""
    try:
        store.publish_job(job_record)
    except Exception as error:
        if raise_errors:
            raise
        print(
            f"tandem: could not write the job record {job_record.job_id}.json: {error}",
            file=sys.stderr,
        )


def placement_timeout() -> float:
    """Seconds the driver waits for a replacement worker when nothing else is running
    (``TANDEM_RAY_PLACEMENT_TIMEOUT``, default 300): placing it and loading its backend."""
    text = os.environ.get("TANDEM_RAY_PLACEMENT_TIMEOUT", "300")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise TandemError(
            f"TANDEM_RAY_PLACEMENT_TIMEOUT={text!r}: must be a positive number of seconds"
        )
    return value


def _drive(ray, store, jobs, actors, node_ids, new_actor, job_record, progress, count):
    from ray.exceptions import RayActorError, RayTaskError

    from gpu_worker.shards import published_stats

    node_of = dict(zip(actors, node_ids, strict=True))
    idle = list(actors)
    starting: dict[Any, Any] = {}  # node_id() ref of a replacement -> the actor
    replacements_left = MAX_ATTEMPTS * count
    queue = list(jobs)
    failures: dict[str, list[ShardAttempt]] = {}
    in_flight: dict[Any, tuple[Any, ShardJob]] = {}
    patience = placement_timeout()

    def finished(job: ShardJob, actor: Any, stats: dict[str, Any]) -> dict[str, Any]:
        tries = failures.get(f"{job.task}/{job.ref.name}", [])
        job_record.shards.append(
            ShardPlacement(
                task=job.task,
                shard=job.ref.name,
                node_id=node_of.get(actor, ""),
                attempts=len(tries) + 1,
                failures=tries,
            )
        )
        stats["node_id"] = node_of.get(actor, "")
        return stats

    def published(job: ShardJob) -> dict[str, Any] | None:
        """The stats of the shard if an attempt that failed had published it already
        (its worker died after publishing, before replying): it is done, and a scorer
        may have scored it, so it is never generated again."""
        if not store.exists(store.shard_path(GENERATIONS, job.ref)):
            return None
        return published_stats(store, job.ref)

    def failed(job: ShardJob, actor: Any, error: Exception) -> None:
        key = f"{job.task}/{job.ref.name}"
        reason = _failure_reason(error)
        tries = failures.setdefault(key, [])
        tries.append(
            ShardAttempt(
                attempt=len(tries) + 1,
                node_id=node_of.get(actor, ""),
                reason=reason,
                error=_first_lines(error),
            )
        )
        if len(tries) >= MAX_ATTEMPTS:
            job_record.shards.append(
                ShardPlacement(
                    task=job.task,
                    shard=job.ref.name,
                    attempts=len(tries),
                    node_id="",
                    failures=tries,
                )
            )
            raise TandemError(f"shard {key}: {reason} {MAX_ATTEMPTS} times: {error}") from error
        print(f"shard {key}: {reason} ({type(error).__name__}); retrying", file=sys.stderr)

    def salvage(job: ShardJob, actor: Any, error: Exception) -> dict[str, Any] | None:
        """After an attempt failed: the shard's stats if it was published anyway, else
        the failure is recorded and the shard goes last in line (if it is what kills
        workers, every other shard is done before it can use up the attempts)."""
        stats = published(job)
        if stats is None:
            failed(job, actor, error)
            queue.append(job)
        return stats

    def replace(actor: Any, error: Exception) -> None:
        nonlocal replacements_left
        ray.kill(actor, no_restart=True)
        if replacements_left <= 0:
            raise TandemError(
                f"{MAX_ATTEMPTS * count} workers died; giving up (rerun to resume)"
            ) from error
        replacements_left -= 1
        fresh = new_actor()
        starting[fresh.node_id.remote()] = fresh

    try:
        with show_progress(jobs, progress) as bar:
            while queue or in_flight:
                while queue and idle:
                    actor = idle.pop(0)
                    job = queue.pop(0)
                    in_flight[actor.run.remote(job)] = (actor, job)
                waiting = [*in_flight, *starting]
                if not waiting:
                    raise TandemError("no worker is left to run the remaining shards")
                # Only replacements to wait for: a cluster that cannot place one (its
                # GPU node lost for good) would otherwise keep the job waiting forever.
                timeout = None if in_flight else patience
                done, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
                if not done:
                    raise TandemError(
                        f"no worker could be placed (or load its backend) for "
                        f"{patience:g} s; {len(queue)} shard(s) left; rerun to resume "
                        "(TANDEM_RAY_PLACEMENT_TIMEOUT sets the wait)"
                    )
                if done[0] in starting:
                    actor = starting.pop(done[0])
                    try:
                        node_of[actor] = ray.get(done[0])
                    except RayActorError as error:
                        if error.actor_init_failed:
                            raise TandemError(
                                f"a worker could not start: {_init_error(error)}"
                            ) from None
                        replace(actor, error)
                    else:
                        idle.append(actor)
                    continue
                actor, job = in_flight.pop(done[0])
                try:
                    stats = ray.get(done[0])
                except RayActorError as error:  # the process died: OOM-killed, node lost...
                    if error.actor_init_failed:
                        raise TandemError(
                            f"a worker could not start: {_init_error(error)}"
                        ) from None
                    stats = salvage(job, actor, error)
                    if stats is not None:
                        bar.update(len(job.samples))
                        yield finished(job, actor, stats)
                    replace(actor, error)
                except RayTaskError as error:
                    if isinstance(error.cause, TandemError):
                        raise error.cause from None
                    idle.append(actor)
                    stats = salvage(job, actor, error)
                    if stats is not None:
                        bar.update(len(job.samples))
                        yield finished(job, actor, stats)
                else:
                    bar.update(len(job.samples))
                    idle.append(actor)
                    yield finished(job, actor, stats)
    finally:
        for actor in starting.values():  # replacements no shard needed any more
            ray.kill(actor, no_restart=True)
