"""Scheduling figures: shards per second through Ray on a local multi-node cluster vs
``tandem generate --local``, with the fake backend (no model), so the docs can say when
Ray pays off.

A head (no GPU slot) and ``--nodes`` worker nodes with one ``gpu_slot`` each run on
127.0.0.1 (``gpu_worker.ray_local.local_ray_cluster``); the job asks for ``gpu_slot``
instead of a GPU (``--ray-resource``), so one actor per node. Each setting runs the same
spec twice: ``tandem generate --local`` (one process, one backend) and ``ray job submit
-- tandem generate --ray-resource gpu_slot``. The fake backend sleeps
``seconds_per_request`` per request, which stands for a GPU's time per request and uses
no CPU here, so the ratio shows scheduling gain and overhead, not this machine's cores.
Cluster start-up is not counted (a cluster is standing infrastructure); each job's own
start (driver, actors) is.

    .venv/bin/python bench/ray_bench.py [--nodes 2] [--shards 24] [--json out.json]

Part A's scoring comparison adds itself to SECTIONS (same cluster, same output).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

SPEC = """\
run_id = "{run_id}"
backend = "fake"
tasks = ["ifeval"]
limit = {{ ifeval = {samples} }}
shard_size = {shard_size}
data_dir = "{data}"
engine_kwargs = {{ seconds_per_request = {seconds} }}
[generation]
max_new_tokens = 8
"""


def _tandem(*args: str) -> list[str]:
    return [sys.executable, "-m", "tandem", *args]


def _write_spec(root: Path, run_id: str, shards: int, shard_size: int, seconds: float) -> Path:
    path = root / f"{run_id}.toml"
    path.write_text(
        SPEC.format(
            run_id=run_id,
            samples=shards * shard_size,
            shard_size=shard_size,
            data=DATA_DIR,
            seconds=seconds,
        )
    )
    return path


def _timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(
            f"failed: {' '.join(command)}\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return seconds


def _job_seconds(store: Path, run_id: str) -> float:
    """Seconds from the Ray job's actors starting to its last shard (its record)."""
    from datetime import datetime

    from shared.store import Store

    (record,) = Store(store).jobs(run_id)
    start = datetime.fromisoformat(record.started_at.replace("Z", "+00:00"))
    end = datetime.fromisoformat(record.finished_at.replace("Z", "+00:00"))
    return (end - start).total_seconds()


def bench_generation(cluster: Any, args: argparse.Namespace, root: Path) -> list[dict]:
    """Shards/s through Ray (one actor per gpu_slot node) vs --local, per setting."""
    from gpu_worker.ray_local import ray_env, submit_command

    env = {**ray_env(), "PYTHONPATH": str(REPO)}
    rows = []
    for seconds in args.seconds:
        label = f"{seconds:g}s"
        local_spec = _write_spec(root, f"local-{label}", args.shards, args.shard_size, seconds)
        ray_spec = _write_spec(root, f"ray-{label}", args.shards, args.shard_size, seconds)
        local = _timed(
            _tandem(
                "generate", str(local_spec), "--store", str(root / "store"), "--local", "--quiet"
            ),
            env,
        )
        entry = _tandem(
            "generate",
            str(ray_spec),
            "--store",
            str(root / "store"),
            "--ray-resource",
            "gpu_slot",
            "--quiet",
        )
        ray = _timed(submit_command(cluster, entry), env)
        in_job = _job_seconds(root / "store", f"ray-{label}")
        row = {
            "seconds_per_request": seconds,
            "shards": args.shards,
            "shard_size": args.shard_size,
            "nodes": args.nodes,
            "local_seconds": round(local, 2),
            "ray_seconds": round(ray, 2),
            "ray_job_seconds": round(in_job, 2),
            "local_shards_per_s": round(args.shards / local, 3),
            "ray_shards_per_s": round(args.shards / ray, 3),
            "ray_over_local": round(local / ray, 2),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        }
        print(
            f"{seconds:>5g} s/request: local {row['local_shards_per_s']:.2f} shards/s "
            f"({local:.1f} s), ray {row['ray_shards_per_s']:.2f} shards/s ({ray:.1f} s, "
            f"{in_job:.1f} s inside the job) -> ray/local {row['ray_over_local']:.2f}x; "
            f"load {row['loadavg']}",
            flush=True,
        )
        rows.append(row)
    return rows


# name -> function(cluster, args, scratch folder) -> rows. Part A adds "score".
SECTIONS: dict[str, Callable[[Any, argparse.Namespace, Path], list[dict]]] = {
    "generate": bench_generation,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2, help="worker nodes (one gpu_slot each)")
    parser.add_argument("--shards", type=int, default=24)
    parser.add_argument("--shard-size", type=int, default=2)
    parser.add_argument(
        "--seconds",
        type=float,
        nargs="+",
        default=[0.0, 0.25, 1.0],
        help="fake seconds per request (0: pure overhead)",
    )
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    if not (DATA_DIR / "ifeval").is_dir():
        raise SystemExit(f"task data not found at {DATA_DIR}")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from gpu_worker.ray_local import local_ray_cluster

    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="tandem-ray-bench-") as scratch:
        started = time.perf_counter()
        with local_ray_cluster([{"gpu_slot": 1}] * args.nodes) as cluster:
            print(
                f"cluster: head + {args.nodes} worker node(s) up in "
                f"{time.perf_counter() - started:.0f} s; {os.cpu_count()} CPU(s) here",
                flush=True,
            )
            for name in args.only or list(SECTIONS):
                results[name] = SECTIONS[name](cluster, args, Path(scratch))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
