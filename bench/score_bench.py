"""Scoring a backlog of small shards: one daemon vs three daemons vs a Ray Data job.

One store of ``--shards`` small generation shards (fake backend: IFEval and tinyMMLU, one
sample per shard, in runs of 500 shards), copied three times, then scored to the end:

* **one daemon**: ``tandem score`` (the daemon's run-once mode), the baseline;
* **three daemons**: three ``tandem scorer --once`` racing on one store (leases keep
  them apart);
* **Ray Data**: ``tandem score --ray`` on a local cluster of a head that runs no tasks
  and ``--nodes`` worker nodes of one CPU each, all on 127.0.0.1 (the cluster's start is
  timed apart and not counted).

Every time is the whole command's wall time (start-up, planning, scoring, summaries).
The three stores must end byte for byte the same (exit 1 otherwise). Prints the seconds,
shards/s and the ratio to one daemon, and the load average (the machine is shared).

    .venv/bin/python bench/score_bench.py [--shards 2000] [--nodes 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
PER_RUN = 500  # shards per run: 400 IFEval + 100 tinyMMLU (tinyMMLU has 100 samples)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return env


def _tandem(*args: str) -> list[str]:
    return [sys.executable, "-m", "tandem", *args]


def build_store(root: Path, shards: int) -> int:
    """Fake-backend runs of one sample per shard; returns the number of shards."""
    from gpu_worker.job import run_generation
    from shared.spec import RunSpec

    made, index = 0, 0
    while made < shards:
        want = min(PER_RUN, shards - made)
        mmlu = min(100, want // 5)
        spec = RunSpec(
            run_id=f"bench-{index}",
            backend="fake",
            tasks=("ifeval", "tinymmlu") if mmlu else ("ifeval",),
            limit={"ifeval": want - mmlu, **({"tinymmlu": mmlu} if mmlu else {})},
            shard_size=1,
            data_dir=str(DATA_DIR),
        )
        run_generation(spec, str(root), local=True, progress=False)
        made += want
        index += 1
    return made


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def timed(commands: list[list[str]], env: dict[str, str]) -> tuple[float, list[str]]:
    """Run the commands at once; the wall time until the last ends, and their outputs."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(c, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for c in commands
    ]
    outputs = [p.communicate()[0].decode(errors="replace") for p in procs]
    seconds = time.perf_counter() - started
    for proc, output in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise SystemExit(f"{proc.args} exited {proc.returncode}:\n{output[-3000:]}")
    return seconds, outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=2000, help="generation shards (2000)")
    parser.add_argument("--nodes", type=int, default=2, help="Ray worker nodes, 1 CPU each")
    parser.add_argument("--shards-per-task", type=int, default=8, help="tandem score --ray's")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    from gpu_worker.ray_local import local_ray_cluster

    env = _env()
    work = Path(tempfile.mkdtemp(prefix="score-bench-"))
    try:
        base = work / "base"
        started = time.perf_counter()
        shards = build_store(base, args.shards)
        print(f"store: {shards} shards in {time.perf_counter() - started:.0f} s", flush=True)
        stores = {name: work / name for name in ("one", "three", "ray")}
        for path in stores.values():
            shutil.copytree(base, path)

        results: dict[str, float] = {}
        results["one daemon"], _ = timed(
            [_tandem("score", "--store", str(stores["one"]), "--quiet")], env
        )
        print(f"one daemon: {results['one daemon']:.1f} s", flush=True)
        daemon = ["scorer", "--store", str(stores["three"]), "--once", "--interval", "0.2"]
        results["three daemons"], _ = timed([_tandem(*daemon) for _ in range(3)], env)
        print(f"three daemons: {results['three daemons']:.1f} s", flush=True)

        started = time.perf_counter()
        with local_ray_cluster([{}] * args.nodes, head_num_cpus=0) as cluster:
            cluster_seconds = time.perf_counter() - started
            print(f"ray cluster ({args.nodes} nodes) up in {cluster_seconds:.0f} s", flush=True)
            command = _tandem(
                "score",
                "--ray",
                "--address",
                cluster.gcs_address,
                "--store",
                str(stores["ray"]),
                "--quiet",
                "--shards-per-task",
                str(args.shards_per_task),
            )
            results["ray data"], (output,) = timed([command], env)
        job_line = next((line for line in output.splitlines() if line.startswith("ray: ")), "")
        print(f"ray data: {results['ray data']:.1f} s ({job_line})", flush=True)

        reference = files(stores["one"])
        same = {name: files(path) == reference for name, path in stores.items()}
        load = os.getloadavg()
        base_seconds = results["one daemon"]
        print(f"\n{shards} shards, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"{'scorer':<16}{'seconds':>9}{'shards/s':>10}{'vs one daemon':>15}")
        for name, seconds in results.items():
            ratio = base_seconds / seconds
            print(f"{name:<16}{seconds:>9.1f}{shards / seconds:>10.1f}{ratio:>14.2f}x")
        print(f"identical stores: {all(same.values())} ({same})")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "shards": shards,
                        "nodes": args.nodes,
                        "seconds": results,
                        "ray_cluster_start_seconds": cluster_seconds,
                        "ray_job": job_line,
                        "load_average": load,
                        "identical": same,
                    },
                    indent=2,
                )
            )
        return 0 if all(same.values()) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
