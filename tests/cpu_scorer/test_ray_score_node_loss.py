"""``tandem score --ray`` survives the loss of a CPU node mid-job: Ray runs the lost
node's tasks again, and the store ends with exactly one score shard per generation
shard, byte for byte the daemon's, and complete summaries.

A head that runs no tasks and two worker nodes of one CPU each, on 127.0.0.1 with a
temp dir of their own (``gpu_worker.ray_local.local_ray_cluster``). Scoring is slowed by
the test hook ``TANDEM_TEST_SHARD_DELAY`` so the job is still running when one worker
node's raylet is SIGKILLed (a machine lost). Every process is stopped and the temp dir
removed at the end.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import child_env, fresh_copy, generate, tandem, tree_bytes

from cpu_scorer.scoring import score_store
from shared.store import Store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SHARDS = 48  # 24 IFEval + 24 tinyMMLU shards of 4


def _scored(root: Path) -> int:
    return len(list(root.glob("runs/*/scores/*/*.parquet")))


def test_a_lost_cpu_node_is_recovered_without_duplicate_or_missing_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ray")
    # A node waits 30 s for its raylet to register by default: too short on a loaded
    # 2-core machine while the head and the other node start.
    monkeypatch.setenv("RAY_raylet_start_wait_time_s", "120")
    from ray.util.state import list_tasks

    from gpu_worker.ray_local import local_ray_cluster, processes_naming

    base = tmp_path / "base"
    generate(str(base), "node-loss", limit={"ifeval": 96, "tinymmlu": 96})
    assert len(list(base.glob("runs/*/generations/*/*.parquet"))) == SHARDS
    reference = fresh_copy(base, tmp_path / "reference")
    score_store(Store(str(reference)), progress=False)
    store = fresh_copy(base, tmp_path / "store")

    env = child_env()
    # Each task (2 shards) takes ~6 s, and the node is killed only within 3.5 s of a
    # task's start on it: the task is then still running when the raylet dies, and its
    # worker (which notices its raylet gone within about a second) dies before finishing
    # it. A task that finished in that second would be a clean finish, not a loss (CI
    # once saw the kill land in a task's last second: no failed attempt to check). The
    # window is wider than the state API's lag in showing a task running (~1 s, more
    # on a loaded machine), so some task on the victim is seen inside it.
    env["TANDEM_TEST_SHARD_DELAY"] = "3.0"
    log = tmp_path / "job.log"
    with local_ray_cluster([{}, {}], head_num_cpus=0) as cluster:
        temp_dir = Path(cluster.temp_dir)
        pgids = [n.process.pid for n in cluster.nodes]
        args = ["score", "--ray", "--address", cluster.gcs_address, "--store", str(store)]
        with log.open("wb") as out:
            job = subprocess.Popen(
                tandem(*args, "--quiet", "--shards-per-task", "2"),
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            # Kill worker-1 while one of the job's tasks runs there, the job well under way.
            victim = cluster.node("worker-1")
            deadline = time.monotonic() + 180
            while job.poll() is None and time.monotonic() < deadline:
                if _scored(store) >= 8 and _just_started_on(cluster.dashboard_url, victim.node_id):
                    break
                time.sleep(0.1)
            assert job.poll() is None, log.read_text()[-3000:]
            killed_at = _scored(store)
            victim.kill_raylet()
            returncode = job.wait(timeout=300)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
        output = log.read_text()
        assert returncode == 0, output[-3000:]
        assert killed_at < SHARDS, "the job ended before the node was lost"
        assert victim.node_id not in cluster.alive_node_ids()
        # The task running on the lost node failed with it, and Ray ran it again elsewhere.
        tasks = [
            t
            for t in list_tasks(address=cluster.dashboard_url, detail=True, limit=10_000)
            if "score_batch" in (t.name or "")
        ]
        lost = [t for t in tasks if t.state == "FAILED"]
        attempts = [
            (t.task_id[-8:], t.attempt_number, t.state, t.error_type, t.node_id[-8:]) for t in tasks
        ]
        assert lost and {t.error_type for t in lost} == {"NODE_DIED"}, (victim.node_id, attempts)
        assert {t.node_id for t in lost} == {victim.node_id}
        retried = {t.task_id for t in tasks if t.attempt_number >= 1 and t.state == "FINISHED"}
        assert {t.task_id for t in lost} <= retried

    # Exactly one score shard per generation shard, each the daemon's bytes, and the
    # summary the daemon writes; nothing half-written is visible, no lease is left.
    assert tree_bytes(store, "scores") == tree_bytes(reference, "scores")
    assert _scored(store) == SHARDS
    assert not list(store.glob("runs/*/claims/*/*.json"))
    # Every shard was done on the cluster: the closing pass scored none.
    assert "after the job" not in output
    match = re.search(r"run node-loss: scored (\d+) shard\(s\)[^\n]*\n", output)
    assert match, output[-3000:]
    # Counted from the store: a task Ray reran after the loss, which reports "skipped"
    # for the shards its first attempt scored, does not lower the count.
    assert int(match.group(1)) == SHARDS

    # Every process stopped, Ray's temp dir removed.
    assert not temp_dir.exists()
    for pgid in pgids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
    assert processes_naming(str(temp_dir)) == []


def _just_started_on(dashboard_url: str, node_id: str, within_s: float = 3.5) -> bool:
    """Whether a scoring task of the job started running on that node in the last
    ``within_s`` seconds (Ray's state API; the cluster runs on this machine, so its
    clock is ours)."""
    from ray.util.state import list_tasks

    running = list_tasks(
        address=dashboard_url, filters=[("state", "=", "RUNNING")], detail=True, limit=1000
    )
    now_ms = time.time() * 1000
    return any(
        "score_batch" in (t.name or "")
        and t.node_id == node_id
        and t.start_time_ms is not None
        and now_ms - t.start_time_ms < within_s * 1000
        for t in running
    )
