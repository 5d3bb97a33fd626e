"""schemathesis over the app's OpenAPI schema: generated requests (valid and invalid) to
every operation; no 5xx, and every response as documented (status codes, content
types, auth). Run for the open app and for the token-protected one.

schemathesis's pytest plugin does not run under pytest 9, so operations are driven
with hypothesis directly, which is what the plugin does underneath.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")

TOKEN = "schema-test-token"


def _operations(store: Path, token: str | None) -> list:
    from cpu_scorer.api import create_app

    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(str(store), token))
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "token"])
def test_no_server_errors_and_responses_as_documented(scored_store: Path, token) -> None:
    operations = _operations(scored_store, token)
    assert {op.path for op in operations} >= {
        "/runs",
        "/runs/{run_id}",
        "/runs/{run_id}/scores",
        "/runs/{run_id}/samples",
        "/runs/{run_id}/export",
        "/compare",
        "/healthz",
        "/metrics",
    }
    headers = {"Authorization": f"Bearer {token}"} if token else None
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case) -> None:
            case.call_and_validate(headers=headers)

        check()


def _checker(operation, run_id: str):
    @given(case=operation.as_strategy())
    @settings(
        max_examples=10, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case) -> None:
        case.path_parameters = {"run_id": run_id}
        case.call_and_validate()

    return check


def test_real_run_ids_are_exercised_too(scored_store: Path) -> None:
    # Random ids almost never name a run; make sure the existing runs pass the checks.
    for operation in _operations(scored_store, None):
        if "{run_id}" in operation.path:
            for run_id in ("run-a", "run-b"):
                _checker(operation, run_id)()
