"""Task definitions: load data, render prompts, hold gold answers.

``TASKS`` is the one registry: adding a task is one module and one line here.
Loading happens only when a loader is called (never at import).
"""

from __future__ import annotations

from shared.tasks._base import Sample, TaskDef, load_samples
from shared.tasks.ifeval import IFEVAL
from shared.tasks.tinymmlu import TINYMMLU

TASKS: dict[str, TaskDef] = {
    IFEVAL.name: IFEVAL,
    TINYMMLU.name: TINYMMLU,
}

__all__ = ["TASKS", "Sample", "TaskDef", "load_samples", "get_task"]


def get_task(name: str) -> TaskDef:
    from shared.errors import unknown_name

    try:
        return TASKS[name]
    except KeyError:
        raise unknown_name("task", name, TASKS) from None
