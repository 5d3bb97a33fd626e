"""Task definitions: load data, render prompts, hold gold answers, declare scoring.

``TASKS`` is the one registry: adding a task is one module and one line here. A task
declares its kind, scorer, metrics and headline (``TaskDef``); the worker, the scorer,
the summary, the API and the report all read them from here. Loading happens only when
a loader is called (never at import).
"""

from __future__ import annotations

from shared.tasks._base import (
    SCHEMA_FOR_KIND,
    Generation,
    Metric,
    Sample,
    TaskDef,
    TaskKind,
    load_samples,
)
from shared.tasks.arc import ARC_CHALLENGE, ARC_EASY
from shared.tasks.boolq import BOOLQ
from shared.tasks.code import HUMANEVAL, MBPP
from shared.tasks.glue import MRPC, RTE, SST2
from shared.tasks.gsm8k import GSM8K
from shared.tasks.hellaswag import HELLASWAG
from shared.tasks.ifeval import IFEVAL
from shared.tasks.lambada import LAMBADA_OPENAI
from shared.tasks.math500 import MATH500
from shared.tasks.mmlu import MMLU
from shared.tasks.perplexity import PERPLEXITY
from shared.tasks.piqa import PIQA
from shared.tasks.tinymmlu import TINYMMLU
from shared.tasks.truthfulqa import TRUTHFULQA_MC1, TRUTHFULQA_MC2
from shared.tasks.winogrande import WINOGRANDE

TASKS: dict[str, TaskDef] = {
    IFEVAL.name: IFEVAL,
    TINYMMLU.name: TINYMMLU,
    ARC_EASY.name: ARC_EASY,
    ARC_CHALLENGE.name: ARC_CHALLENGE,
    PIQA.name: PIQA,
    HELLASWAG.name: HELLASWAG,
    WINOGRANDE.name: WINOGRANDE,
    BOOLQ.name: BOOLQ,
    RTE.name: RTE,
    SST2.name: SST2,
    MRPC.name: MRPC,
    PERPLEXITY.name: PERPLEXITY,
    MMLU.name: MMLU,
    TRUTHFULQA_MC1.name: TRUTHFULQA_MC1,
    TRUTHFULQA_MC2.name: TRUTHFULQA_MC2,
    LAMBADA_OPENAI.name: LAMBADA_OPENAI,
    GSM8K.name: GSM8K,
    MATH500.name: MATH500,
    HUMANEVAL.name: HUMANEVAL,
    MBPP.name: MBPP,
}

# Named sets of tasks with their usual shot counts: ``tasks = ["model-card"]`` in a spec.
# model-card: what small-model cards report (Llama 3.2, Qwen2.5, Gemma 3), with
# lm-eval's tasks and these shot counts.
SUITES: dict[str, dict[str, int]] = {
    "model-card": {
        "mmlu": 5,
        "arc_challenge": 25,
        "hellaswag": 10,
        "winogrande": 5,
        "truthfulqa_mc1": 0,
        "truthfulqa_mc2": 0,
        "piqa": 0,
        "lambada_openai": 0,
        "gsm8k": 8,
        "math500": 4,
        "humaneval": 0,
        "mbpp": 3,
    },
}

__all__ = [
    "SCHEMA_FOR_KIND",
    "SUITES",
    "TASKS",
    "Generation",
    "Metric",
    "Sample",
    "TaskDef",
    "TaskKind",
    "get_task",
    "load_samples",
]


def get_task(name: str) -> TaskDef:
    from shared.errors import unknown_name

    try:
        return TASKS[name]
    except KeyError:
        raise unknown_name("task", name, TASKS) from None
