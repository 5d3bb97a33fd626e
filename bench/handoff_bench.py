"""Handoff latency: from a generation shard's publish to its scores at /runs/{id}/scores.

Starts a real scorer daemon (``tandem scorer``) and a real results server (``tandem
serve`` on 127.0.0.1) as subprocesses over a fresh local store, then publishes the
generation shards of a fake-backend run one at a time, the way a GPU worker does
(atomic publish), and polls ``GET /runs/{id}/scores`` until the shard is counted as
scored. Reports the latency distribution; the goal is under 2 s.

    .venv/bin/python bench/handoff_bench.py [--shards 20] [--interval 1.0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
GOAL_SECONDS = 2.0


def _stage(root: Path, shards: int) -> tuple[str, list[tuple[str, str, bytes]]]:
    """Generate a fake run in a staging store; return its run id and shard files."""
    sys.path.insert(0, str(REPO))
    from gpu_worker.job import run_generation
    from shared.spec import RunSpec

    per_task = max(1, shards // 2) * 4
    spec = RunSpec(
        run_id="handoff",
        backend="fake",
        tasks=("ifeval", "tinymmlu"),
        limit={"ifeval": per_task, "tinymmlu": per_task},
        shard_size=4,
        data_dir=str(DATA_DIR),
    )
    run_generation(spec, str(root), local=True, progress=False)
    files = []
    for path in sorted((root / "runs/handoff/generations").glob("*/*.parquet")):
        files.append((path.parent.name, path.name, path.read_bytes()))
    return "handoff", files


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tandem", *args],
        cwd=REPO,
        env=env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
    )  # noqa: SIM115


def _scored(client: httpx.Client, run_id: str, task: str) -> int:
    response = client.get(f"/runs/{run_id}/scores")
    if response.status_code != 200:
        return -1
    return response.json()["tasks"].get(task, {}).get("shards", {}).get("scored", 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=20, help="shards to publish")
    parser.add_argument("--interval", type=float, default=1.0, help="daemon poll interval")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="handoff-") as tmp:
        tmp_path = Path(tmp)
        run_id, files = _stage(tmp_path / "staging", args.shards)
        files = files[: args.shards]
        store = tmp_path / "store"
        (store / "runs" / run_id).mkdir(parents=True)
        (store / "runs" / run_id / "run.json").write_bytes(
            (tmp_path / "staging/runs" / run_id / "run.json").read_bytes()
        )
        port = _free_port()
        daemon = _spawn(
            ["scorer", "--store", str(store), "--interval", str(args.interval)],
            tmp_path / "daemon.log",
        )
        server = _spawn(
            ["serve", "--store", str(store), "--port", str(port)], tmp_path / "serve.log"
        )
        latencies: list[float] = []
        try:
            from shared.store import Store

            target = Store(str(store))
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.1)
                time.sleep(args.interval * 1.5)  # let the daemon write the first summary
                done: dict[str, int] = {}
                for task, name, data in files:
                    # Publish at a random phase of the daemon's poll cycle.
                    time.sleep(rng.uniform(0, args.interval))
                    started = time.perf_counter()
                    target.publish_bytes(target.run_path(run_id, "generations", task, name), data)
                    done[task] = done.get(task, 0) + 1
                    while _scored(client, run_id, task) < done[task]:
                        if time.perf_counter() - started > 30:
                            raise TimeoutError(f"{task}/{name} not visible after 30 s")
                        time.sleep(0.005)
                    latencies.append(time.perf_counter() - started)
        finally:
            for proc in (daemon, server):
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
    latencies.sort()
    result = {
        "shards": len(latencies),
        "daemon_interval_s": args.interval,
        "p50_s": round(statistics.median(latencies), 3),
        "p90_s": round(latencies[int(0.9 * (len(latencies) - 1))], 3),
        "max_s": round(latencies[-1], 3),
        "mean_s": round(statistics.fmean(latencies), 3),
        "goal_s": GOAL_SECONDS,
        "meets_goal": latencies[-1] < GOAL_SECONDS,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["meets_goal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
