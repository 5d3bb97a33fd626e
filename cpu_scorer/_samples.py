"""The samples of one task for the viewer: filtered pages and one sample in full.

Filters are applied on the server over the task index (``cpu_scorer._queries``), so a
run with thousands of shards sends a page, not the run:

- ``failed``: true = failed or errored samples, false = passed ones (the index's
  verdicts; no extra read);
- ``instruction``: IFEval samples that carry this instruction id; with ``failed`` it is
  *that instruction's* strict verdict that must have failed (or passed), which is what
  someone chasing one checker wants;
- ``text``: a case-insensitive substring of the prompt or the response, or the sample
  id itself.

The instruction and text filters read a few columns per shard (cached under the
files' stamps, like the index), and the matching positions are cached under the
index's key plus the filter: a page after the first costs its own rows only.

``sample`` is one sample with everything the viewer shows: the prompt as given and as
the model saw it, the response, each IFEval instruction's strict and loose verdict with
its arguments, each choice with its log-likelihood and which one won (by sum and by
length-normalized sum, as acc and acc_norm pick), and the scorer's ``details`` (for
generative tasks: the answer it extracted and the target), shown as they are.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cpu_scorer import multiple_choice
from cpu_scorer._queries import (
    RunNotFound,
    SampleCache,
    TaskIndex,
    parse_details,
    parse_doc,
    row_json,
)
from shared.store import GENERATIONS, SCORES, Store, TaskState

# The generation columns the text filter searches.
_TEXT_COLUMNS = ("prompt", "response", "text")
# Every generation column a sample's view may show.
_DETAIL_COLUMNS = (
    "prompt",
    "rendered_prompt",
    "response",
    "text",
    "prompt_tokens",
    "generated_tokens",
    "finish_reason",
    "truncated_tokens",
    "choices",
    "logprobs",
    "is_greedy",
    "continuation_tokens",
    "gold",
    "tokens",
    "logprob",
    "doc",
    "error",
)
_SCORE_DETAIL_COLUMNS = (
    "metrics",
    "instruction_id_list",
    "inst_level_strict",
    "inst_level_loose",
    "prediction",
    "details",
    "error",
)


def _by_shard(index: TaskIndex, positions: list[int]) -> dict[int, list[tuple[int, int]]]:
    """Shard number -> [(position, row)] for ``positions``, in order."""
    shards = pc.take(index.shard, pa.array(positions, pa.int64())).to_pylist()
    rows = pc.take(index.row, pa.array(positions, pa.int64())).to_pylist()
    out: dict[int, list[tuple[int, int]]] = {}
    for position, number, row in zip(positions, shards, rows, strict=True):
        out.setdefault(number, []).append((position, row))
    return out


def _instruction_match(
    cache: SampleCache,
    store: Store,
    state: TaskState,
    index: TaskIndex,
    positions: list[int],
    instruction: str,
    failed: bool | None,
) -> list[int]:
    keep = []
    for number, members in _by_shard(index, positions).items():
        ref = index.refs[number]
        if index.scored[number]:
            lists = cache.column_lists(
                store, state, ref, SCORES, ("instruction_id_list", "inst_level_strict")
            )
            ids, verdicts = lists["instruction_id_list"], lists["inst_level_strict"]
        else:
            docs = cache.column_lists(store, state, ref, GENERATIONS, ("doc",))["doc"]
            ids = [parse_doc(d).get("instruction_id_list") for d in docs]
            verdicts = [None] * len(ids)
        for position, row in members:
            names = ids[row] or []
            if instruction not in names:
                continue
            verdict = (verdicts[row] or [None] * len(names))[names.index(instruction)]
            if failed is None or (verdict is not None and verdict is not failed):
                keep.append(position)
    return sorted(keep)


def _text_match(
    cache: SampleCache,
    store: Store,
    state: TaskState,
    index: TaskIndex,
    positions: list[int],
    text: str,
) -> list[int]:
    needle = text.casefold()
    sample_ids = index.sample_id.to_pylist()
    keep = []
    for number, members in _by_shard(index, positions).items():
        lists = cache.column_lists(store, state, index.refs[number], GENERATIONS, _TEXT_COLUMNS)
        for position, row in members:
            if sample_ids[position] == text or any(
                needle in (lists[column][row] or "").casefold() for column in _TEXT_COLUMNS
            ):
                keep.append(position)
    return sorted(keep)


def matching(
    cache: SampleCache,
    store: Store,
    run_id: str,
    task: str,
    failed: bool | None = None,
    instruction: str | None = None,
    text: str | None = None,
) -> tuple[TaskState, TaskIndex, list[int]]:
    """The index positions of the samples that pass every filter, in task order."""
    state, index = cache.index(store, run_id, task)
    key = ("match", cache.index_key(store, state), failed, instruction, text)

    def compute() -> list[int]:
        # Without an instruction, ``failed`` is the sample's verdict; with one, that
        # instruction's (so the sample-level view must not pre-filter).
        base = index.views[None if instruction else failed].to_pylist()
        if instruction:
            base = _instruction_match(cache, store, state, index, base, instruction, failed)
        if text:
            base = _text_match(cache, store, state, index, base, text)
        return base

    return state, index, cache.view(key, compute)


def page(
    cache: SampleCache,
    store: Store,
    run_id: str,
    task: str,
    *,
    failed: bool | None = None,
    instruction: str | None = None,
    text: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> tuple[int, list[dict[str, Any]]]:
    """(matching samples, the JSON rows [offset, offset+limit) of them)."""
    if not instruction and not text:
        total, table = cache.page(store, run_id, task, failed, offset, limit)
        return total, [row_json(r) for r in (table.to_pylist() if table is not None else [])]
    state, index, positions = matching(cache, store, run_id, task, failed, instruction, text)
    chosen = positions[offset : offset + limit]
    if not chosen:
        return len(positions), []
    table = cache.rows(store, state, index, chosen)
    return len(positions), [row_json(r) for r in table.to_pylist()]


def _choices(generation: dict[str, Any], scores: dict[str, Any] | None) -> list[dict[str, Any]]:
    doc = parse_doc(generation.get("doc"))
    choices = generation.get("choices") or []
    logprobs = generation.get("logprobs") or []
    texts = doc.get("choice_texts") or [c.lstrip(" ") for c in choices]
    won = won_norm = None
    if logprobs and len(logprobs) == len(choices) and len(texts) == len(choices):
        picked = multiple_choice.score_row(logprobs, texts, generation.get("gold"))
        won, won_norm = picked["prediction"], picked["prediction_norm"]
    if scores is not None and scores.get("prediction") is not None:
        won = scores["prediction"]
    greedy = generation.get("is_greedy") or [None] * len(choices)
    tokens = generation.get("continuation_tokens") or [None] * len(choices)
    return [
        {
            "index": i,
            "text": choice,
            "logprob": logprobs[i] if i < len(logprobs) else None,
            "tokens": tokens[i],
            "is_greedy": greedy[i],
            "gold": i == generation.get("gold"),
            "won": i == won,
            "won_norm": i == won_norm,
        }
        for i, choice in enumerate(choices)
    ]


def sample(
    cache: SampleCache, store: Store, run_id: str, task: str, sample_id: str
) -> dict[str, Any]:
    """One sample in full (see the module docstring); RunNotFound when it is not in
    the task."""
    state, index = cache.index(store, run_id, task)
    found = pc.index(index.sample_id, pa.scalar(sample_id, pa.string())).as_py()
    if found is None or found < 0:
        raise RunNotFound(f"run {run_id!r} task {task!r} has no sample {sample_id!r}")
    number, row = index.shard[found].as_py(), index.row[found].as_py()
    ref = index.refs[number]
    generation = {
        k: v[row]
        for k, v in cache.column_lists(store, state, ref, GENERATIONS, _DETAIL_COLUMNS).items()
    }
    scores = None
    if index.scored[number]:
        lists = cache.column_lists(store, state, ref, SCORES, _SCORE_DETAIL_COLUMNS)
        scores = {k: v[row] for k, v in lists.items()}
    doc = parse_doc(generation.get("doc"))
    instructions = None
    ids = (scores or {}).get("instruction_id_list") or doc.get("instruction_id_list")
    if ids:
        strict = (scores or {}).get("inst_level_strict") or [None] * len(ids)
        loose = (scores or {}).get("inst_level_loose") or [None] * len(ids)
        kwargs = doc.get("kwargs") or [None] * len(ids)
        instructions = [
            {"id": name, "strict": s, "loose": lo, "kwargs": k}
            for name, s, lo, k in zip(ids, strict, loose, kwargs, strict=False)
        ]
    return {
        "run_id": run_id,
        "task": task,
        "sample_id": sample_id,
        "position": found,
        "scored": scores is not None,
        "passed": index.passed[found].as_py(),
        "error": (scores or {}).get("error") or generation.get("error"),
        "prompt": generation.get("prompt") or generation.get("text"),
        "rendered_prompt": generation.get("rendered_prompt"),
        "response": generation.get("response"),
        "finish_reason": generation.get("finish_reason"),
        "prompt_tokens": generation.get("prompt_tokens") or generation.get("tokens"),
        "generated_tokens": generation.get("generated_tokens"),
        "truncated_tokens": generation.get("truncated_tokens"),
        "metrics": dict((scores or {}).get("metrics") or []) if scores else None,
        "instructions": instructions,
        "choices": _choices(generation, scores) if generation.get("choices") else None,
        "gold": generation.get("gold"),
        "prediction": (scores or {}).get("prediction"),
        "details": parse_details((scores or {}).get("details")),
        "doc": doc,
    }
