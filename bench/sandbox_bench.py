"""Sandboxed code execution: the 164 HumanEval canonical solutions, timed.

    .venv/bin/python bench/sandbox_bench.py [--workers N] [--repeat 3] [--data FILE]

Builds each program as lm-eval / HF code_eval do (prompt + canonical solution + test +
``check(entry_point)``), runs them all with ``cpu_scorer.sandbox.run_many`` at the default
limits, and prints the isolation found, how many passed, the wall time of the whole batch
(best of ``--repeat``: other work on a shared machine only ever makes a run slower), the
programs per second, and the median time of one program. Exits 1 unless all pass.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cpu_scorer.sandbox import detect_isolation, run_many  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "humaneval" / "HumanEval.jsonl"


def humaneval_programs(path: Path) -> list[str]:
    """One program per problem, built exactly as lm-eval's humaneval task builds it."""
    programs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        programs.append(
            doc["prompt"]
            + doc["canonical_solution"]
            + "\n"
            + doc["test"]
            + "\n"
            + f"check({doc['entry_point']})\n"
        )
    return programs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="default: the usable cores")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()

    programs = humaneval_programs(args.data)
    start = time.monotonic()
    isolation = detect_isolation()
    print(f"isolation ({time.monotonic() - start:.2f} s to detect): {isolation.describe()}")

    best = None
    for attempt in range(args.repeat):
        start = time.monotonic()
        outcomes = run_many(programs, workers=args.workers, isolation=isolation)
        wall = time.monotonic() - start
        passed = sum(o.status == "passed" for o in outcomes)
        median = statistics.median(o.seconds for o in outcomes)
        print(
            f"run {attempt + 1}: {passed}/{len(programs)} passed in {wall:.2f} s "
            f"({len(programs) / wall:.1f} programs/s, median {median * 1000:.0f} ms a program)"
        )
        for index, outcome in enumerate(outcomes):
            if outcome.status != "passed":
                print(f"  HumanEval/{index}: {outcome.status}: {outcome.message}")
        best = wall if best is None else min(best, wall)
        if passed != len(programs):
            return 1
    print(f"best wall time: {best:.2f} s for {len(programs)} programs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
