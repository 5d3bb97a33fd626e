"""Generation over a three-node Ray cluster on 127.0.0.1 survives the loss of a node.

A head (no GPU slot) and two worker nodes with one ``gpu_slot`` each stand in for two
GPU machines; ``tandem generate --ray-resource gpu_slot`` puts one actor on each. The
fake backend sleeps per request so shards last long enough to kill one node's raylet
(SIGKILL, as a lost machine) mid-job. Its shard is retried on the other node; the run
ends with exactly one row per sample, and the job's record says what was retried.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.store import Store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed"),
]

SAMPLES, SHARD_SIZE = 16, 2
SPEC = """\
run_id = "multinode"
backend = "fake"
tasks = ["ifeval"]
limit = {{ ifeval = {samples} }}
shard_size = {shard_size}
data_dir = "{data}"
engine_kwargs = {{ seconds_per_request = 1.0 }}
[generation]
max_new_tokens = 8
"""


def _published(store: Store) -> int:
    return len(store.list_shards("multinode", "generations", "ifeval"))


def test_losing_a_node_mid_job_retries_its_shard_on_the_other(tmp_path, data_dir):
    from gpu_worker.ray_local import local_ray_cluster, ray_env, submit_command

    spec = tmp_path / "run.toml"
    spec.write_text(SPEC.format(samples=SAMPLES, shard_size=SHARD_SIZE, data=data_dir))
    store_dir = tmp_path / "store"
    store = Store(store_dir)
    entrypoint = [
        sys.executable,
        "-m",
        "tandem",
        "generate",
        str(spec),
        "--store",
        str(store_dir),
        "--ray-resource",
        "gpu_slot",
        "--quiet",
    ]
    log = (tmp_path / "job.log").open("wb")
    with local_ray_cluster([{"gpu_slot": 1}, {"gpu_slot": 1}]) as cluster:
        temp_dir = Path(cluster.temp_dir)
        victim, survivor = cluster.nodes
        job = subprocess.Popen(
            submit_command(cluster, entrypoint),
            env=ray_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            # Both actors have been working for a while: kill one node with shards left.
            deadline = time.monotonic() + 120
            while _published(store) < 3 and job.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
            assert _published(store) < SAMPLES // SHARD_SIZE
            victim.kill_raylet()
            code = job.wait(timeout=240)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
            log.close()
        output = (tmp_path / "job.log").read_text(errors="replace")
        assert code == 0, output[-4000:]
        # The GCS marks the node dead after its health checks fail (seconds).
        deadline = time.monotonic() + 90
        while victim.node_id in cluster.alive_node_ids() and time.monotonic() < deadline:
            time.sleep(1)
        assert victim.node_id not in cluster.alive_node_ids()
    # Every process stopped, Ray's temp dir removed.
    assert not temp_dir.exists()
    for node in (victim, survivor):
        assert node.process.poll() is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(node.process.pid, 0)

    # Exactly one row per sample across all shards.
    shards = store.list_shards("multinode", "generations", "ifeval")
    assert [(s.start, s.end) for s in shards] == [
        (start, start + SHARD_SIZE) for start in range(0, SAMPLES, SHARD_SIZE)
    ]
    ids = []
    for ref in shards:
        ids += (
            store.read_table(store.shard_path("generations", ref), ["sample_id"])
            .column("sample_id")
            .to_pylist()
        )
    assert len(ids) == SAMPLES and len(set(ids)) == SAMPLES

    # The job's record: where each shard ran, and what was retried, why, and where.
    (record,) = store.jobs("multinode")
    print(record.model_dump_json(indent=1))
    assert record.status == "done" and record.placement["resources"] == {"gpu_slot": 1}
    assert sorted(s.shard for s in record.shards) == [s.name for s in shards]
    ran_on = {s.node_id for s in record.shards}
    assert ran_on == {victim.node_id, survivor.node_id}  # generation spread over both
    assert record.retried, "no shard was retried"
    for shard in record.retried:
        assert shard.node_id == survivor.node_id
        assert shard.attempts == len(shard.failures) + 1
        assert all(f.node_id == victim.node_id for f in shard.failures)
        assert all(
            f.reason in ("node died", "worker died", "worker unavailable") for f in shard.failures
        )
    assert record.actors_started >= 3  # the lost node's actor was replaced
    retried = ", ".join(f"{s.shard} ({s.failures[0].reason})" for s in record.retried)
    print(f"retried: {retried}; rows per sample: 1; job record {record.job_id}")
