"""The HTML page at / in headless Chromium (Debian's ``chromium``): runs, per-task
scores, the chart across runs and IFEval pass rates per instruction type, as rendered."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)"
)


def render(url: str, profile: Path) -> str:
    """The DOM after the page's scripts ran (virtual time lets its fetches finish)."""
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def test_the_page_shows_runs_scores_chart_and_instruction_rates(
    server_factory, scored_store: Path, tmp_path: Path
) -> None:
    url = server_factory(scored_store)
    dom = render(url + "/", tmp_path / "profile")
    assert 'data-ready="1"' in dom, dom[-2000:]
    # Runs table: both runs with their headline scores.
    for run_id in ("run-a", "run-b"):
        assert f'data-run="{run_id}"' in dom
        summary = json.loads((scored_store / "runs" / run_id / "summary.json").read_text())
        strict = summary["tasks"]["ifeval"]["metrics"]["prompt_level_strict_acc"]
        assert f"ifeval {_fmt(strict)}" in dom
    # Chart: one line per task, one point per run.
    assert 'id="score-chart"' in dom
    for task in ("ifeval", "tinymmlu"):
        points = re.search(rf'<polyline points="([^"]*)"[^>]*data-task="{task}"', dom)
        assert points and len(points[1].split()) == 2, task
    # The newest run with IFEval is selected: its per-task metrics and per-type rates.
    assert "(run-b)" in dom
    summary = json.loads((scored_store / "runs/run-b/summary.json").read_text())
    metrics = summary["tasks"]["ifeval"]["metrics"]
    strict = _fmt(metrics["prompt_level_strict_acc"])
    assert f'<td>prompt_level_strict_acc</td><td class="num">{strict}' in dom
    assert metrics["by_instruction"]
    for name, rate in metrics["by_instruction"].items():
        row = re.search(rf'<tr data-instruction="{re.escape(name)}">(.*?)</tr>', dom)
        assert row, name
        assert f'<td class="num">{_fmt(rate)}</td>' in row[1]


def test_the_page_works_behind_a_token(server_factory, scored_store: Path, tmp_path: Path) -> None:
    url = server_factory(scored_store, token="page-token")
    dom = render(url + "/", tmp_path / "no-token")
    assert 'data-ready="error"' in dom and "401" in dom  # no token: nothing shown
    dom = render(url + "/#token=page-token", tmp_path / "with-token")
    assert 'data-ready="1"' in dom and 'data-run="run-a"' in dom
