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
from shared.jsonl import read_jsonl, require_fields
from shared.tasks._base import HubSource, Numbered, Sample, find_data_file, load_from_hub
from shared.tasks._fewshot import Fewshot
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


def _train(data_dir: Path | None) -> list[Sample]:
    """lm-eval's few-shot pool: winogrande_xl's train split (40,398 rows)."""
    if data_dir is None:
        rows = load_from_hub("winogrande", "allenai/winogrande", "winogrande_xl", "train")
        return _samples(Path("allenai/winogrande"), list(enumerate(rows, start=1)))
    try:
        source = find_data_file(
            data_dir, "winogrande", ["winogrande_xl_train.jsonl", "train_xl.jsonl"]
        )
    except TandemError as error:
        raise TandemError(
            f"{error}. WinoGrande's few-shot examples come from winogrande_xl's train split "
            "(train_xl.jsonl, 40,398 rows), which is not in the shared data folder (it holds "
            "train_s/m/l, smaller subsets that would draw other examples than lm-eval): put "
            "train_xl.jsonl in --data-dir, run without --data-dir to read it from the hub, or "
            "set num_fewshot = { winogrande = 0 }"
        ) from error
    return _samples(source, list(read_jsonl(source)))


def _exemplar(sample: Sample) -> str:
    # The sentence up to the blank with the right option, then the rest of it.
    gold = sample.gold or 0
    return sample.contexts[gold] + sample.choices[gold]


# lm-eval reports acc; acc_norm is computed too and always equals it here.
WINOGRANDE = choice_task(
    "winogrande",
    "WinoGrande XL validation (1267 pronoun blanks), partial evaluation, acc",
    ["winogrande_xl_validation.jsonl"],
    HubSource("allenai/winogrande", "winogrande_xl", "validation"),
    _samples,
    headline="acc",
    fewshot=Fewshot(pool=_train, exemplar=_exemplar, draws_extra=True),
)
