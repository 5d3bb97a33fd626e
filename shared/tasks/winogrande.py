"""WinoGrande (winogrande_xl) validation, with lm-eval's partial evaluation.

The blank ``_`` is filled with each option to make two *contexts*; the text after the
blank is the one shared *continuation*, and only its log-probability is compared:

    "... than Maria so _ always got the easier cases."
    contexts:     "... than Maria so Sarah" / "... than Maria so Maria"
    continuation: " always got the easier cases."   (scored under both contexts)

Scoring the whole sentence instead would reward the more probable *name*, not the
sentence that makes sense. lm-eval reports acc only; because both choices are the same
continuation, acc_norm (same divisor for both) can only equal acc.
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import TandemError
from shared.jsonl import require_fields
from shared.tasks._base import HubSource, Numbered, Sample
from shared.tasks._mc import TARGET_DELIMITER, choice_task

_ANSWERS = {"1": 0, "2": 1}


def split_sentence(sentence: str, options: list[str]) -> tuple[list[str], str]:
    """(one context per option, the shared continuation text), as lm-eval's preprocessing."""
    blank = sentence.index("_")
    contexts = [sentence[:blank] + option for option in options]
    return contexts, sentence[blank + 1 :].strip()


def _samples(source: Path, numbered: Numbered) -> list[Sample]:
    samples = []
    for index, (number, row) in enumerate(numbered):
        require_fields(
            source, number, row, {"sentence": str, "option1": str, "option2": str, "answer": str}
        )
        if "_" not in row["sentence"]:
            raise TandemError(f"{source}:{number}: sentence has no blank '_'")
        if row["answer"] not in _ANSWERS:
            raise TandemError(
                f"{source}:{number}: answer must be '1' or '2', got {row['answer']!r}"
            )
        options = [row["option1"], row["option2"]]
        contexts, continuation = split_sentence(row["sentence"], options)
        samples.append(
            Sample(
                sample_id=str(index),
                prompt=row["sentence"],
                choices=(TARGET_DELIMITER + continuation,) * 2,
                gold=_ANSWERS[row["answer"]],
                contexts=tuple(contexts),
                # choice_texts: what acc_norm divides by -- the shared continuation.
                doc={"options": options, "choice_texts": [continuation] * 2},
            )
        )
    return samples


# lm-eval reports acc; acc_norm is computed too and always equals it here.
WINOGRANDE = choice_task(
    "winogrande",
    "WinoGrande XL validation (1267 pronoun blanks), partial evaluation, acc",
    ["winogrande_xl_validation.jsonl"],
    HubSource("allenai/winogrande", "winogrande_xl", "validation"),
    _samples,
    headline="acc",
)
