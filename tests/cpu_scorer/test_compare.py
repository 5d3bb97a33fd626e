"""``tandem compare A B`` prints the same flips as ``GET /compare``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import child_env, tandem
from fastapi.testclient import TestClient

from cpu_scorer.api import create_app
from cpu_scorer.compare import compare_runs
from shared.errors import TandemError
from shared.store import Store


@pytest.mark.parametrize("task", ["ifeval", "tinymmlu"])
def test_cli_json_equals_the_api(scored_store: Path, task: str) -> None:
    done = subprocess.run(
        tandem("compare", "run-a", "run-b", "--store", str(scored_store), "--task", task, "--json"),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    with TestClient(create_app(str(scored_store))) as client:
        api = client.get("/compare", params={"a": "run-a", "b": "run-b", "task": task}).json()
    assert json.loads(done.stdout) == api
    assert api["counts"]["fixed"] + api["counts"]["broken"] == len(api["flips"]) > 0


def test_flips_are_per_prompt_with_the_instructions_that_changed(scored_store: Path) -> None:
    result = compare_runs(Store(str(scored_store)), "run-a", "run-b", "ifeval")
    assert result["metric"] == "prompt_level_strict_acc"
    counts = result["counts"]
    assert sum(counts[k] for k in ("fixed", "broken", "both_pass", "both_fail")) == 40
    for flip in result["flips"]:
        assert flip["a"] != flip["b"]
        assert flip["direction"] == ("fixed" if flip["b"] else "broken")
        assert flip["instructions_changed"], flip  # a prompt flips because one did
        for change in flip["instructions_changed"]:
            assert change["a"] != change["b"]
    same = compare_runs(Store(str(scored_store)), "run-a", "run-a", "ifeval")
    assert same["flips"] == [] and same["counts"]["fixed"] == same["counts"]["broken"] == 0


def test_text_output_lists_every_flip(scored_store: Path) -> None:
    done = subprocess.run(
        tandem("compare", "run-a", "run-b", "--store", str(scored_store)),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = compare_runs(Store(str(scored_store)), "run-a", "run-b", "ifeval")
    lines = done.stdout.splitlines()
    assert f"{result['counts']['fixed']} fixed, {result['counts']['broken']} broken" in lines[0]
    listed = [line.split()[1] for line in lines[1:] if line.split()[0] in ("fixed", "broken")]
    assert listed == [f["sample_id"] for f in result["flips"]]


def test_unknown_or_unsafe_runs_are_refused(scored_store: Path) -> None:
    store = Store(str(scored_store))
    with pytest.raises(TandemError, match="no run"):
        compare_runs(store, "run-a", "nope", "ifeval")
    with pytest.raises(TandemError, match="invalid run id"):
        compare_runs(store, "run-a", "../run-b", "ifeval")
    done = subprocess.run(
        tandem("compare", "run-a", "nope", "--store", str(scored_store)),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "no run 'nope'" in done.stderr
