"""The generation job: plan the missing shards, run them locally or over Ray actors.

``tandem generate run.toml`` runs this, and so does ``ray job submit -- tandem
generate run.toml`` (inside a Ray job, RAY_ADDRESS is set and shards go to actors:
one per GPU with num_gpus=1, one per unit of a custom resource when told
``--ray-resource NAME``, or CPU actors that split the node's cores). ``--local`` runs
the same shard code in-process, no Ray needed. A job over Ray leaves a record,
``jobs/<job_id>.json``: the node each shard ran on, and every retried shard's failed
attempts (node, reason).

Shards are deterministic sample ranges, so a rerun lists what exists and does only
what is missing: a crash costs at most one shard per worker.

**Nothing is written before the work can start.** The plan reads and checks everything
(spec, task data, an existing run's spec hash) without writing; then the workers load
their backends; only then is run.json created -- exclusively, so of two different specs
racing for one run id exactly one is accepted -- with what the workers resolved
(precision, dtype, device, engine, host). A backend that cannot load (unsloth without a
GPU, a missing adapter) leaves no run behind (over Ray, only the job's record saying
why), and the corrected spec may use the same run id.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from gpu_worker.environment import environment, utc_now
from gpu_worker.models import describe_model
from shared.errors import TandemError
from shared.records import (
    ChatInfo,
    Environment,
    JobRecord,
    ModelInfo,
    RunRecord,
    ShardAttempt,
    ShardPlacement,
    TaskPlan,
    WorkerInfo,
)
from shared.spec import RunSpec
from shared.store import GENERATIONS, RUN_RECORD, ShardRef, Store
from shared.tasks import TASKS, Sample, TaskDef, load_samples
from shared.tasks._base import ordered

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3


@dataclass
class ShardJob:
    task: str
    chat: bool
    ref: ShardRef
    samples: list[Sample]


@dataclass
class JobResult:
    run_id: str
    shards_done: int = 0
    shards_skipped: int = 0
    samples: int = 0
    generated_tokens: int = 0  # text tokens (an ending EOS is counted apart)
    eos_tokens: int = 0
    requests: int = 0  # log-likelihood requests (one per choice)
    scored_tokens: int = 0
    seconds: float = 0.0
    stats: list[dict[str, Any]] = field(default_factory=list)


def use_chat(spec: RunSpec, task: TaskDef, has_template: bool) -> bool:
    """chat_template: on = every task, off = none, auto = generation tasks of instruct
    models (lm-eval scores log-likelihood tasks on raw text unless told otherwise)."""
    if spec.chat_template == "on":
        return True
    if spec.chat_template == "off" or spec.kind == "base":
        return False
    return task.chat_by_default and has_template


def run_record(
    spec: RunSpec, run_id: str, model: dict[str, Any], totals: dict[str, int]
) -> RunRecord:
    """run.json without its workers (they are added once their backends have loaded)."""
    return RunRecord(
        run_id=run_id,
        created_at=utc_now(),
        spec=spec.model_dump(mode="json"),
        spec_hash=spec.spec_hash(),
        model=ModelInfo(**{k: v for k, v in model.items() if k != "has_chat_template"}),
        chat=ChatInfo(mode=spec.chat_template, has_template=bool(model["has_chat_template"])),
        tasks={
            name: TaskPlan(samples=count, shard_size=spec.shard_size)
            for name, count in totals.items()
        },
        environment=Environment(**environment()),
    )


def worker_info(backend: Any) -> WorkerInfo:
    """What a loaded backend resolved (its ``info()``), as the run and its shards record it."""
    info = backend.info() if hasattr(backend, "info") else {}
    fields: dict[str, Any] = {}
    for name in WorkerInfo.model_fields:
        value = info.get(name)
        if value is None:
            continue
        fields[name] = value if name == "threads" else str(value)
    fields.setdefault("backend", getattr(backend, "name", ""))
    fields.setdefault("host", socket.gethostname())  # this runs in the worker's process
    return WorkerInfo(**fields)


def plan(
    spec: RunSpec, store: Store, data_dir: str | None = None, backend: Any = None
) -> tuple[str, list[ShardJob], int, RunRecord]:
    """Validate everything and list the shards still to do. Writes nothing: an existing
    run under this id with another spec is refused here, before any model loads."""
    run_id = spec.resolved_run_id()
    path = store.run_path(run_id, RUN_RECORD)
    existing = None
    if store.exists(path):
        store.check_same_spec(run_id, store.read_json(path), spec.spec_hash())
        existing = store.run_record(run_id)
    # A run keeps the shard order it started with (resume stays exact); a new run
    # groups the samples each task asks to have grouped.
    orders = (
        dict(existing.orders)
        if existing is not None
        else {t: TASKS[t].order_by for t in spec.tasks if TASKS[t].order_by}
    )
    samples: dict[str, list[Sample]] = {}
    for name in spec.tasks:
        samples[name] = load_samples(
            TASKS[name],
            spec.task_data.get(name) or data_dir or spec.data_dir,
            spec.limit.get(name),
            num_fewshot=spec.shots(name),
            fewshot_seed=spec.fewshot_seed,
        )
        if not samples[name]:
            raise TandemError(f"task {name}: no samples to evaluate")
        samples[name] = ordered(samples[name], orders.get(name))
    model = describe_model(spec) if backend is None else _describe_loaded(backend)
    if spec.chat_template == "on" and not model["has_chat_template"]:
        raise TandemError(f"chat_template = 'on' but {spec.model} has no chat template")
    record = run_record(spec, run_id, model, {k: len(v) for k, v in samples.items()})
    record = record.model_copy(update={"orders": {k: v for k, v in orders.items() if v}})
    jobs, skipped = [], 0
    for name, task_samples in samples.items():
        chat = use_chat(spec, TASKS[name], bool(model["has_chat_template"]))
        total = len(task_samples)
        missing = store.missing_shards(run_id, name, total, spec.shard_size)
        skipped += -(-total // spec.shard_size) - len(missing)
        for ref in missing:
            jobs.append(ShardJob(name, chat, ref, task_samples[ref.start : ref.end]))
    return run_id, jobs, skipped, record


def provenance(spec: RunSpec, record: RunRecord) -> dict[str, str]:
    return {
        "config_hash": spec.spec_hash(),
        "git_sha": record.environment.git_sha,
        "backend": spec.backend,
        "model_id": record.model.model_id,
        "model_revision": record.model.model_revision,
        "created_at": utc_now(),
    }


def start_run(store: Store, record: RunRecord, workers: list[WorkerInfo]) -> None:
    """Create run.json now that the workers are up (see the module docstring)."""
    store.start_run(record.run_id, record.model_copy(update={"workers": workers}))


def _describe_loaded(backend: Any) -> dict[str, object]:
    """describe_model's answer for a backend over a model already in memory."""
    info = backend.info()
    return {
        "model_id": info.get("model_id", ""),
        "model_revision": info.get("model_revision", ""),
        "model_file_sha256": info.get("model_file_sha256", ""),
        "chat_template_sha256": info.get("chat_template_sha256", ""),
        "has_chat_template": backend.has_chat_template(),
    }


def run_generation(
    spec: RunSpec,
    store_uri: str,
    *,
    local: bool | None = None,
    workers: int | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    backend: Any = None,
    ray_resource: str | None = None,
) -> JobResult:
    """Run (or resume) a generation job. ``local=None`` uses Ray when RAY_ADDRESS is set.
    ``backend``: an already built backend to run in this process (``tandem.evaluate``).
    ``ray_resource``: on Ray, each actor asks for one unit of this custom resource
    instead of a GPU (e.g. ``gpu_slot``, declared by ``ray start --resources``)."""
    asked_local = local
    if local is None:
        local = backend is not None or not os.environ.get("RAY_ADDRESS")
    if ray_resource and local:
        # Only Ray places actors on a resource: here the flag would do nothing.
        if backend is not None:
            where = "with an in-process backend"
        elif asked_local:
            where = "with --local"
        else:
            where = "without Ray (RAY_ADDRESS is not set)"
        raise TandemError(
            f"--ray-resource {ray_resource} only applies to a job on Ray, not {where}; "
            "drop it, or run on a Ray cluster (ray job submit, or RAY_ADDRESS)"
        )
    store = Store(store_uri)
    store.check(writable=True, create=True)
    run_id, jobs, skipped, record = plan(spec, store, data_dir, backend)
    result = JobResult(run_id, shards_skipped=skipped)
    print(
        f"run {run_id}: {len(jobs)} shard(s) to generate, {skipped} already in {store.uri}",
        file=sys.stderr,
    )
    if not jobs:
        if not store.exists(store.run_path(run_id, RUN_RECORD)):
            start_run(store, record, [])  # every shard exists but the record was lost
        return result
    started = time.perf_counter()
    if backend is not None:
        batches = _run_local(spec, store_uri, jobs, record, workers, progress, backend)
    elif local:
        batches = _run_local(spec, store_uri, jobs, record, workers, progress)
    else:
        batches = _run_ray(spec, store_uri, jobs, record, workers, progress, ray_resource)
    for stats in batches:
        result.stats.append(stats)
        result.shards_done += 1
        result.samples += stats["samples"]
        result.generated_tokens += stats.get("generated_tokens", 0)
        result.eos_tokens += stats.get("eos_tokens", 0)
        result.requests += stats.get("requests", 0)
        result.scored_tokens += stats.get("scored_tokens", 0)
    result.seconds = time.perf_counter() - started
    return result


def _progress(jobs: list[ShardJob], enabled: bool) -> tqdm:
    return tqdm(
        total=sum(len(j.samples) for j in jobs),
        unit="sample",
        desc="generate",
        disable=not enabled,
        file=sys.stderr,
        mininterval=1.0,
    )


def _run_local(spec, store_uri, jobs, record, workers, progress, backend=None):
    from gpu_worker.backends import create_backend
    from gpu_worker.shards import run_shard

    backend = backend or create_backend(spec)
    worker = worker_info(backend)
    store = Store(store_uri)
    start_run(store, record, [worker])
    with _progress(jobs, progress) as bar:
        for job in jobs:
            stats = run_shard(
                backend,
                store,
                spec,
                TASKS[job.task],
                job.ref,
                job.samples,
                job.chat,
                provenance(spec, record),
                worker,
            )
            bar.update(len(job.samples))
            yield stats


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


def _run_ray(spec, store_uri, jobs, record, workers, progress, resource=None):
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
        with _progress(jobs, progress) as bar:
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
                    stats = published(job)
                    if stats is not None:
                        bar.update(len(job.samples))
                        yield finished(job, actor, stats)
                    else:
                        failed(job, actor, error)
                        # Last in line: if this shard is what kills workers, every other
                        # shard is done before it can use up the attempts.
                        queue.append(job)
                    replace(actor, error)
                except RayTaskError as error:
                    if isinstance(error.cause, TandemError):
                        raise error.cause from None
                    idle.append(actor)
                    stats = published(job)
                    if stats is not None:
                        bar.update(len(job.samples))
                        yield finished(job, actor, stats)
                    else:
                        failed(job, actor, error)
                        queue.append(job)
                else:
                    bar.update(len(job.samples))
                    idle.append(actor)
                    yield finished(job, actor, stats)
    finally:
        for actor in starting.values():  # replacements no shard needed any more
            ray.kill(actor, no_restart=True)
