"""``tandem profile``: latency at batch 1 for two prompt lengths, throughput at the
backend's batch size, peak memory, stored as the run's profile.json and served."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_worker.backends.fake import FakeBackend
from gpu_worker.profile import prompt_of, quantile
from shared.records import read_profile
from shared.spec import RunSpec
from shared.store import Store

REPO = Path(__file__).resolve().parents[2]


def test_quantiles_interpolate_like_numpy() -> None:
    import numpy as np

    values = [0.3, 0.1, 0.4, 0.15, 0.9, 0.2, 0.25]
    for q in (0.0, 0.5, 0.95, 1.0):
        assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)))
    assert quantile([1.0, 3.0], 0.5) == 2.0


def test_prompts_are_sized_by_the_backends_own_count() -> None:
    backend = FakeBackend(RunSpec(backend="fake", tasks=("ifeval",)))
    for tokens in (128, 512):
        text, measured = prompt_of(backend, tokens)
        assert measured == tokens == len(text.split())


def test_the_command_stores_a_profile_the_api_serves(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'run_id = "profiled"\nbackend = "fake"\ntasks = ["ifeval"]\n[generation]\nbatch_size = 8\n'
    )
    store = tmp_path / "store"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "tandem", "profile", str(spec), "--store", str(store)]
        + ["--repeats", "5", "--warmup", "1", "--new-tokens", "4"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert "stored as runs/profiled/profile.json" in done.stdout
    record = read_profile((store / "runs/profiled/profile.json").read_bytes())
    assert [row.prompt_tokens for row in record.latency] == [128, 512]
    for row in record.latency:
        assert row.measured_prompt_tokens == row.prompt_tokens
        assert row.repeats == 5 and row.new_tokens == 4
        assert 0 <= row.p50_seconds <= row.p95_seconds
    assert record.throughput is not None
    assert record.throughput.requests == 8 and record.throughput.batch_size == 8
    assert record.throughput.generated_tokens == 8 * 4
    assert record.peak_rss_bytes and record.peak_rss_bytes > 0
    assert record.worker.backend == "fake" and record.warmup == 1
    assert Store(str(store)).profile("profiled") == record
    assert json.loads((store / "runs/profiled/profile.json").read_text())["schema"] == (
        "tandem.profile"
    )
    # Once the run exists, its view carries the profile.
    from fastapi.testclient import TestClient

    from cpu_scorer.api import create_app
    from gpu_worker.job import run_generation
    from shared.spec import load_spec

    run_generation(
        load_spec(spec).model_copy(update={"limit": {"ifeval": 4}}),
        str(store),
        local=True,
        data_dir=str(REPO.parent / "shared" / "data"),
        progress=False,
    )
    with TestClient(create_app(str(store))) as client:
        served = client.get("/runs/profiled").json()["profile"]
    assert served == record.as_json()
