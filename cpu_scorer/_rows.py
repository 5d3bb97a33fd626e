"""What every scorer shares: the score row it starts from, the doc it reads, options."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shared.errors import TandemError

SCORER_VERSION = "1"

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class ScoreOptions:
    """What a scorer may need beyond the rows. ``confirm_unsafe_code``: the user said
    model-written programs may run (``--confirm-run-unsafe-code``); ``code_workers``:
    programs run at once (None: every core)."""

    confirm_unsafe_code: bool = False
    code_workers: int | None = None


DEFAULT_OPTIONS = ScoreOptions()


class NeedsConfirmation(TandemError):
    """A shard whose scoring runs model-written code, and the user did not opt in: it
    stays pending (not quarantined, not failed)."""


def load_doc(row: dict[str, Any]) -> dict[str, Any]:
    try:
        doc = json.loads(row["doc"] or "{}")
    except json.JSONDecodeError as error:
        raise TandemError(f"sample {row['sample_id']}: doc column is not JSON") from error
    if not isinstance(doc, dict):
        raise TandemError(f"sample {row['sample_id']}: doc column is not a JSON object")
    return doc


def score_row_base(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": row["run_id"],
        "task": row["task"],
        "sample_id": row["sample_id"],
        "metrics": [],
        "instruction_id_list": None,
        "inst_level_strict": None,
        "inst_level_loose": None,
        "prediction": None,
        "scorer_version": SCORER_VERSION,
        "error": row.get("error"),
        "details": None,
    }
