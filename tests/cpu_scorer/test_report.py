"""``tandem report``: one run's summary, several runs side by side with paired tests
against the first, as markdown or JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import child_env, tandem

from cpu_scorer.compare import paired_tests
from cpu_scorer.report import build_report, render_markdown
from shared.store import Store


def _report(store: Path, *args: str) -> str:
    done = subprocess.run(
        tandem("report", *args, "--store", str(store)),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_one_run_in_markdown(scored_store: Path) -> None:
    text = _report(scored_store, "run-a")
    summary = json.loads((scored_store / "runs/run-a/summary.json").read_text())
    record = json.loads((scored_store / "runs/run-a/run.json").read_text())
    metrics = summary["tasks"]["ifeval"]["metrics"]
    strict, stderr = metrics["prompt_level_strict_acc"], metrics["prompt_level_strict_acc_stderr"]
    assert (
        f"| ifeval | prompt_level_strict_acc (headline) | {strict:.4f} | ± {stderr:.4f} | 40 |"
        in text
    )
    for section in (
        "## run-a",
        "### Scores",
        "### Telemetry",
        "### Profile",
        "### Reproducibility",
    ):
        assert section in text
    assert f"| spec hash | {record['spec_hash']} |" in text
    assert record["model"]["chat_template_sha256"] in text
    assert "| backend | fake |" in text
    assert "Not profiled" in text


def test_several_runs_side_by_side_with_paired_tests(scored_store: Path) -> None:
    text = _report(scored_store, "run-a", "run-b")
    tests = paired_tests(Store(str(scored_store)), "run-a", "run-b")["tasks"]
    header = next(line for line in text.splitlines() if line.startswith("| task | metric |"))
    assert header == "| task | metric | run-a | run-b | run-b vs run-a |"
    row = next(line for line in text.splitlines() if line.startswith("| ifeval |"))
    test = tests["ifeval"]
    low, high = test["ci"]
    assert f"{test['difference']:+.4f} [{low:+.4f}, {high:+.4f}]" in row
    assert f"McNemar p={test['mcnemar']['p_value']:.3g}" in row
    assert text.count("### Scores") == 2  # each run's own section follows


def test_json_is_what_the_markdown_is_rendered_from(scored_store: Path) -> None:
    data = json.loads(_report(scored_store, "run-a", "run-b", "--format", "json"))
    store = Store(str(scored_store))
    assert data == json.loads(json.dumps(build_report(store, ["run-a", "run-b"])))
    assert render_markdown(data) == _report(scored_store, "run-a", "run-b")
    run = data["runs"][1]
    assert run["config"]["backend"] == "fake"
    assert run["scores"]["ifeval"]["breakdowns"]["by_instruction"]
    assert run["telemetry"]["ifeval"]["peak_rss_bytes"] > 0
    assert set(data["paired_tests"]) == {"run-b"}


def test_unknown_runs_are_one_clear_error(scored_store: Path) -> None:
    done = subprocess.run(
        tandem("report", "run-a", "nope", "--store", str(scored_store)),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "no run 'nope'" in done.stderr


def test_breakdowns_of_every_shape_become_tables() -> None:
    from cpu_scorer.report import breakdown_table

    flat = {"STEM": 0.5, "other": 0.25}
    assert breakdown_table(flat) == (["name", "value"], [["STEM", 0.5], ["other", 0.25]])
    mmlu = {
        "anatomy": {"acc": 0.5, "acc_stderr": 0.04, "n": 135},
        "virology": {"acc": 0.625, "acc_stderr": 0.03, "n": 166},
    }
    assert breakdown_table(mmlu) == (
        ["name", "acc", "acc_stderr", "n"],
        [["anatomy", 0.5, 0.04, 135], ["virology", 0.625, 0.03, 166]],
    )
    deeper = {"a": 1.0, "b": {"c": {"d": 2.0}}, "e": "text"}
    assert breakdown_table(deeper) == (["name", "value"], [["a", 1.0], ["b / c / d", 2.0]])
