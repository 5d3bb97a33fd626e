"""The generation job: plan the missing shards, run them locally or over Ray actors.

``tandem generate run.toml`` runs this, and so does ``ray job submit -- tandem
generate run.toml`` (inside a Ray job, RAY_ADDRESS is set and shards go to actors:
one per GPU with num_gpus=1, one per unit of a custom resource when told
``--ray-resource NAME``, or CPU actors that split the node's cores: ``ray_job``).
``--local`` runs the same shard code in-process, no Ray needed. A job over Ray leaves a
record, ``jobs/<job_id>.json``: the node each shard ran on, and every retried shard's
failed attempts (node, reason).

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

import os
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
    ModelInfo,
    RunRecord,
    TaskPlan,
    WorkerInfo,
)
from shared.spec import RunSpec
from shared.store import RUN_RECORD, ShardRef, Store
from shared.tasks import TASKS, Sample, TaskDef, load_samples
from shared.tasks._base import ordered


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
        from gpu_worker.ray_job import run_ray

        batches = run_ray(spec, store_uri, jobs, record, workers, progress, ray_resource)
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


def show_progress(jobs: list[ShardJob], enabled: bool) -> tqdm:
    """A bar over the jobs' samples on stderr (disabled: a silent one)."""
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
    with show_progress(jobs, progress) as bar:
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
