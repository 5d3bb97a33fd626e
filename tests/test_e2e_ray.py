"""End to end through a real Ray head on 127.0.0.1: ray job submit -> shards -> scores."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from shared.store import Store

pytestmark = pytest.mark.slow

SPEC = """\
run_id = "e2e-ray"
tasks = ["ifeval", "tinymmlu"]
limit = {{ ifeval = 3, tinymmlu = 4 }}
shard_size = 2
data_dir = "{data}"
[generation]
max_new_tokens = 12
"""


def test_ray_job_submit_generates_and_the_scorer_scores(tmp_path, data_dir, ray_head):
    from gpu_worker.ray_local import submit_job

    spec = tmp_path / "run.toml"
    spec.write_text(SPEC.format(data=data_dir))
    store_dir = tmp_path / "store"
    tandem = str(Path(sys.executable).with_name("tandem"))
    code = submit_job(ray_head, [tandem, "generate", str(spec), "--store", str(store_dir)])
    assert code == 0

    store = Store(store_dir)
    assert [r.name for r in store.list_shards("e2e-ray", "generations", "ifeval")] == [
        "0000000-0000002",
        "0000002-0000003",
    ]
    assert len(store.list_shards("e2e-ray", "generations", "tinymmlu")) == 2
    rows = store.read_table(
        store.shard_path("generations", store.list_shards("e2e-ray", "generations", "ifeval")[0])
    ).to_pylist()
    assert all(r["response"] and r["generated_tokens"] > 0 for r in rows)
    assert all(r["rendered_prompt"].startswith("<|im_start|>") for r in rows)

    from cpu_scorer.scoring import score_store

    counts = score_store(store, "e2e-ray", progress=False)
    assert counts == {"e2e-ray": {"scored": 4, "quarantined": 0}}
    summary = json.loads((store_dir / "runs/e2e-ray/summary.json").read_text())
    ifeval = summary["tasks"]["ifeval"]
    assert ifeval["samples_scored"] == 3 and ifeval["complete"]
    assert 0.0 <= ifeval["metrics"]["prompt_level_strict_acc"] <= 1.0
    assert ifeval["telemetry"]["tokens_per_second"] > 0
    mmlu = summary["tasks"]["tinymmlu"]
    assert mmlu["samples_scored"] == 4 and "acc" in mmlu["metrics"]

    # A second submit finds every shard done and generates nothing.
    assert submit_job(ray_head, [tandem, "generate", str(spec), "--store", str(store_dir)]) == 0
    assert len(store.list_shards("e2e-ray", "generations", "ifeval")) == 2


# A driver as `tandem demo` is: a private head, a job submitted and tailed through it.
INTERRUPTED_DRIVER = """\
import sys
from gpu_worker.ray_local import local_ray_head, submit_job

with local_ray_head() as head:
    print("TEMP", head.temp_dir, flush=True)
    submit_job(head, [sys.executable, "-c", {job!r}])
"""
# The job: writes its pid, then runs for ten minutes.
LONG_JOB = "import os, time; open({pid!r}, 'w').write(str(os.getpid())); time.sleep(600)"


def test_ctrl_c_stops_the_submitted_job_and_the_head(tmp_path):
    """Ctrl-C while a job is tailed: the job is stopped (its driver runs in a session of
    its own, so stopping the head alone would leave it running) and the head with it;
    nothing of either is left."""
    import os
    import signal
    import subprocess
    import time

    from gpu_worker.ray_local import processes_naming

    pytest.importorskip("ray")
    pid_file = tmp_path / "job.pid"
    script = tmp_path / "driver.py"
    script.write_text(INTERRUPTED_DRIVER.format(job=LONG_JOB.format(pid=str(pid_file))))
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    log = tmp_path / "driver.log"
    with log.open("wb") as out:
        driver = subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C signals the whole group
        )
    try:
        deadline = time.monotonic() + 180
        job_pid = 0
        while not job_pid and driver.poll() is None and time.monotonic() < deadline:
            text = pid_file.read_text() if pid_file.exists() else ""
            job_pid = int(text) if text.strip().isdigit() else 0
            time.sleep(0.2)
        assert job_pid, log.read_text()[-3000:]
        os.killpg(driver.pid, signal.SIGINT)
        returncode = driver.wait(timeout=120)  # a hang guard, not a timing check
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    output = log.read_text()
    assert returncode != 0 and "KeyboardInterrupt" in output, output[-3000:]
    assert "stopping Ray job tandem-" in output and " failed (exit " not in output, output[-3000:]
    temp_dir = next(line.split()[1] for line in output.splitlines() if line.startswith("TEMP "))
    assert not Path(temp_dir).exists()
    # The job was stopped before the driver returned; a Ray process that outlived its
    # group (a worker noticing its raylet gone) gets a few seconds to go.
    assert not _alive(job_pid)
    deadline = time.monotonic() + 15
    while processes_naming(temp_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_naming(temp_dir) == []


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
