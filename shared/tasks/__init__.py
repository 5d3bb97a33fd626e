"""Task definitions: load data, render prompts, hold gold answers, declare scoring.

``TASKS`` is the one registry: adding a task is one module and one line here. A task
declares its kind, scorer, metrics and headline (``TaskDef``); the worker, the scorer,
the summary, the API and the report all read them from here. Loading happens only when
a loader is called (never at import).
"""

from __future__ import annotations

from shared.tasks._base import SCHEMA_FOR_KIND, Metric, Sample, TaskDef, TaskKind, load_samples
from shared.tasks.arc import ARC_CHALLENGE, ARC_EASY
from shared.tasks.boolq import BOOLQ
from shared.tasks.glue import MRPC, RTE, SST2
from shared.tasks.hellaswag import HELLASWAG
from shared.tasks.ifeval import IFEVAL
from shared.tasks.perplexity import PERPLEXITY
from shared.tasks.piqa import PIQA
from shared.tasks.tinymmlu import TINYMMLU
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
}

__all__ = [
    "SCHEMA_FOR_KIND",
    "TASKS",
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
