"""``tandem sweep``: evaluate a training run's checkpoints, in step order, within a
time budget per checkpoint, with the same items at every step.

Checkpoints are folders ``step_<N>`` under ``--checkpoints``: either a Hugging Face model
folder (``config.json``) or a raw checkpoint -- a state_dict file (``*.safetensors``,
``*.pt``, ``*.pth``, ``*.bin``) and its config (``checkpoint.toml`` or ``checkpoint.json``,
see ``gpu_worker.export``), exported strictly to an HF folder in tandem's cache. A
checkpoint is taken only once complete: when it holds a marker file (``DONE``,
``COMPLETE`` or ``.done``), or else when its files' total size and newest modification
time have not changed for ``settle`` seconds. ``--every N`` keeps the steps that are
multiples of N; steps already evaluated in the store are skipped; ``--watch`` keeps
looking for new checkpoints until stopped.

**Fixed caps in a budget.** The first checkpoint is evaluated on ``probe`` items of each
task to measure the seconds per item on this hardware (the model's load and export are
measured too, as a fixed cost). Each task then gets an equal share of what is left of
``budget`` (10% kept as headroom), so cheap two-choice tasks get more items than
four-choice ones; a cap the spec sets (``limit``) is pinned and kept. The caps are
written into the sweep's record (``sweeps/<name>/sweep.json``) and used for every later
checkpoint, so the curve compares like with like; a checkpoint that takes longer than
the budget says so there (``over_budget``) -- nothing is dropped to fit.

Every checkpoint is one run, ``<sweep>-step<N>``, whose spec carries the sweep and the
step; it is scored at once by the CPU scorer (in this process), so its numbers are in the
store when the next checkpoint starts. Through ``ray job submit`` the sweep runs in the
job's driver: ask for a GPU for it (``--entrypoint-num-gpus 1``).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import TandemError

log = logging.getLogger("tandem.sweep")

STEP_FOLDER = re.compile(r"^step[_-]?(\d+)$")
MARKERS = ("DONE", "COMPLETE", ".done")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
DEFAULT_TASKS = ("piqa", "winogrande", "arc_easy", "hellaswag")
HEADROOM = 0.9  # of the budget, for what the measurements do not see
MIN_ITEMS = 10  # a task never gets fewer items (the record then says the budget is short)


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


@dataclass
class SweepOptions:
    """What ``tandem sweep`` was asked (the CLI builds it from argv)."""

    checkpoints: Path
    store: str
    name: str
    budget_seconds: float
    base: dict[str, Any] = field(default_factory=dict)  # spec fields: tasks, limit, ...
    every: int | None = None
    watch: bool = False
    settle: float = 30.0
    poll: float = 30.0
    probe: int = 8
    tokenizer: str | None = None
    heldout: str | None = None
    data_dir: str | None = None
    progress: bool = True


def parse_budget(text: str) -> float:
    """ "5m", "90s", "1h", "300" -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match or float(match[1]) <= 0:
        raise TandemError(f"--budget {text!r}: give a duration such as 300, 90s, 5m or 1h")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


# ---- finding checkpoints -------------------------------------------------------------------
def find_checkpoints(folder: Path, every: int | None) -> list[Checkpoint]:
    if not folder.is_dir():
        raise TandemError(f"--checkpoints {folder} is not a folder")
    found = []
    for child in folder.iterdir():
        match = STEP_FOLDER.match(child.name)
        if match and child.is_dir():
            step = int(match[1])
            if every is None or step % every == 0:
                found.append(Checkpoint(step, child))
    return sorted(found, key=lambda c: c.step)


def _snapshot(path: Path) -> tuple[int, int]:
    """(total size, newest mtime) of a checkpoint's files."""
    size = newest = 0
    for file in path.rglob("*"):
        if file.is_file():
            stat = file.stat()
            size += stat.st_size
            newest = max(newest, stat.st_mtime_ns)
    return size, newest


class Readiness:
    """Whether a checkpoint is completely written: a marker, or files unchanged for
    ``settle`` seconds since this object first saw them like that."""

    def __init__(self, settle: float, clock: Any = time.monotonic):
        self.settle = settle
        self.clock = clock
        self._seen: dict[Path, tuple[tuple[int, int], float]] = {}

    def ready(self, checkpoint: Checkpoint) -> bool:
        if any((checkpoint.path / marker).exists() for marker in MARKERS):
            return True
        snapshot = _snapshot(checkpoint.path)
        previous = self._seen.get(checkpoint.path)
        now = self.clock()
        if previous is None or previous[0] != snapshot:
            self._seen[checkpoint.path] = (snapshot, now)
            return False
        return snapshot[0] > 0 and now - previous[1] >= self.settle


def model_dir(checkpoint: Checkpoint, tokenizer: str | None) -> Path:
    """An HF model folder for the checkpoint (exported from a raw one, cached)."""
    if (checkpoint.path / "config.json").is_file():
        return checkpoint.path
    from gpu_worker.export import export_checkpoint, export_key
    from gpu_worker.models import cache_root

    weights = [p for p in checkpoint.path.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    configs = [
        checkpoint.path / name
        for name in ("checkpoint.toml", "checkpoint.json")
        if (checkpoint.path / name).is_file()
    ]
    if len(weights) != 1 or not configs:
        raise TandemError(
            f"{checkpoint.path}: a raw checkpoint needs one state_dict file "
            f"({', '.join(WEIGHT_SUFFIXES)}) and checkpoint.toml or checkpoint.json; found "
            f"{[p.name for p in checkpoint.path.iterdir()]}"
        )
    source = tokenizer or (
        checkpoint.path / "tokenizer" if (checkpoint.path / "tokenizer").is_dir() else None
    )
    if source is None:
        raise TandemError(
            f"{checkpoint.path}: a raw checkpoint needs the training tokenizer: pass "
            "--tokenizer DIR or put it in the checkpoint's tokenizer/ folder"
        )
    target = cache_root() / "exports" / export_key(weights[0], configs[0], source)
    if (target / "config.json").is_file():
        return target
    return export_checkpoint(weights[0], configs[0], source, target)


# ---- caps ----------------------------------------------------------------------------------
def choose_caps(
    per_item: dict[str, float],
    sizes: dict[str, int],
    pinned: dict[str, int],
    overhead: float,
    budget: float,
) -> tuple[dict[str, int], float]:
    """(cap per task, predicted seconds per checkpoint). Pinned caps are kept; the other
    tasks share what is left of ``budget * HEADROOM`` equally in time."""
    caps = dict(pinned)
    left = budget * HEADROOM - overhead - sum(per_item[t] * n for t, n in pinned.items())
    free = [t for t in per_item if t not in pinned]
    share = left / len(free) if free else 0.0
    for task in free:
        fitting = math.floor(share / per_item[task]) if per_item[task] > 0 else sizes[task]
        caps[task] = max(min(MIN_ITEMS, sizes[task]), min(sizes[task], fitting))
    predicted = overhead + sum(per_item[t] * caps[t] for t in per_item)
    return caps, predicted


# ---- one sweep -------------------------------------------------------------------------------
def run_sweep(options: SweepOptions, stop: threading.Event | None = None) -> Any:
    """Evaluate the ready checkpoints (and, with ``watch``, new ones until ``stop``);
    returns the sweep's record."""
    from shared.records import SweepRecord
    from shared.store import Store

    stop = stop or threading.Event()
    store = Store(options.store)
    store.check(writable=True, create=True)
    record = store.sweep(options.name) or SweepRecord(
        name=options.name,
        checkpoints=str(options.checkpoints),
        every=options.every,
        budget_seconds=options.budget_seconds,
    )
    readiness = Readiness(options.settle)
    while not stop.is_set():
        done = {s.step for s in record.steps if s.status == "done"}
        waiting = False
        for checkpoint in find_checkpoints(options.checkpoints, options.every):
            if stop.is_set() or checkpoint.step in done:
                continue
            if not readiness.ready(checkpoint):
                waiting = True
                continue
            record = _evaluate(store, record, options, checkpoint)
            store.publish_sweep(record)
            done.add(checkpoint.step)
        if not options.watch and not waiting:
            break
        stop.wait(options.poll if options.watch else min(options.poll, options.settle / 2 + 0.05))
    return record


def _base_spec(options: SweepOptions, checkpoint: Checkpoint, model: Path, caps: dict[str, int]):  # type: ignore[no-untyped-def]
    from shared.spec import parse_spec

    fields = dict(options.base)
    tasks = list(fields.get("tasks") or DEFAULT_TASKS)
    task_data = dict(fields.get("task_data") or {})
    if options.heldout and "perplexity" not in tasks:
        tasks.append("perplexity")
        task_data["perplexity"] = options.heldout
    fields.update(
        run_id=f"{options.name}-step{checkpoint.step:09d}",
        model=str(model),
        tasks=tasks,
        task_data=task_data,
        limit=caps or dict(fields.get("limit") or {}),
        sweep=options.name,
        step=checkpoint.step,
    )
    if options.data_dir:
        fields["data_dir"] = options.data_dir
    return parse_spec(fields, f"sweep {options.name}")


def _evaluate(store: Any, record: Any, options: SweepOptions, checkpoint: Checkpoint) -> Any:
    from cpu_scorer.scoring import score_once
    from gpu_worker.backends import create_backend
    from gpu_worker.job import run_generation
    from shared.records import SweepCheckpoint

    started = time.monotonic()
    run_id = f"{options.name}-step{checkpoint.step:09d}"
    if _complete(store, run_id):  # evaluated before (its sweep record was lost)
        entry = SweepCheckpoint(step=checkpoint.step, run_id=run_id)
        steps = [s for s in record.steps if s.step != checkpoint.step] + [entry]
        return record.model_copy(update={"steps": sorted(steps, key=lambda s: s.step)})
    log.info("sweep %s: step %d (%s)", options.name, checkpoint.step, checkpoint.path)
    calibration = 0.0
    try:
        model = model_dir(checkpoint, options.tokenizer)
        backend = None
        if not record.caps:
            record, backend, calibration = _calibrate(record, options, checkpoint, model, started)
        spec = _base_spec(options, checkpoint, model, record.caps)
        backend = backend or create_backend(spec)
        run_generation(spec, store.uri, backend=backend, progress=options.progress)
        del backend
        score_once(store, run_id, progress=False)
    except TandemError as error:
        log.error("sweep %s: step %d failed: %s", options.name, checkpoint.step, error)
        entry = SweepCheckpoint(
            step=checkpoint.step, run_id=run_id, status="failed", error=str(error)
        )
    else:
        # The first checkpoint also measured the tasks (once per sweep): not its budget.
        seconds = time.monotonic() - started - calibration
        entry = SweepCheckpoint(
            step=checkpoint.step,
            run_id=run_id,
            seconds=round(seconds, 2),
            over_budget=seconds > options.budget_seconds,
        )
        if entry.over_budget:
            log.warning(
                "sweep %s: step %d took %.0f s, over the %.0f s budget",
                options.name,
                checkpoint.step,
                seconds,
                options.budget_seconds,
            )
    steps = [s for s in record.steps if s.step != checkpoint.step] + [entry]
    return record.model_copy(update={"steps": sorted(steps, key=lambda s: s.step)})


def _complete(store: Any, run_id: str) -> bool:
    try:
        summary = store.summary(run_id)
    except TandemError:
        return False
    return summary is not None and all(t.complete for t in summary.tasks.values())


def _calibrate(
    record: Any, options: SweepOptions, checkpoint: Checkpoint, model: Path, started: float
) -> tuple[Any, Any, float]:
    """Measure seconds per item of each task on ``probe`` items, and the fixed cost of
    a checkpoint (export and load); choose the caps (see the module docstring). Returns
    the record with the caps, the loaded backend (for this checkpoint's run) and the
    seconds the measuring took."""
    from gpu_worker.backends import create_backend
    from gpu_worker.job import use_chat
    from gpu_worker.shards import build_shard
    from shared.store import ShardRef
    from shared.tasks import TASKS, load_samples

    spec = _base_spec(options, checkpoint, model, {})
    pinned = {t: n for t, n in spec.limit.items()}
    backend = create_backend(spec)
    overhead = time.monotonic() - started
    per_item: dict[str, float] = {}
    sizes: dict[str, int] = {}
    measuring = time.monotonic()
    for name in spec.tasks:
        task = TASKS[name]
        data = spec.task_data.get(name) or spec.data_dir
        everything = load_samples(
            task, data, None, num_fewshot=spec.shots(name), fewshot_seed=spec.fewshot_seed
        )
        sizes[name] = len(everything)
        probe = everything[: min(options.probe, len(everything))]
        chat = use_chat(spec, task, backend.has_chat_template())
        ref = ShardRef("calibration", name, 0, len(probe))
        began = time.monotonic()
        build_shard(backend, spec, task, ref, probe, chat, {})
        per_item[name] = (time.monotonic() - began) / max(1, len(probe))
        if task.limit_by:
            # A limit counts per group there (MMLU: per subject): one "item" of the
            # caps is one item of every group.
            counts = Counter(str(s.doc.get(task.limit_by, "")) for s in everything)
            per_item[name] *= len(counts)
            sizes[name] = max(counts.values())
    measured = time.monotonic() - measuring
    caps, predicted = choose_caps(per_item, sizes, pinned, overhead, options.budget_seconds)
    log.info("sweep %s: caps %s (predicted %.0f s a checkpoint)", options.name, caps, predicted)
    updated = record.model_copy(
        update={
            "caps": caps,
            "seconds_per_item": {t: round(v, 4) for t, v in per_item.items()},
            "overhead_seconds": round(overhead, 2),
            "pinned": sorted(pinned),
            "predicted_seconds": round(predicted, 1),
            "calibration_seconds": round(measured, 2),
        }
    )
    return updated, backend, measured
