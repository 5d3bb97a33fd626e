"""Turn one shard of samples into backend requests and one Parquet table.

Every input sample comes out exactly once, in order; a shard whose rows do not match
its samples one for one is never published.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from gpu_worker.backends.base import (
    Backend,
    GenerationRequest,
    LoglikelihoodRequest,
    RollingRequest,
)
from gpu_worker.telemetry import ShardMeter
from shared.errors import TandemError
from shared.records import WorkerInfo
from shared.schema import doc_json, make_table
from shared.spec import RunSpec
from shared.store import GENERATIONS, ShardRef, Store
from shared.tasks import Sample, TaskDef


def build_shard(
    backend: Backend,
    spec: RunSpec,
    task: TaskDef,
    ref: ShardRef,
    samples: list[Sample],
    chat: bool,
    provenance: dict[str, str],
    worker: WorkerInfo | None = None,
) -> pa.Table:
    """One shard's table. Its metadata records its own range (so a copy stored under
    another name is caught), the worker that wrote it and what it measured meanwhile."""
    meter = ShardMeter(backend)
    if task.kind == "generate":
        rows = _generate_rows(backend, spec, task, ref, samples, chat)
    elif task.kind == "multiple_choice":
        rows = _choice_rows(backend, ref, samples, chat)
    else:
        rows = _rolling_rows(backend, ref, samples)
    got = [row["sample_id"] for row in rows]
    want = [s.sample_id for s in samples]
    if got != want:
        raise TandemError(
            f"shard {ref.task}/{ref.name}: backend returned {len(got)} rows for "
            f"{len(want)} samples; refusing to publish an incomplete shard"
        )
    extra = {"shard": ref.name, "worker_telemetry": meter.finish(rows).model_dump_json()}
    if worker is not None:
        extra["worker"] = worker.model_dump_json()
    return make_table(task.schema, rows, provenance, extra)


def run_shard(
    backend: Backend,
    store: Store,
    spec: RunSpec,
    task: TaskDef,
    ref: ShardRef,
    samples: list[Sample],
    chat: bool,
    provenance: dict[str, str],
    worker: WorkerInfo | None = None,
) -> dict[str, Any]:
    """Build and atomically publish one generation shard; returns its throughput stats.

    A shard is published once and never replaced: a scorer may already have scored it.
    If it exists (a retry of an attempt whose worker died after publishing, or another
    job racing on the same run), nothing is generated and the stats are the published
    shard's, with ``already_published`` set. Two writers racing past that check both
    build, and only the first to publish wins (``Store.create_table``).
    """
    path = store.shard_path(GENERATIONS, ref)
    if store.exists(path):
        return published_stats(store, ref)
    table = build_shard(backend, spec, task, ref, samples, chat, provenance, worker)
    if not store.create_table(path, table):
        return published_stats(store, ref)
    return shard_stats(ref, table)


def published_stats(store: Store, ref: ShardRef) -> dict[str, Any]:
    """The stats of a generation shard already in the store (``already_published``)."""
    table = store.read_table(store.shard_path(GENERATIONS, ref))
    return {**shard_stats(ref, table), "already_published": True}


def shard_stats(ref: ShardRef, table: pa.Table) -> dict[str, Any]:
    """What a shard holds, for the job's end-of-run line: samples; for generation the
    text tokens and, apart, the EOS tokens rows ended with; for log-likelihood the
    requests (one per choice) and the tokens they scored (context + continuation)."""
    names = table.column_names
    stats: dict[str, Any] = {"task": ref.task, "shard": ref.name, "samples": table.num_rows}
    if "generated_tokens" in names:
        eos = sum(1 for r in table.column("finish_reason").to_pylist() if r == "eos")
        generated = sum(v or 0 for v in table.column("generated_tokens").to_pylist())
        stats["generated_tokens"] = generated - eos
        stats["eos_tokens"] = eos
    if "choices" in names:
        rows = table.select(["choices", "prompt_tokens", "continuation_tokens"]).to_pylist()
        stats["requests"] = sum(len(r["choices"] or ()) for r in rows)
        stats["scored_tokens"] = sum(
            (r["prompt_tokens"] or 0) * len(r["choices"] or ())
            + sum(r["continuation_tokens"] or ())
            for r in rows
        )
    return stats


def _base(ref: ShardRef, sample: Sample) -> dict[str, Any]:
    return {"run_id": ref.run_id, "task": ref.task, "sample_id": sample.sample_id}


def generation_settings(spec: RunSpec, task: TaskDef) -> tuple[int, tuple[str, ...]]:
    """(max_new_tokens, stop strings) for a generation task: the task's stop strings
    (lm-eval's ``until``) and the spec's; the task's token budget (``max_gen_toks``)
    unless the spec sets ``generation.max_new_tokens`` itself."""
    params = spec.generation
    own = task.generation
    stop = tuple(dict.fromkeys((*(own.stop if own else ()), *params.stop)))
    budget = params.max_new_tokens
    if own and own.max_new_tokens and "max_new_tokens" not in params.model_fields_set:
        budget = own.max_new_tokens
    return budget, stop


def _generate_rows(
    backend: Backend,
    spec: RunSpec,
    task: TaskDef,
    ref: ShardRef,
    samples: list[Sample],
    chat: bool,
) -> list[dict[str, Any]]:
    rendered = [backend.render(s.prompt, chat) for s in samples]
    budget, stop = generation_settings(spec, task)
    requests = [
        GenerationRequest(text, budget, stop, prefix=s.shared_prefix)
        for s, text in zip(samples, rendered, strict=True)
    ]
    results = backend.generate(requests)
    rows = []
    for sample, text, result in zip(samples, rendered, results, strict=True):
        rows.append(
            {
                **_base(ref, sample),
                "prompt": sample.prompt,
                "rendered_prompt": text,
                "response": result.text,
                "prompt_tokens": result.prompt_tokens,
                "generated_tokens": result.generated_tokens,
                "finish_reason": result.finish_reason,
                "truncated_tokens": result.truncated_tokens,
                "batch_seconds": result.batch_seconds,
                "batch_size": result.batch_size,
                "doc": doc_json(sample.doc),
                "error": result.error,
            }
        )
    return rows


def _choice_rows(
    backend: Backend, ref: ShardRef, samples: list[Sample], chat: bool
) -> list[dict[str, Any]]:
    requests, owners = [], []
    rendered = []
    for index, sample in enumerate(samples):
        if not sample.choices:
            raise TandemError(f"task {ref.task} sample {sample.sample_id}: no choices")
        contexts = sample.contexts or (sample.prompt,) * len(sample.choices)
        if len(contexts) != len(sample.choices):
            raise TandemError(
                f"task {ref.task} sample {sample.sample_id}: {len(contexts)} contexts "
                f"for {len(sample.choices)} choices"
            )
        contexts = tuple(backend.render(c, chat) for c in contexts)
        rendered.append(contexts[0] if not sample.contexts else "")
        for context, choice in zip(contexts, sample.choices, strict=True):
            requests.append(LoglikelihoodRequest(context, choice))
            owners.append(index)
    results = backend.loglikelihood(requests)
    per_sample: list[list[Any]] = [[] for _ in samples]
    for owner, result in zip(owners, results, strict=True):
        per_sample[owner].append(result)
    rows = []
    for sample, text, outcome in zip(samples, rendered, per_sample, strict=True):
        errors = [r.error for r in outcome if r.error]
        rows.append(
            {
                **_base(ref, sample),
                "prompt": sample.prompt,
                "rendered_prompt": text,
                "choices": list(sample.choices),
                "logprobs": [r.logprob for r in outcome],
                "is_greedy": [r.is_greedy for r in outcome],
                "continuation_tokens": [r.continuation_tokens for r in outcome],
                "prompt_tokens": max(r.context_tokens for r in outcome),
                "gold": sample.gold,
                "batch_seconds": max(r.batch_seconds for r in outcome),
                "batch_size": max(r.batch_size for r in outcome),
                "doc": doc_json(sample.doc),
                "error": "; ".join(errors) if errors else None,
            }
        )
    return rows


def _rolling_rows(backend: Backend, ref: ShardRef, samples: list[Sample]) -> list[dict[str, Any]]:
    requests = [RollingRequest(s.prompt, s.doc.get("window"), s.doc.get("stride")) for s in samples]
    results = backend.loglikelihood_rolling(requests)
    return [
        {
            **_base(ref, sample),
            "text": sample.prompt,
            "logprob": result.logprob,
            "tokens": result.tokens,
            "words": int(sample.doc.get("words", len(sample.prompt.split()))),
            "bytes": int(sample.doc.get("bytes", len(sample.prompt.encode("utf-8")))),
            "batch_seconds": result.batch_seconds,
            "doc": doc_json(sample.doc),
            "error": result.error,
        }
        for sample, result in zip(samples, results, strict=True)
    ]
