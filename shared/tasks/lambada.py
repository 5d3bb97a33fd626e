"""LAMBADA (OpenAI's version, 5153 passages), scored as lm-eval's ``lambada_openai``: the
passage up to its last space is the context, ``" " + last word`` the continuation; acc is
whether greedy decoding would produce the whole word, perplexity is
``exp(-mean(log-likelihood of the word))`` over the passages.

Data: ``lambada_test.jsonl`` (``{"text"}`` per line, the original release's bytes).
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import TandemError
from shared.jsonl import require_fields
from shared.tasks._base import HubSource, Metric, Numbered, Sample, TaskDef
from shared.tasks._mc import rows_loader


def split_text(text: str) -> tuple[str, str]:
    """(context, continuation) as lm-eval splits a passage: at its last space."""
    words = text.split(" ")
    return " ".join(words[:-1]), " " + words[-1]


def _samples(source: Path, numbered: Numbered) -> list[Sample]:
    samples = []
    for index, (number, row) in enumerate(numbered):
        require_fields(source, number, row, {"text": str})
        if " " not in row["text"]:
            raise TandemError(f"{source}:{number}: a passage needs at least two words")
        context, target = split_text(row["text"])
        samples.append(
            Sample(
                sample_id=str(index),
                prompt=context,
                choices=(target,),
                gold=0,
                doc={"choice_texts": [target.lstrip(" ")]},
            )
        )
    return samples


LAMBADA_OPENAI = TaskDef(
    name="lambada_openai",
    kind="multiple_choice",
    description="LAMBADA (OpenAI, 5153 passages): last-word accuracy and perplexity",
    loader=rows_loader(
        "lambada_openai",
        ["lambada_test.jsonl"],
        HubSource("EleutherAI/lambada_openai", "default", "test"),
        _samples,
        folder="lambada",
    ),
    scorer="greedy",
    metrics=(
        Metric("perplexity", "perplexity_of_mean", higher_is_better=False),
        Metric("acc"),
    ),
    headline="acc",
)
