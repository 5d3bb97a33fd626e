"""CLI start-up: ``tandem --help`` and ``tandem runs``, whole processes, against a bare
interpreter measured in the same run.

    .venv/bin/python bench/cli_bench.py [--repeat 10] [--repo DIR]

Each command runs ``--repeat`` times as a fresh ``python -m tandem ...`` process (the sides
alternate, so other work on a shared machine hits all of them alike) and the fastest run
counts. ``python -c pass`` is the floor: no command can start faster than the interpreter.
``tandem runs`` lists a copy of the golden store (``tests/golden/store-v1``). ``--repo``
times another checkout's code (e.g. an older commit exported with ``git archive``).

Goal: ``tandem --help`` under 0.15 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELP_GOAL = 0.15


def best_of(command: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10, help="runs per command (best counts)")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose CLI to time")
    args = parser.parse_args()
    repo = args.repo.resolve()
    env = {**os.environ, "PYTHONPATH": str(repo)}
    with tempfile.TemporaryDirectory(prefix="cli-bench-") as tmp:
        store = Path(tmp) / "store"
        shutil.copytree(REPO / "tests" / "golden" / "store-v1", store)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "tandem --help": [sys.executable, "-m", "tandem", "--help"],
            "tandem ifeval --help": [sys.executable, "-m", "tandem", "ifeval", "--help"],
            "tandem runs": [sys.executable, "-m", "tandem", "runs", "--store", str(store)],
        }
        best = dict.fromkeys(commands, float("inf"))
        loads = []
        for _ in range(args.repeat):
            loads.append(os.getloadavg()[0])
            for name, command in commands.items():
                best[name] = min(best[name], best_of(command, env, Path(tmp)))
    floor = best["python -c pass"]
    print(
        f"CLI start-up ({repo}): best of {args.repeat} fresh processes each, "
        f"{os.cpu_count()} cores, load average {min(loads):.1f}-{max(loads):.1f}"
    )
    for name, seconds in best.items():
        print(f"  {name:22} {seconds:6.3f} s  ({seconds / floor:4.1f}x the bare interpreter)")
    seconds = best["tandem --help"]
    met = seconds < HELP_GOAL
    print(f"tandem --help: {seconds:.3f} s (goal < {HELP_GOAL} s: {'met' if met else 'NOT met'})")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
