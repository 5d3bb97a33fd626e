"""MMLU (Hendrycks et al.): 57 subjects, 14,042 test questions, scored as lm-eval's
``mmlu`` group (``mmlu/default``): each subject is its own task with the description
"The following are multiple choice questions (with answers) about <subject>.\\n\\n",
the context ``"{question.strip()}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\nD. {c3}\\nAnswer:"`` and
the continuations " A".." D". Few-shot exemplars are the subject's dev questions in
order (``first_n``; the model-card protocol is 5-shot). acc per subject, per category
(STEM, humanities, social sciences, other) and overall, each weighted by size as lm-eval
aggregates its groups.

Rows: ``{"question", "subject", "choices": [4], "answer": 0-3}`` (cais/mmlu's layout),
in ``mmlu_test.jsonl`` / ``mmlu_dev.jsonl``; sample ids are ``<subject>/<n>``, n counting
within the subject in file order.
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import TandemError
from shared.jsonl import require_fields
from shared.tasks._base import HubSource, Metric, Numbered, Sample, TaskDef, load_rows
from shared.tasks._fewshot import Fewshot

LETTERS = ("A", "B", "C", "D")
# The four categories lm-eval groups MMLU's subjects into (hendrycks/test's own split).
_STEM = (
    "abstract_algebra anatomy astronomy college_biology college_chemistry "
    "college_computer_science college_mathematics college_physics computer_security "
    "conceptual_physics electrical_engineering elementary_mathematics high_school_biology "
    "high_school_chemistry high_school_computer_science high_school_mathematics "
    "high_school_physics high_school_statistics machine_learning"
)
_HUMANITIES = (
    "formal_logic high_school_european_history high_school_us_history "
    "high_school_world_history international_law jurisprudence logical_fallacies "
    "moral_disputes moral_scenarios philosophy prehistory professional_law world_religions"
)
_SOCIAL = (
    "econometrics high_school_geography high_school_government_and_politics "
    "high_school_macroeconomics high_school_microeconomics high_school_psychology "
    "human_sexuality professional_psychology public_relations security_studies sociology "
    "us_foreign_policy"
)
_OTHER = (
    "business_ethics clinical_knowledge college_medicine global_facts human_aging "
    "management marketing medical_genetics miscellaneous nutrition professional_accounting "
    "professional_medicine virology"
)
CATEGORIES: dict[str, str] = {
    subject: category
    for category, names in (
        ("stem", _STEM),
        ("humanities", _HUMANITIES),
        ("social_sciences", _SOCIAL),
        ("other", _OTHER),
    )
    for subject in names.split()
}


def render(question: str, choices: list[str]) -> str:
    lines = [
        question.strip(),
        *(f"{letter}. {c}" for letter, c in zip(LETTERS, choices, strict=True)),
    ]
    return "\n".join(lines) + "\nAnswer:"


def description(subject: str) -> str:
    return (
        "The following are multiple choice questions (with answers) about "
        f"{subject.replace('_', ' ')}.\n\n"
    )


def _samples(source: Path, numbered: Numbered) -> list[Sample]:
    samples = []
    counts: dict[str, int] = {}
    for number, row in numbered:
        require_fields(
            source, number, row, {"question": str, "subject": str, "choices": list, "answer": int}
        )
        subject = row["subject"]
        if subject not in CATEGORIES:
            raise TandemError(f"{source}:{number}: unknown MMLU subject {subject!r}")
        choices = row["choices"]
        if len(choices) != 4 or not all(isinstance(c, str) for c in choices):
            raise TandemError(f"{source}:{number}: choices must be four strings")
        if not 0 <= row["answer"] < 4:
            raise TandemError(f"{source}:{number}: answer must be 0-3, got {row['answer']}")
        index = counts.get(subject, 0)
        counts[subject] = index + 1
        samples.append(
            Sample(
                sample_id=f"{subject}/{index}",
                prompt=render(row["question"], choices),
                choices=tuple(" " + letter for letter in LETTERS),
                gold=row["answer"],
                description=description(subject),
                doc={
                    "subject": subject,
                    "category": CATEGORIES[subject],
                    "choice_texts": list(LETTERS),
                },
            )
        )
    return samples


def _split(split: str, files: list[str]):  # type: ignore[no-untyped-def]
    def load(data_dir: Path | None) -> list[Sample]:
        return _samples(*load_rows("mmlu", data_dir, files, HubSource("cais/mmlu", "all", split)))

    return load


def _exemplar(sample: Sample) -> str:
    return sample.prompt + " " + LETTERS[sample.gold or 0]


MMLU = TaskDef(
    name="mmlu",
    kind="multiple_choice",
    description="MMLU test (14,042 questions in 57 subjects), acc per subject, category, overall",
    loader=_split("test", ["mmlu_test.jsonl"]),
    scorer="choices",
    metrics=(Metric("acc"), Metric("by_subject", "mmlu_groups")),
    headline="acc",
    order_by="subject",  # the data's order already is; kept explicit
    limit_by="subject",  # limit = {mmlu = 5}: 5 per subject (285), as lm-eval --limit 5
    fewshot=Fewshot(
        pool=_split("dev", ["mmlu_dev.jsonl"]),
        exemplar=_exemplar,
        sampler="first_n",
        group=lambda sample: sample.doc["subject"],
    ),
)
