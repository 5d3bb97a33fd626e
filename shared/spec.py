"""RunSpec: what to evaluate and how. Validated in full before any model loads.

A spec is a TOML (or YAML, if PyYAML is installed) file; see ``examples/`` and the
README. Unknown keys, tasks, precisions or backends stop the run with one message
listing what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.errors import TandemError, did_you_mean
from shared.jsonl import decode_utf8
from shared.store._layout import RUN_ID_PATTERN
from shared.tasks import SUITES, TASKS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
DEFAULT_FEWSHOT_SEED = 1234  # lm-eval's fewshot_random_seed

Precision = Literal["auto", "fp32", "bf16", "fp16", "int8", "nf4"]
BackendName = Literal["hf", "vllm", "unsloth", "llamacpp", "fake"]


class GenerationParams(BaseModel):
    """Decoding settings. Greedy only: evaluation numbers must be reproducible."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Strict: TOML's true is a boolean, never the integer 1.
    max_new_tokens: StrictInt = Field(256, ge=1, le=32768)
    batch_size: StrictInt | Literal["auto"] = "auto"
    stop: tuple[str, ...] = ()
    # Prompts longer than this many tokens are cut from the left (the instruction at the
    # end survives); the row records it. None: the model's own context length.
    max_prompt_tokens: StrictInt | None = Field(None, ge=1)

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError('batch_size must be a positive integer or "auto"')
        return value

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(s == "" for s in value):
            raise ValueError("stop strings must not be empty")
        return value


class RunSpec(BaseModel):
    """One evaluation run: a model (+ optional adapter) at one precision on some tasks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str | None = None
    model: str = EMBEDDED_MODEL
    revision: str | None = None
    adapter: str | None = None
    merge_adapter: StrictBool = False
    kind: Literal["auto", "base", "instruct"] = "auto"
    chat_template: Literal["auto", "on", "off"] = "auto"
    precision: Precision = "auto"
    backend: BackendName = "hf"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tasks: tuple[str, ...] = Field(..., min_length=1)
    limit: dict[str, StrictInt] = Field(default_factory=dict)
    # Few-shot exemplars per task (0 when absent), drawn as lm-eval draws them.
    num_fewshot: dict[str, StrictInt] = Field(default_factory=dict)
    fewshot_seed: StrictInt = DEFAULT_FEWSHOT_SEED
    # Per task, a data file or folder instead of data_dir (a held-out text for perplexity).
    task_data: dict[str, str] = Field(default_factory=dict)
    # A checkpoint sweep's name and this run's training step (``tandem sweep``,
    # ``tandem.evaluate``): the page and reports plot metrics against the step.
    sweep: str | None = Field(None, max_length=128)
    step: StrictInt | None = Field(None, ge=0)
    shard_size: StrictInt = Field(32, ge=1, le=100_000)
    data_dir: str | None = None
    seed: StrictInt = 0
    generation: GenerationParams = Field(default_factory=GenerationParams)
    # Passed verbatim to the engine's constructor (e.g. vLLM's gpu_memory_utilization).
    # The one documented escape hatch; everything else is a typed field.
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("run_id")
    @classmethod
    def _valid_run_id(cls, value: str | None) -> str | None:
        if value is not None and not RUN_ID_PATTERN.match(value):
            raise ValueError(
                "run_id may hold letters, digits, '.', '_' and '-', start with a letter "
                "or digit, and be at most 128 characters"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _expand_suites(cls, data: Any) -> Any:
        """A suite name in ``tasks`` becomes its tasks, with the suite's shot counts
        unless num_fewshot names the task."""
        if not isinstance(data, dict) or not isinstance(data.get("tasks"), (list, tuple)):
            return data
        if not any(name in SUITES for name in data["tasks"]):
            return data
        tasks: list[Any] = []
        shots = dict(data.get("num_fewshot") or {})
        for name in data["tasks"]:
            if name in SUITES:
                for task, count in SUITES[name].items():
                    tasks.append(task)
                    shots.setdefault(task, count)
            else:
                tasks.append(name)
        return {**data, "tasks": tasks, "num_fewshot": shots}

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in TASKS:
                known = [*TASKS, *SUITES]
                raise ValueError(
                    f"unknown task {name!r}{did_you_mean(name, known)}; "
                    f"allowed: {', '.join(sorted(TASKS))}; suites: {', '.join(SUITES)}"
                )
        if len(set(value)) != len(value):
            raise ValueError("a task is listed twice")
        return value

    @model_validator(mode="after")
    def _limits_name_tasks(self) -> RunSpec:
        for name, cap in self.limit.items():
            if name not in self.tasks:
                raise ValueError(
                    f"limit names task {name!r}, which is not in tasks {list(self.tasks)}"
                )
            if cap < 1:
                raise ValueError(f"limit for {name!r} must be at least 1, got {cap}")
        for name in self.task_data:
            if name not in self.tasks:
                raise ValueError(
                    f"task_data names task {name!r}, which is not in tasks {list(self.tasks)}"
                )
        for name, shots in self.num_fewshot.items():
            if name not in self.tasks:
                raise ValueError(
                    f"num_fewshot names task {name!r}, which is not in tasks {list(self.tasks)}"
                )
            if shots < 0:
                raise ValueError(f"num_fewshot for {name!r} must be 0 or more, got {shots}")
            if shots and TASKS[name].fewshot is None:
                takes = sorted(t for t, d in TASKS.items() if d.fewshot is not None)
                raise ValueError(
                    f"task {name!r} takes no few-shot examples; tasks that do: {', '.join(takes)}"
                )
        return self

    def shots(self, task: str) -> int:
        return self.num_fewshot.get(task, 0)

    def spec_hash(self) -> str:
        """Hash of everything that changes results (not run_id, not data_dir's location)."""
        payload = self.model_dump(mode="json", exclude={"run_id", "data_dir", "task_data"})
        # Fields added after runs existed are hashed only when set, so those runs' specs
        # keep their hash (and resume).
        if not payload["num_fewshot"]:
            del payload["num_fewshot"]
        if payload["fewshot_seed"] == DEFAULT_FEWSHOT_SEED:
            del payload["fewshot_seed"]
        for key in ("sweep", "step"):
            if payload[key] is None:
                del payload[key]
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def resolved_run_id(self) -> str:
        """The run id: the spec's own, else model name + precision + spec hash."""
        if self.run_id:
            return self.run_id
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(self.model).name or self.model)
        stem = stem.strip("-.")[:80] or "run"
        return f"{stem}-{self.precision}-{self.spec_hash()[:8]}"


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid run spec"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(item["loc"])
            message = f"unknown key{did_you_mean(str(item['loc'][-1]), allowed)}; allowed: " + (
                ", ".join(allowed)
            )
        elif item["type"] == "literal_error":
            message = f"{message}, got {item.get('input')!r}"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    if len(loc) >= 2 and loc[0] == "generation":
        return sorted(GenerationParams.model_fields)
    return sorted(RunSpec.model_fields)


def parse_spec(data: dict[str, Any], source: str = "<spec>") -> RunSpec:
    """Validate a spec mapping; raise TandemError naming the source and field."""
    try:
        return RunSpec.model_validate(data)
    except ValidationError as error:
        raise TandemError(_format_validation_error(error, source)) from error


def load_spec(path: str | Path) -> RunSpec:
    """Read and validate a TOML (or YAML) run spec file."""
    return parse_spec(load_spec_fields(path), str(path))


def load_spec_fields(path: str | Path) -> dict[str, Any]:
    """A spec file's fields, read but not yet validated (a sweep adds its own)."""
    path = Path(path)
    try:
        text = decode_utf8(path.read_bytes(), path)
    except OSError as error:
        raise TandemError(f"cannot read run spec {path}: {error.strerror}") from error
    if path.suffix in {".yaml", ".yml"}:
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError as error:
            raise TandemError(
                f"{path}: YAML specs need PyYAML (pip install pyyaml), or use TOML"
            ) from error
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise TandemError(f"{path}: not valid YAML: {error}") from error
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise TandemError(f"{path}: not valid TOML: {error}") from error
    if not isinstance(data, dict):
        raise TandemError(f"{path}: a run spec must be a table of keys, got {type(data).__name__}")
    return data
