"""Per-sample scoring of one generation shard, by the scorer its task declares.

``SCORERS`` is the one registry: a task names its scorer (``TaskDef.scorer``), the scorer
names the Parquet schema it reads, and ``score_table`` turns a generation table into a
scores table. A score shard is a pure function of its generation shard and
SCORER_VERSION: its provenance (created_at included) is copied from the generation
shard, so two scorers racing on one shard write byte-identical files.

Also computed once per shard, here, and carried in the score shard's metadata: the
shard's telemetry (samples, model seconds, tokens, and under ``worker`` what the worker
measured: prefill/decode seconds, batch sizes, peak memory), so a summary never re-reads
a generation shard.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from cpu_scorer import generative
from cpu_scorer._rows import (
    DEFAULT_OPTIONS,
    NeedsConfirmation,
    Rows,
    ScoreOptions,
    load_doc,
    score_row_base,
)
from shared.errors import TandemError
from shared.records import WorkerTelemetry
from shared.schema import extras_of, make_table, provenance_of, upgrade
from shared.tasks import TaskDef


def score_ifeval(rows: Rows, options: ScoreOptions = DEFAULT_OPTIONS) -> Rows:
    from cpu_scorer import ifeval

    docs = [load_doc(r) for r in rows]
    for row, doc in zip(rows, docs, strict=True):
        if not doc.get("instruction_id_list"):
            raise TandemError(f"ifeval sample {row['sample_id']}: no instructions to check")
    todo = [i for i, r in enumerate(rows) if not r.get("error")]
    verdicts = ifeval.evaluate_many(
        [
            (
                rows[i]["prompt"],
                rows[i]["response"],
                docs[i]["instruction_id_list"],
                docs[i]["kwargs"],
            )
            for i in todo
        ]
    )
    out = [score_row_base(r) for r in rows]
    for index, verdict in zip(todo, verdicts, strict=True):
        strict, loose = list(verdict.strict), list(verdict.loose)
        out[index].update(
            instruction_id_list=docs[index]["instruction_id_list"],
            inst_level_strict=strict,
            inst_level_loose=loose,
            metrics=[
                ("prompt_level_strict_acc", float(all(strict))),
                ("inst_level_strict_acc", sum(strict) / len(strict)),
                ("prompt_level_loose_acc", float(all(loose))),
                ("inst_level_loose_acc", sum(loose) / len(loose)),
            ],
        )
    return out


def score_choices(rows: Rows, options: ScoreOptions = DEFAULT_OPTIONS) -> Rows:
    from cpu_scorer import multiple_choice

    out = []
    for row in rows:
        scored = score_row_base(row)
        if not row.get("error"):
            doc = load_doc(row)
            choice_texts = doc.get("choice_texts") or [c.lstrip(" ") for c in row["choices"]]
            result = multiple_choice.score_row(row["logprobs"], choice_texts, row["gold"])
            scored["metrics"] = sorted(result["metrics"].items())
            scored["prediction"] = result["prediction"]
        out.append(scored)
    return out


def score_rolling(rows: Rows, options: ScoreOptions = DEFAULT_OPTIONS) -> Rows:
    out = []
    for row in rows:
        scored = score_row_base(row)
        if not row.get("error"):
            scored["metrics"] = [
                ("bytes", float(row["bytes"])),
                ("logprob", float(row["logprob"])),
                ("tokens", float(row["tokens"])),
                ("words", float(row["words"])),
            ]
        out.append(scored)
    return out


def score_greedy(rows: Rows, options: ScoreOptions = DEFAULT_OPTIONS) -> Rows:
    """One continuation per sample (LAMBADA's last word): acc is whether greedy decoding
    produces all of it; its log-likelihood feeds the perplexity."""
    out = []
    for row in rows:
        scored = score_row_base(row)
        if not row.get("error"):
            if len(row["logprobs"] or ()) != 1 or len(row["is_greedy"] or ()) != 1:
                raise TandemError(f"sample {row['sample_id']}: expected one continuation")
            scored["metrics"] = [
                ("acc", float(bool(row["is_greedy"][0]))),
                ("logprob", float(row["logprobs"][0])),
            ]
            scored["prediction"] = 0 if row["is_greedy"][0] else None
        out.append(scored)
    return out


def score_mc2(rows: Rows, options: ScoreOptions = DEFAULT_OPTIONS) -> Rows:
    """TruthfulQA mc2: the true answers' share of the probability mass, the choices'
    probabilities (exp of their log-likelihoods) normalized to sum to one."""
    import math

    out = []
    for row in rows:
        scored = score_row_base(row)
        if not row.get("error"):
            labels = load_doc(row).get("labels")
            logprobs = row["logprobs"] or []
            if not isinstance(labels, list) or len(labels) != len(logprobs) or not logprobs:
                raise TandemError(f"sample {row['sample_id']}: doc labels do not pair with choices")
            top = max(logprobs)  # shift before exp: the ratio is the same, no underflow
            weights = [math.exp(lp - top) for lp in logprobs]
            true = sum(w for w, label in zip(weights, labels, strict=True) if label == 1)
            scored["metrics"] = [("acc", true / sum(weights))]
            scored["prediction"] = max(range(len(logprobs)), key=logprobs.__getitem__)
        out.append(scored)
    return out


@dataclass(frozen=True)
class Scorer:
    """A CPU scorer: the generation schema it reads, its per-row function, and the
    per-sample metric whose value 1 means "passed" (what compare flips on; None when
    the task has no pass/fail)."""

    schema: str
    score: Callable[[Rows, ScoreOptions], Rows]
    pass_metric: str | None
    # Runs model-written programs: refused unless options.confirm_unsafe_code.
    unsafe: bool = False


SCORERS: dict[str, Scorer] = {
    "ifeval": Scorer("generations", score_ifeval, "prompt_level_strict_acc"),
    "choices": Scorer("loglikelihoods", score_choices, "acc"),
    "rolling": Scorer("rolling", score_rolling, None),
    "greedy": Scorer("loglikelihoods", score_greedy, "acc"),
    "truthfulqa_mc2": Scorer("loglikelihoods", score_mc2, None),
    "gsm8k": Scorer("generations", generative.score_gsm8k, "exact_match,strict-match"),
    "minerva_math": Scorer("generations", generative.score_math, "exact_match"),
    "code": Scorer("generations", generative.score_code, "pass@1", unsafe=True),
}


def scorer_for(task: TaskDef) -> Scorer:
    from shared.errors import unknown_name

    try:
        return SCORERS[task.scorer]
    except KeyError:
        raise unknown_name(f"scorer (task {task.name})", task.scorer, SCORERS) from None


def read_generation(table: pa.Table, task: TaskDef) -> tuple[pa.Table, Rows]:
    """The shard upgraded to its schema's current version, checked to be the kind of
    shard ``task`` produces, and its rows."""
    kind, table = upgrade(table)
    if kind != task.schema:
        raise TandemError(
            f"a {kind} shard in the folder of task {task.name!r}, whose shards are "
            f"{task.schema}; it belongs to another task"
        )
    return table, table.to_pylist()


def score_table(
    generation: pa.Table, task: TaskDef, options: ScoreOptions = DEFAULT_OPTIONS
) -> pa.Table:
    """Score one generation shard (any schema version) of ``task`` into a scores table."""
    generation, rows = read_generation(generation, task)
    return score_rows(generation, rows, task, options)


def score_rows(
    generation: pa.Table, rows: Rows, task: TaskDef, options: ScoreOptions = DEFAULT_OPTIONS
) -> pa.Table:
    scorer = scorer_for(task)
    if scorer.unsafe and not options.confirm_unsafe_code:
        raise NeedsConfirmation(
            f"task {task.name} runs model-written programs to score them; the scorer runs "
            "them only when told to: --confirm-run-unsafe-code (see docs/tasks.md, "
            "'Running model-written code')"
        )
    scored = scorer.score(rows, options) if rows else []
    extra = {"telemetry": json.dumps(shard_telemetry(generation), sort_keys=True)}
    worker = extras_of(generation).get("worker")
    if worker:
        extra["worker"] = worker
    return make_table("scores", scored, provenance_of(generation), extra)


def shard_telemetry(table: pa.Table) -> dict[str, Any]:
    """Model time and token counts of one generation shard, summed once at scoring,
    and the worker's own measurements of it (``worker``, from its metadata) when it has
    them.

    Each row carries its batch's wall time and the requests the batch held; a row is
    one request, or one per choice, and its share is time x its requests / size.
    """
    names = table.column_names
    telemetry: dict[str, Any] = {"samples": table.num_rows, "model_seconds": 0.0}
    if "batch_seconds" in names:
        share = table.column("batch_seconds").to_pylist()
        sizes = (
            table.column("batch_size").to_pylist() if "batch_size" in names else [1] * len(share)
        )
        requests = (
            [len(c or ()) or 1 for c in table.column("choices").to_pylist()]
            if "choices" in names
            else [1] * len(share)
        )
        telemetry["model_seconds"] = sum(
            s * k / max(1, n or 0)
            for s, n, k in zip(share, sizes, requests, strict=True)
            if s is not None
        )
    for column in ("generated_tokens", "prompt_tokens"):
        if column in names:
            telemetry[column] = sum(v or 0 for v in table.column(column).to_pylist())
    if "finish_reason" in names:
        # generated_tokens counts the EOS a row ended with; text tokens do not (and
        # lm-eval's outputs, whose tokens/s tandem's is compared with, hold none).
        telemetry["eos_tokens"] = sum(
            1 for reason in table.column("finish_reason").to_pylist() if reason == "eos"
        )
    if "choices" in names and "continuation_tokens" in names:
        choices = table.column("choices").to_pylist()
        contexts = table.column("prompt_tokens").to_pylist()
        continuations = table.column("continuation_tokens").to_pylist()
        telemetry["requests"] = sum(len(c or ()) for c in choices)
        telemetry["scored_tokens"] = sum(
            (ctx or 0) * len(c or ()) + sum(k or ())
            for c, ctx, k in zip(choices, contexts, continuations, strict=True)
        )
    measured = extras_of(table).get("worker_telemetry")
    if measured:
        try:
            telemetry["worker"] = WorkerTelemetry.model_validate_json(measured).model_dump()
        except ValueError:
            pass  # unreadable measurements lose the telemetry, never the shard's scores
    return telemetry
