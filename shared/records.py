"""The JSON records of a run: ``run.json`` and ``summary.json``, typed and versioned.

Like the Parquet schemas, each record names itself (``schema``) and its version
(``schema_version``); ``read_run_record`` / ``read_summary`` accept every version this
tandem knows and upgrade it, refuse a newer one, and turn a file of the wrong shape
(``[1, 2, 3]``, a string where a number belongs) into a ``TandemError`` that names the
file and the field. Writers build these models, never dicts by hand.

Versions:

* ``tandem.run`` v1: spec, spec hash, model, chat template use, tasks, and the
  environment of the process that planned the run (the *driver*). v2 adds ``workers``:
  what each generation worker resolved and ran on (precision, dtype, device, engine,
  host), read from the worker after its backend loaded. v1 files read with ``workers``
  empty. Records written by hand (no ``schema`` key) read as v1.
* ``tandem.job`` v1 (``jobs/<job_id>.json``, one per generation job over Ray): where
  each shard ran, and every shard that had to be retried, with each failed attempt's
  node and reason.
* ``tandem.profile`` v1 (``profile.json``, written by ``tandem profile``): latency at
  batch 1 per prompt length, throughput at the backend's batch size, peak memory.
* ``tandem.summary`` v1: metrics, counts and telemetry per task; ``precision`` was the
  spec's. v2: ``precision`` is what the workers resolved (the spec's ``"auto"`` never
  appears once a shard exists), ``requested_precision`` the spec's, ``workers`` the
  distinct worker records of the scored shards, and each task names its ``headline``
  metric.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import TandemError

RUN_SCHEMA, RUN_VERSION = "tandem.run", 2
SUMMARY_SCHEMA, SUMMARY_VERSION = "tandem.summary", 2
PROFILE_SCHEMA, PROFILE_VERSION = "tandem.profile", 1
JOB_SCHEMA, JOB_VERSION = "tandem.job", 1


class _Record(BaseModel):
    # Unknown keys are ignored, not refused: a record is data written by another
    # version of tandem (or by hand), and what this version does not know it skips.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class WorkerInfo(_Record):
    """What one generation worker resolved and ran on; every generation shard carries
    the record of the worker that wrote it (Parquet metadata ``tandem.worker``)."""

    backend: str = ""
    engine: str = Field("", description="transformers, vllm, unsloth or fake")
    engine_version: str = ""
    precision: str = Field("", description="the resolved precision: fp32, bf16, ... never auto")
    dtype: str = Field("", description="weight / compute dtype, e.g. float32 or nf4 (...)")
    device: str = Field("", description="cpu or cuda")
    device_name: str = Field("", description="the GPU's or the CPU's model name")
    host: str = ""
    batch_size: str = Field("", description="the generation batch size setting: N or auto")
    threads: int | None = Field(None, description="torch threads on CPU")

    def key(self) -> tuple[str, ...]:
        """What makes two workers' records the same for a summary (threads aside)."""
        return (
            self.backend,
            self.engine,
            self.engine_version,
            self.precision,
            self.dtype,
            self.device,
            self.device_name,
            self.host,
            self.batch_size,
        )


class WorkerTelemetry(_Record):
    """What a worker measured while generating one shard, carried in the shard's Parquet
    metadata (``tandem.worker_telemetry``), copied by the scorer into the score shard's
    telemetry, summed per task in summary.json. A measure the backend cannot split is
    None (the fake and vLLM backends have no prefill/decode split; log-likelihood work
    is all prefill)."""

    seconds: float = Field(0.0, description="wall time of the shard's model calls")
    prefill_seconds: float | None = Field(None, description="forward passes over prompts")
    decode_seconds: float | None = Field(None, description="token-by-token generation")
    prompt_tokens: int = 0
    generated_tokens: int = 0
    tokens_per_second: float | None = Field(
        None, description="generated tokens per decode second (per wall second without a split)"
    )
    batches: int = Field(0, description="model batches the shard took")
    batch_size_max: int = 0
    batch_size_mean: float | None = None
    peak_rss_bytes: int | None = Field(
        None, description="the worker process's peak resident memory so far"
    )
    cuda_max_allocated_bytes: int | None = Field(
        None, description="torch.cuda.max_memory_allocated during the shard (GPU workers)"
    )


class ModelInfo(_Record):
    model_id: str = ""
    model_revision: str = ""
    model_file_sha256: str = ""
    chat_template_sha256: str = ""


class ChatInfo(_Record):
    mode: str = "auto"
    has_template: bool = False


class TaskPlan(_Record):
    """How many samples a task has in this run and how they are cut into shards."""

    samples: int = Field(ge=0)
    shard_size: int = Field(ge=1)


class Environment(_Record):
    """The driver process that planned the run (the workers' own are in ``workers``)."""

    python: str = ""
    platform: str = ""
    host: str = ""
    git_sha: str = ""
    packages: dict[str, str] = Field(default_factory=dict)
    accelerator: dict[str, Any] = Field(default_factory=dict)


class RunRecord(_Record):
    """``run.json``: what was asked (spec), of which model, where it ran. Written once."""

    schema_name: Literal["tandem.run"] = Field("tandem.run", alias="schema")
    schema_version: int = RUN_VERSION
    run_id: str
    created_at: str = ""
    spec: dict[str, Any] = Field(default_factory=dict)
    spec_hash: str = ""
    model: ModelInfo = Field(default_factory=ModelInfo)
    chat: ChatInfo = Field(default_factory=ChatInfo)
    tasks: dict[str, TaskPlan] = Field(default_factory=dict)
    environment: Environment = Field(default_factory=Environment)
    workers: list[WorkerInfo] = Field(default_factory=list)
    # Per task, the doc field its samples were grouped by before sharding (so items that
    # share a few-shot block meet in one shard); absent: the data's order.
    orders: dict[str, str] = Field(default_factory=dict)

    @property
    def requested_precision(self) -> str:
        return str(self.spec.get("precision") or "")

    @property
    def resolved_precision(self) -> str:
        """What the workers ran ("fp32", or "bf16, nf4" if they differed); the spec's
        request when no worker is recorded (a v1 record)."""
        return _joined(w.precision for w in self.workers) or self.requested_precision

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class ShardCounts(_Record):
    generated: int = 0
    scored: int = 0
    quarantined: int = 0


class TaskSummary(_Record):
    """One task's aggregate: metrics (as its scorer defines them), counts, telemetry."""

    metrics: dict[str, Any] = Field(default_factory=dict)
    headline: str | None = None
    samples_scored: int = 0
    samples_failed: int = 0
    samples_total: int | None = None
    notes: list[str] = Field(default_factory=list)
    shards: ShardCounts = Field(default_factory=ShardCounts)
    telemetry: dict[str, Any] = Field(default_factory=dict)
    complete: bool = False

    def headline_value(self) -> float | None:
        value = self.metrics.get(self.headline) if self.headline else None
        return float(value) if isinstance(value, (int, float)) else None


class Summary(_Record):
    """``summary.json``: a pure function of the run's shards, rewritten as scores land."""

    schema_name: Literal["tandem.summary"] = Field("tandem.summary", alias="schema")
    schema_version: int = SUMMARY_VERSION
    run_id: str
    model: str | None = None
    precision: str | None = None
    requested_precision: str | None = None
    workers: list[WorkerInfo] = Field(default_factory=list)
    scorer_version: str | None = None
    tasks: dict[str, TaskSummary] = Field(default_factory=dict)

    def counts(self) -> dict[str, tuple[int, int, int]]:
        """Per task (generated, scored, quarantined): what the summary was computed from."""
        return {
            task: (entry.shards.generated, entry.shards.scored, entry.shards.quarantined)
            for task, entry in self.tasks.items()
        }

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class Latency(_Record):
    """Seconds per request at batch 1 for one prompt length, over ``repeats`` requests
    after the warm-up ones."""

    prompt_tokens: int = Field(description="the length asked for")
    measured_prompt_tokens: int = Field(description="the length the model saw")
    new_tokens: int
    repeats: int
    mean_seconds: float
    p50_seconds: float
    p95_seconds: float


class Throughput(_Record):
    """Many requests at once, batched as the backend chooses."""

    requests: int
    batch_size: int = Field(description="the largest batch the backend formed")
    prompt_tokens: int
    new_tokens: int
    generated_tokens: int
    seconds: float
    tokens_per_second: float | None = None
    requests_per_second: float | None = None


class ProfileRecord(_Record):
    """``profile.json``: how fast a run's model runs where it ran (``tandem profile``).
    Rewritten by each profile of the run."""

    schema_name: Literal["tandem.profile"] = Field("tandem.profile", alias="schema")
    schema_version: int = PROFILE_VERSION
    run_id: str
    created_at: str = ""
    spec_hash: str = ""
    worker: WorkerInfo = Field(default_factory=WorkerInfo)
    warmup: int = 0
    latency: list[Latency] = Field(default_factory=list)
    throughput: Throughput | None = None
    peak_rss_bytes: int | None = None
    cuda_max_allocated_bytes: int | None = None

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class ShardAttempt(_Record):
    """One failed attempt at a shard."""

    attempt: int = Field(description="1 for the first try")
    node_id: str = Field("", description="the Ray node it ran on ('' when unknown)")
    reason: str = Field(description="node died, worker died, worker unavailable or failed")
    error: str = Field("", description="the error's first lines")


class ShardPlacement(_Record):
    """Where one shard was finally generated, after how many attempts."""

    task: str
    shard: str
    node_id: str = ""
    attempts: int = 1
    failures: list[ShardAttempt] = Field(default_factory=list)


class JobRecord(_Record):
    """``jobs/<job_id>.json``: one generation job over Ray -- where its shards ran and what
    was retried. Written when the job ends (done or failed); a resumed run adds a job."""

    schema_name: Literal["tandem.job"] = Field("tandem.job", alias="schema")
    schema_version: int = JOB_VERSION
    run_id: str
    job_id: str
    started_at: str = ""
    finished_at: str = ""
    status: str = Field("done", description="done or failed")
    error: str | None = None
    placement: dict[str, Any] = Field(
        default_factory=dict, description="what each actor asked for: num_gpus, resources"
    )
    actors_started: int = Field(0, description="replacements for dead actors included")
    shards: list[ShardPlacement] = Field(default_factory=list)

    @property
    def retried(self) -> list[ShardPlacement]:
        """The shards that needed more than one attempt."""
        return [s for s in self.shards if s.failures]

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class SweepCheckpoint(_Record):
    """One checkpoint of a sweep: its run, and whether it kept to the budget."""

    step: int
    run_id: str
    status: str = Field("done", description="done, failed (with error) or skipped")
    seconds: float | None = None
    over_budget: bool = False
    error: str | None = None


class SweepRecord(_Record):
    """``sweeps/<name>/sweep.json``: a checkpoint sweep, its fixed caps and its steps.
    Rewritten (atomically) as checkpoints finish."""

    schema_name: Literal["tandem.sweep"] = Field("tandem.sweep", alias="schema")
    schema_version: int = 1
    name: str
    checkpoints: str = Field("", description="the folder the checkpoints are found in")
    every: int | None = None
    budget_seconds: float | None = None
    # Per task: items evaluated at every checkpoint (fixed after the first checkpoint).
    caps: dict[str, int] = Field(default_factory=dict)
    # Per task: seconds per item measured on the first checkpoint; fixed cost per
    # checkpoint (export and model load). Pinned caps come from the spec.
    seconds_per_item: dict[str, float] = Field(default_factory=dict)
    overhead_seconds: float | None = None
    pinned: list[str] = Field(default_factory=list)
    predicted_seconds: float | None = None
    # Measuring the tasks on the first checkpoint (once per sweep, outside its budget).
    calibration_seconds: float | None = None
    steps: list[SweepCheckpoint] = Field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def _joined(values: Any) -> str:
    seen: list[str] = []
    for value in values:
        if value and value not in seen:
            seen.append(value)
    return ", ".join(seen)


def distinct_workers(workers: Any) -> list[WorkerInfo]:
    """Worker records without repeats, in first-seen order."""
    out: dict[tuple[str, ...], WorkerInfo] = {}
    for worker in workers:
        out.setdefault(worker.key(), worker)
    return list(out.values())


# ---- reading ---------------------------------------------------------------------------
def _load(data: bytes | str | Any, source: str) -> dict[str, Any]:
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise TandemError(f"{source}: not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise TandemError(f"{source}: expected a JSON object, got {type(data).__name__}")
    return data


def _check_version(data: dict[str, Any], source: str, name: str, current: int) -> int:
    schema = data.get("schema", name)
    if schema != name:
        raise TandemError(f"{source}: a {schema!r} record, expected {name!r}")
    version = data.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TandemError(f"{source}: schema_version must be a positive integer, got {version!r}")
    if version > current:
        raise TandemError(
            f"{source}: {name} version {version} is newer than this tandem understands "
            f"({current}); upgrade tandem"
        )
    return version


def _validate(model: type[_Record], data: dict[str, Any], source: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or '(top level)'}: {item['msg']}"
            for item in error.errors()[:5]
        )
        raise TandemError(f"{source}: not a valid {model.__name__}: {problems}") from error


def read_run_record(data: bytes | str | Any, source: str = "run.json") -> RunRecord:
    """A run.json of any known version, upgraded to the current one."""
    data = dict(_load(data, source))
    version = _check_version(data, source, RUN_SCHEMA, RUN_VERSION)
    if version == 1:
        data["workers"] = []
    data["schema"], data["schema_version"] = RUN_SCHEMA, RUN_VERSION
    return _validate(RunRecord, data, source)


def read_profile(data: bytes | str | Any, source: str = "profile.json") -> ProfileRecord:
    """A profile.json of any known version."""
    data = dict(_load(data, source))
    _check_version(data, source, PROFILE_SCHEMA, PROFILE_VERSION)
    return _validate(ProfileRecord, data, source)


def read_job(data: bytes | str | Any, source: str = "job.json") -> JobRecord:
    """A jobs/<job_id>.json of any known version."""
    data = dict(_load(data, source))
    _check_version(data, source, JOB_SCHEMA, JOB_VERSION)
    return _validate(JobRecord, data, source)


def read_sweep(data: bytes | str | Any, source: str = "sweep.json") -> SweepRecord:
    data = dict(_load(data, source))
    _check_version(data, source, "tandem.sweep", 1)
    return _validate(SweepRecord, data, source)


def read_summary(data: bytes | str | Any, source: str = "summary.json") -> Summary:
    """A summary.json of any known version, upgraded to the current one."""
    data = dict(_load(data, source))
    version = _check_version(data, source, SUMMARY_SCHEMA, SUMMARY_VERSION)
    if version == 1:
        # v1's precision was the spec's request: keep it as that, unknown what ran.
        data["requested_precision"] = data.get("precision")
        data["workers"] = []
    data["schema"], data["schema_version"] = SUMMARY_SCHEMA, SUMMARY_VERSION
    return _validate(Summary, data, source)
