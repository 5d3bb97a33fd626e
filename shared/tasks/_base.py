"""What a task is: a named, ordered list of samples, how the worker runs them, and how
the scorer turns them into numbers.

A task *declares* its kind (what the worker computes), its scorer (the name of the CPU
scorer that turns a shard into per-sample metrics) and its metrics with their
aggregations, and which metric is its headline, like lm-eval's ``output_type`` and
``metric_list``. The scorer, the summary, the API and the report read these; nothing
downstream infers a task's nature from its name or the shape of its rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shared.errors import TandemError
from shared.jsonl import read_jsonl

if TYPE_CHECKING:
    from shared.tasks._fewshot import Fewshot

# generate: free-form generation (IFEval). multiple_choice: per-choice log-likelihoods.
# rolling: log-likelihood of whole texts (perplexity).
TaskKind = Literal["generate", "multiple_choice", "rolling"]
OutputType = TaskKind  # the older name

# The Parquet schema a worker writes for each kind of task.
SCHEMA_FOR_KIND: dict[str, str] = {
    "generate": "generations",
    "multiple_choice": "loglikelihoods",
    "rolling": "rolling",
}


@dataclass(frozen=True)
class Sample:
    """One evaluation item, in the task's canonical order.

    ``prompt`` is the user prompt (generate), the context (multiple_choice) or the text
    (rolling). ``choices`` are the continuations exactly as scored, leading space
    included. ``contexts``, when set, gives one context per choice instead of the
    shared ``prompt`` (WinoGrande's partial evaluation: the option is in the context,
    the continuation after the blank is shared). ``doc`` holds whatever the scorer
    needs later (instruction kwargs, choice texts for acc_norm); it is written into
    every generation row as JSON, so a shard can be scored without the original data.
    ``description`` goes in front of the few-shot block and the context when the task
    is loaded (``load_samples``; MMLU's subject line), and is empty afterwards.
    ``shared_prefix`` is the start of ``prompt`` that other samples of the task have
    too (a first_n few-shot block and its description): a backend may compute it once
    for a batch. Empty when the exemplars differ per sample.
    """

    sample_id: str
    prompt: str
    choices: tuple[str, ...] = ()
    gold: int | None = None
    contexts: tuple[str, ...] = ()
    doc: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    shared_prefix: str = ""


@dataclass(frozen=True)
class Generation:
    """A generation task's own settings, as its lm-eval YAML has them: the stop strings
    (``until``) and the token budget (``max_gen_toks``; None: the spec's)."""

    stop: tuple[str, ...] = ()
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class Metric:
    """A number a task reports. ``aggregation`` names how the scorer computes it from the
    task's scored samples (``cpu_scorer.aggregations``): ``mean`` (of a per-sample value,
    with its standard error), ``inst_mean`` (over IFEval's instructions), ``f1``,
    ``perplexity``, ``tinybenchmarks_irt``, ``by_instruction`` (a breakdown, not a number)."""

    name: str
    aggregation: str = "mean"
    higher_is_better: bool = True


@dataclass(frozen=True)
class TaskDef:
    name: str
    kind: TaskKind
    description: str
    # load(data_dir) -> samples in canonical order; data_dir None means the HF hub.
    loader: Callable[[Path | None], list[Sample]]
    # The CPU scorer for its shards (``cpu_scorer.scorers.SCORERS``).
    scorer: str
    metrics: tuple[Metric, ...]
    # The one metric a runs table shows for this task.
    headline: str
    # Whether an instruct model's chat template applies under chat_template="auto".
    # lm-eval scores log-likelihood tasks on the raw text unless told otherwise.
    chat_by_default: bool = False
    # Few-shot exemplars (None: the task takes none) and the suite's usual shot count.
    fewshot: Fewshot | None = None
    # Generation tasks: stop strings and token budget.
    generation: Generation | None = None
    # Its scorer runs model-written programs: opt-in on the scorer's side.
    unsafe_code: bool = False
    # A doc field to group samples by before sharding (a stable sort), so samples with
    # the same few-shot block share a shard and the backend computes the block once.
    order_by: str | None = None
    # A doc field whose groups a ``limit`` counts in (MMLU: "subject"): lm-eval runs such
    # a task as one subtask per group, and its --limit N takes N of each.
    limit_by: str | None = None

    def __post_init__(self) -> None:
        names = [m.name for m in self.metrics]
        if self.headline not in names:
            raise TandemError(f"task {self.name}: headline {self.headline!r} is not in {names}")

    @property
    def output(self) -> TaskKind:
        """The kind under its older name."""
        return self.kind

    @property
    def schema(self) -> str:
        """The Parquet schema of this task's generation shards."""
        return SCHEMA_FOR_KIND[self.kind]


# The metrics every multiple-choice task reports (lm-eval's acc and acc_norm).
CHOICE_METRICS = (Metric("acc"), Metric("acc_norm"))


def ordered(samples: list[Sample], key: str | None) -> list[Sample]:
    """``samples`` grouped by ``doc[key]`` (stable: the data's order within a group)."""
    if not key:
        return samples
    return sorted(samples, key=lambda sample: str(sample.doc.get(key, "")))


def load_samples(
    task: TaskDef,
    data_dir: str | Path | None,
    limit: int | None,
    num_fewshot: int = 0,
    fewshot_seed: int | None = None,
) -> list[Sample]:
    """The first ``limit`` samples of a task (a fixed prefix, so runs stay comparable;
    the first ``limit`` of each group for a task with ``limit_by``), each with its
    description and ``num_fewshot`` exemplars in front of its context
    (``shared.tasks._fewshot``)."""
    from shared.tasks._fewshot import DEFAULT_SEED, apply_fewshot

    folder = Path(data_dir).expanduser() if data_dir else None
    samples = task.loader(folder)
    ids = [s.sample_id for s in samples]
    if len(set(ids)) != len(ids):
        raise TandemError(f"task {task.name}: duplicate sample ids in the data")
    if limit and task.limit_by:
        taken: dict[str, int] = {}
        kept = []
        for sample in samples:
            group = str(sample.doc.get(task.limit_by, ""))
            if taken.get(group, 0) < limit:
                taken[group] = taken.get(group, 0) + 1
                kept.append(sample)
        samples = kept
    elif limit:
        samples = samples[:limit]
    seed = DEFAULT_SEED if fewshot_seed is None else fewshot_seed
    return apply_fewshot(task.name, task.fewshot, samples, folder, num_fewshot, seed)


@dataclass(frozen=True)
class HubSource:
    """Where lm-eval loads a task's rows on the Hugging Face hub."""

    path: str
    name: str | None
    split: str


Numbered = list[tuple[int, dict[str, Any]]]


def load_rows(
    task: str, data_dir: Path | None, files: list[str], hub: HubSource, folder: str | None = None
) -> tuple[Path, Numbered]:
    """(source, [(line number, row)]) from the first of ``files`` found under
    ``data_dir`` (see ``find_data_file``), or from the hub when there is no data_dir."""
    if data_dir is None:
        rows = load_from_hub(task, hub.path, hub.name, hub.split)
        return Path(hub.path), list(enumerate(rows, start=1))
    source = find_data_file(data_dir, task, files, folder)
    return source, list(read_jsonl(source))


def find_data_file(
    data_dir: Path, task: str, candidates: list[str], folder: str | None = None
) -> Path:
    """The first candidate found in data_dir, data_dir/<folder> or data_dir/mc/<folder>
    (``folder`` defaults to the task's name).

    The last form is the layout of the project's shared data folder, so
    ``--data-dir ../shared/data`` works for every task.
    """
    name = folder or task
    folders = (data_dir, data_dir / name, data_dir / "mc" / name)
    for candidate in candidates:
        for place in folders:
            path = place / candidate
            if path.is_file():
                return path
    raise TandemError(
        f"task {task}: none of {candidates} found in {', '.join(str(f) for f in folders)}; "
        "point --data-dir (or data_dir in the spec) at a folder holding them"
    )


def load_from_hub(task: str, path: str, name: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of a Hugging Face dataset, for users without a local copy (needs `datasets`)."""
    try:
        import datasets  # optional; only when no data_dir is given
    except ImportError as error:
        raise TandemError(
            f"task {task}: no data_dir given and the `datasets` package is not installed; "
            "either pass --data-dir pointing at a local copy, or pip install datasets"
        ) from error
    try:
        return list(datasets.load_dataset(path, name, split=split))
    except Exception as error:  # network, auth, missing dataset: all user-actionable
        raise TandemError(
            f"task {task}: could not load {path} from the Hugging Face hub ({error}); "
            "pass --data-dir pointing at a local copy instead"
        ) from error
