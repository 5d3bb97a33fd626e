"""Few-shot contexts, built the way lm-evaluation-harness 0.4.13 builds them.

A task with a ``Fewshot`` definition gets, in front of each sample's context:
its description (MMLU's "The following are multiple choice questions (with answers)
about ...", present even at 0 shots), then ``shots`` exemplars -- each the pool item's
question, the target delimiter and its answer -- each followed by the few-shot
delimiter ("\\n\\n"). Which exemplars:

* ``first_n``: the first ``shots`` items of the pool, or of the pool items in the
  sample's group (MMLU: the five dev questions of the sample's subject);
* ``random``: lm-eval's default sampler. One ``random.Random(fewshot_seed)`` per task
  draws ``shots`` pool items for each evaluated document *in document order*, so the
  exemplars of document k depend on the draws for documents 0..k-1. Drawing indices
  with ``Random.sample(range(len(pool)), shots)`` makes the same random calls as
  lm-eval's ``Random.sample(pool_docs, shots)``; a fixed prefix of the documents (a
  ``limit``) therefore gets exactly lm-eval's exemplars (single process, no ranks).
  For a task evaluated on a split it does not name as its test split (HellaSwag and
  WinoGrande: ``validation``), lm-eval's sampler takes the evaluated document to be in
  the pool: it draws ``shots + 1`` and drops the document (never there), so each
  document uses one draw more (``draws_extra``).

Each sample's ``doc["fewshot"]`` records the shot count, the seed and the pool ids of
its exemplars, so a row says which examples its model saw.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from shared.errors import TandemError
from shared.tasks._base import Sample

DEFAULT_SEED = 1234  # lm-eval's fewshot_random_seed default


@dataclass(frozen=True)
class Fewshot:
    """Where a task's exemplars come from and how one is rendered."""

    # The few-shot split as samples (answers in their doc), in the split's order.
    pool: Callable[[Path | None], list[Sample]]
    # One exemplar: question, target delimiter, answer (without the few-shot delimiter).
    exemplar: Callable[[Sample], str]
    sampler: Literal["first_n", "random"] = "random"
    # first_n within a group: the key of a sample's group (MMLU: its subject).
    group: Callable[[Sample], str] | None = None
    delimiter: str = "\n\n"
    # random: draw shots + 1 per document and use the first shots (see above).
    draws_extra: bool = False


def apply_fewshot(
    task: str,
    fewshot: Fewshot | None,
    samples: list[Sample],
    data_dir: Path | None,
    shots: int,
    seed: int = DEFAULT_SEED,
) -> list[Sample]:
    """``samples`` (a prefix of the task, from document 0) with their description and
    ``shots`` exemplars in front of every context."""
    if shots and fewshot is None:
        raise TandemError(f"task {task} has no few-shot examples; num_fewshot must be 0")
    if not shots or fewshot is None:
        return [_prefixed(sample, sample.description, None) for sample in samples]
    pool = fewshot.pool(data_dir)
    if fewshot.sampler == "random":
        draws = shots + (1 if fewshot.draws_extra else 0)
        if draws > len(pool):
            raise TandemError(
                f"task {task}: {shots} shots asked for, but its few-shot pool holds only "
                f"{len(pool)} examples"
            )
        rng = random.Random(seed)
        chosen = [[pool[i] for i in rng.sample(range(len(pool)), draws)[:shots]] for _ in samples]
    else:
        chosen = [_first_n(task, fewshot, pool, sample, shots) for sample in samples]
    out = []
    for sample, exemplars in zip(samples, chosen, strict=True):
        block = "".join(fewshot.exemplar(e) + fewshot.delimiter for e in exemplars)
        record = {
            "shots": shots,
            "seed": seed if fewshot.sampler == "random" else None,
            "ids": [e.sample_id for e in exemplars],
        }
        prefixed = _prefixed(sample, sample.description + block, record)
        if fewshot.sampler == "first_n" and not sample.contexts:
            # Every sample of the group starts with this block: generation can prefill
            # it once per batch (see GenerationRequest.prefix).
            prefixed = replace(prefixed, shared_prefix=sample.description + block)
        out.append(prefixed)
    return out


def _first_n(
    task: str, fewshot: Fewshot, pool: list[Sample], sample: Sample, shots: int
) -> list[Sample]:
    group = fewshot.group
    candidates = [p for p in pool if group is None or group(p) == group(sample)]
    if shots > len(candidates):
        where = f" for {group(sample)!r}" if group else ""
        raise TandemError(
            f"task {task}: {shots} shots asked for, but its few-shot pool holds only "
            f"{len(candidates)} examples{where}"
        )
    return candidates[:shots]


def _prefixed(sample: Sample, prefix: str, record: dict | None) -> Sample:
    doc = dict(sample.doc)
    if record is not None:
        doc["fewshot"] = record
    if not prefix and record is None:
        return sample
    return replace(
        sample,
        prompt=prefix + sample.prompt,
        contexts=tuple(prefix + context for context in sample.contexts),
        description="",
        doc=doc,
    )
