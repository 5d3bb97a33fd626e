"""MATH-500 (500 competition problems, the PRM800K test subset), scored as lm-eval's
``minerva_math500``: context ``"Problem:\\n{problem}\\n\\nSolution:"``, four fixed
exemplars with worked solutions (Minerva's prompt, Lewkowycz et al. 2022, appendix; in
``data/minerva_math_fewshot.json``), generation stops at "Problem:". The scorer takes the
answer after "Final Answer: The final answer is" in the response, the target from the
last ``\\boxed{...}`` of the reference solution, normalizes both as Minerva does and
compares them, exactly or, where sympy parses both, symbolically
(``cpu_scorer.answers``).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from shared.jsonl import require_fields
from shared.tasks._base import Generation, HubSource, Metric, Numbered, Sample, TaskDef
from shared.tasks._fewshot import Fewshot
from shared.tasks._mc import rows_loader


def render(problem: str) -> str:
    return f"Problem:\n{problem}\n\nSolution:"


def _samples(source: Path, numbered: Numbered) -> list[Sample]:
    samples = []
    for number, row in numbered:
        require_fields(source, number, row, {"problem": str, "solution": str})
        samples.append(
            Sample(
                sample_id=str(row.get("unique_id") or number - 1),
                prompt=render(row["problem"]),
                doc={
                    "solution": row["solution"],
                    "answer": row.get("answer"),
                    "subject": row.get("subject"),
                    "level": row.get("level"),
                },
            )
        )
    return samples


def _exemplars(data_dir: Path | None) -> list[Sample]:
    text = (
        resources.files("shared.tasks")
        .joinpath("data/minerva_math_fewshot.json")
        .read_text(encoding="utf-8")
    )
    return [
        Sample(sample_id=f"minerva-{i}", prompt=render(e["problem"]), doc=e)
        for i, e in enumerate(json.loads(text))
    ]


MATH500 = TaskDef(
    name="math500",
    kind="generate",
    description="MATH-500 (500 problems), Minerva prompt, exact match after normalization",
    loader=rows_loader(
        "math500",
        ["math500_test.jsonl", "math500/test.jsonl"],
        HubSource("HuggingFaceH4/MATH-500", "default", "test"),
        _samples,
    ),
    scorer="minerva_math",
    metrics=(Metric("exact_match"),),
    headline="exact_match",
    fewshot=Fewshot(
        pool=_exemplars,
        exemplar=lambda sample: sample.prompt + " " + sample.doc["solution"],
        sampler="first_n",
    ),
    generation=Generation(stop=("Problem:",)),
)
