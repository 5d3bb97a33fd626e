"""Code generation: HumanEval (164 functions, 0-shot) and MBPP (500 test problems,
3-shot), scored as lm-eval's ``humaneval`` and ``mbpp``: greedy completion, then the
program runs against the task's tests in the scorer's sandbox (``cpu_scorer.sandbox``,
opt-in: it runs model-written code); pass@1 with one greedy sample is the share of
problems whose program passes.

* HumanEval: the context is the function's prompt (signature and docstring); generation
  stops at a new top-level block ("\\nclass", "\\ndef", "\\n#", "\\nif", "\\nprint"), at
  most 1024 tokens; the program is prompt + completion + the task's test + a call of
  ``check(entry_point)``.
* MBPP: ``"You are an expert Python programmer, and here is your task: {text} Your code
  should pass these tests:\\n\\n{3 tests}\\n[BEGIN]\\n"``; the three exemplars are the
  dataset's prompt-split problems 2, 3 and 4, each followed by its code and "\\n[DONE]"
  (no delimiter between context and code); generation stops at "[DONE]"; the program
  is the completion + the three test asserts. Test split: task ids 11-510.
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import TandemError
from shared.jsonl import require_fields
from shared.tasks._base import Generation, HubSource, Metric, Numbered, Sample, TaskDef
from shared.tasks._fewshot import Fewshot
from shared.tasks._mc import rows_loader

HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_TEST_IDS = range(11, 511)
MBPP_FEWSHOT_IDS = (2, 3, 4)


def _humaneval(source: Path, numbered: Numbered) -> list[Sample]:
    samples = []
    for number, row in numbered:
        require_fields(
            source, number, row, {"task_id": str, "prompt": str, "test": str, "entry_point": str}
        )
        samples.append(
            Sample(
                sample_id=row["task_id"],
                prompt=row["prompt"],
                doc={
                    "program_prefix": row["prompt"],
                    "tests": f"{row['test']}\ncheck({row['entry_point']})",
                },
            )
        )
    return samples


def mbpp_render(text: str, tests: list[str]) -> str:
    return (
        f"You are an expert Python programmer, and here is your task: {text} Your code "
        f"should pass these tests:\n\n{tests[0]}\n{tests[1]}\n{tests[2]}\n[BEGIN]\n"
    )


def _mbpp_rows(source: Path, numbered: Numbered, ids: range | tuple[int, ...]) -> list[Sample]:
    wanted = set(ids)
    samples = []
    for number, row in numbered:
        require_fields(
            source, number, row, {"task_id": int, "text": str, "code": str, "test_list": list}
        )
        if row["task_id"] not in wanted:
            continue
        tests = row["test_list"]
        if len(tests) < 3 or not all(isinstance(t, str) for t in tests):
            raise TandemError(f"{source}:{number}: test_list must hold three asserts")
        samples.append(
            Sample(
                sample_id=str(row["task_id"]),
                prompt=mbpp_render(row["text"], tests),
                doc={"code": row["code"], "program_prefix": "", "tests": "\n".join(tests[:3])},
            )
        )
    found = {int(s.sample_id) for s in samples}
    if found != wanted:
        raise TandemError(f"{source}: missing MBPP task ids {sorted(wanted - found)[:10]}")
    return sorted(samples, key=lambda s: int(s.sample_id))


HUMANEVAL = TaskDef(
    name="humaneval",
    kind="generate",
    description="HumanEval (164 Python functions), pass@1 in the scorer's sandbox",
    loader=rows_loader(
        "humaneval",
        ["HumanEval.jsonl"],
        HubSource("openai/openai_humaneval", None, "test"),
        _humaneval,
    ),
    scorer="code",
    metrics=(Metric("pass@1"),),
    headline="pass@1",
    generation=Generation(stop=HUMANEVAL_STOP, max_new_tokens=1024),
    unsafe_code=True,
)

_MBPP_HUB = HubSource("google-research-datasets/mbpp", "full", "test")
MBPP = TaskDef(
    name="mbpp",
    kind="generate",
    description="MBPP (500 test problems, 3-shot), pass@1 in the scorer's sandbox",
    loader=rows_loader(
        "mbpp", ["mbpp.jsonl"], _MBPP_HUB, lambda s, n: _mbpp_rows(s, n, MBPP_TEST_IDS)
    ),
    scorer="code",
    metrics=(Metric("pass@1"),),
    headline="pass@1",
    fewshot=Fewshot(
        pool=rows_loader(
            "mbpp",
            ["mbpp.jsonl"],
            HubSource("google-research-datasets/mbpp", "full", "prompt"),
            lambda s, n: _mbpp_rows(s, n, MBPP_FEWSHOT_IDS),
        ),
        exemplar=lambda sample: sample.prompt + sample.doc["code"] + "\n[DONE]",
        sampler="first_n",
    ),
    generation=Generation(stop=("[DONE]",)),
    unsafe_code=True,
)
