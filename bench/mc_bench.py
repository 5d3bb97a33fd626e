"""Multiple-choice speed: tandem's hf backend against lm-eval's HF backend, one run.

    .venv/bin/python bench/mc_bench.py [--items 200] [--batch-size 64] [--data DIR]

Scores the first ``--items`` ARC-Easy test items (``../shared/data/mc/arc_easy``) with
the embedded SmolLM2-135M-Instruct in fp32 on CPU, twice: with tandem (the hf backend's
``loglikelihood``, one call per 32-sample shard as the job makes them by default
(``--shard``), then
``cpu_scorer.multiple_choice``) and with lm-evaluation-harness 0.4.13 (``HFLM`` +
``simple_evaluate`` on a local copy of its ``arc_easy`` task definition that reads the
same JSONL, so no hub is needed). It checks that both give the same acc and acc_norm
(item by item), and prints items/s for both and the ratio. Exits 1 if they disagree.

The reference runs in its own environment, ``.venv-mcbench`` at the repository root,
made on first use with pip from the configured package index: torch 2.13.0 (CPU),
then lm-eval 0.4.13 with torch held at that version. Both sides run in fresh
processes with the same number of torch threads and the same batch size; each loads
the model and runs one warm-up forward before its timer starts, and the timer stops
when per-item metrics exist. The sides alternate ``--repeat`` times and the fastest
run of each counts. CPU seconds are printed too: other work on a shared machine moves
wall time more than CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data"
BENCH_VENV = REPO / ".venv-mcbench"
LM_EVAL = "lm-eval[hf]==0.4.13"  # [hf]: transformers, accelerate, peft
SHARD = 32  # samples per loglikelihood call on the tandem side: the spec's default shard_size

# lm-eval's arc_easy.yaml, pointed at the local test file (placeholders filled below).
TASK_YAML = """\
task: arc_easy_local
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _warm_up(model) -> None:
    import torch

    with torch.inference_mode():
        model(input_ids=torch.tensor([[1, 2, 3, 4]]))


# --- the two sides, each in its own process ------------------------------------------


def run_tandem(items: int, batch_size: int, data: Path, shard: int) -> dict:
    sys.path.insert(0, str(REPO))
    from cpu_scorer.multiple_choice import score_row
    from gpu_worker.backends import LoglikelihoodRequest, create_backend
    from shared.spec import RunSpec
    from shared.tasks import TASKS, load_samples

    spec = RunSpec(
        tasks=("arc_easy",),
        precision="fp32",
        device="cpu",
        generation={"batch_size": batch_size},
    )
    backend = create_backend(spec)
    _warm_up(backend.model)
    started, cpu = time.perf_counter(), _cpu_seconds()
    samples = load_samples(TASKS["arc_easy"], data, items)
    rows = []
    for first in range(0, len(samples), shard):
        chunk = samples[first : first + shard]
        requests = [
            LoglikelihoodRequest(sample.prompt, choice)
            for sample in chunk
            for choice in sample.choices
        ]
        results = iter(backend.loglikelihood(requests))
        for sample in chunk:
            logprobs = [next(results).logprob for _ in sample.choices]
            rows.append(score_row(logprobs, sample.doc["choice_texts"], sample.gold))
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    return {
        "side": "tandem",
        "items": len(rows),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "acc": [row["metrics"]["acc"] for row in rows],
        "acc_norm": [row["metrics"]["acc_norm"] for row in rows],
        "threads": backend.info()["torch_threads"],
    }


def run_lm_eval(items: int, batch_size: int, data: Path, model_dir: str, threads: int) -> dict:
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(threads)
    path = (data / "mc" / "arc_easy" / "ARC-Easy-test.jsonl").resolve()
    with tempfile.TemporaryDirectory() as tasks_dir:
        Path(tasks_dir, "arc_easy_local.yaml").write_text(
            TASK_YAML.format(path=json.dumps(str(path)))
        )
        lm = HFLM(pretrained=model_dir, dtype="float32", device="cpu", batch_size=batch_size)
        _warm_up(lm.model)
        manager = TaskManager(include_path=tasks_dir)
        started, cpu = time.perf_counter(), _cpu_seconds()
        results = simple_evaluate(
            model=lm,
            tasks=["arc_easy_local"],
            limit=items,
            task_manager=manager,
            log_samples=True,
            bootstrap_iters=0,
            verbosity="WARNING",
        )
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    samples = sorted(results["samples"]["arc_easy_local"], key=lambda s: s["doc_id"])
    return {
        "side": "lm-eval",
        "items": len(samples),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "acc": [float(s["acc"]) for s in samples],
        "acc_norm": [float(s["acc_norm"]) for s in samples],
        "threads": torch.get_num_threads(),
    }


# --- driver ---------------------------------------------------------------------------


def _side(command: list[str], env: dict[str, str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{command[0]} {' '.join(command[2:4])} failed ({done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--shard", type=int, default=SHARD, help="samples per tandem loglikelihood call"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per side; the best counts")
    parser.add_argument("--side", choices=["tandem", "lm-eval"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side == "tandem":
        print(json.dumps(run_tandem(args.items, args.batch_size, args.data, args.shard)))
        return 0
    if args.side == "lm-eval":
        result = run_lm_eval(args.items, args.batch_size, args.data, args.model_dir, args.threads)
        print(json.dumps(result))
        return 0

    if not (args.data / "mc" / "arc_easy").is_dir():
        raise SystemExit(f"no ARC-Easy data under {args.data / 'mc'}; pass --data")
    sys.path.insert(0, str(REPO))
    from gpu_worker.batching import available_cores
    from gpu_worker.models import embedded_model_dir

    threads = args.threads or available_cores()
    model_dir = str(embedded_model_dir())  # dequantized once, cached; both sides load it
    env = {
        **os.environ,
        "TANDEM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    common = ["--items", str(args.items), "--batch-size", str(args.batch_size)]
    common += ["--data", str(args.data), "--threads", str(threads)]
    script = str(Path(__file__).resolve())
    import _venv  # beside this script; here, so importing the module needs no path

    reference_python = str(
        _venv.reference_python(
            BENCH_VENV,
            "import lm_eval.models.huggingface",
            [_venv.TORCH],
            [LM_EVAL, _venv.same_transformers()],
        )
    )
    tandem_command = [sys.executable, script, "--side", "tandem", "--shard", str(args.shard)]
    tandem_command += common
    reference_command = [reference_python, script, "--side", "lm-eval", "--model-dir", model_dir]
    tandem = reference = None
    # Sides alternate; the fastest run of each counts (other work can only slow one down).
    for _ in range(args.repeat):
        run = _side(tandem_command, env)
        tandem = run if tandem is None or run["seconds"] < tandem["seconds"] else tandem
        run = _side([*reference_command, *common], env)
        reference = run if reference is None or run["seconds"] < reference["seconds"] else reference
    assert tandem is not None and reference is not None

    print(
        f"ARC-Easy test, first {args.items} items, SmolLM2-135M-Instruct fp32 CPU, "
        f"{threads} torch threads, batch size {args.batch_size}, tandem shards of "
        f"{args.shard}, best of {args.repeat}, load average {os.getloadavg()[0]:.1f}"
    )
    for side in (tandem, reference):
        n = side["items"]
        print(
            f"  {side['side']:8s} {n / side['seconds']:7.2f} items/s  "
            f"({side['seconds']:.1f} s wall, {side['cpu_seconds']:.1f} s CPU)  "
            f"acc {sum(side['acc']) / n:.4f}  acc_norm {sum(side['acc_norm']) / n:.4f}"
        )
    ratio = (tandem["items"] / tandem["seconds"]) / (reference["items"] / reference["seconds"])
    cpu_ratio = reference["cpu_seconds"] / tandem["cpu_seconds"]
    print(f"  speed-up {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU time (goal >= 1.5x)")

    mismatched = [
        (i, metric)
        for metric in ("acc", "acc_norm")
        for i, (a, b) in enumerate(zip(tandem[metric], reference[metric], strict=True))
        if a != b
    ]
    if tandem["items"] != reference["items"] or mismatched:
        print(f"  MISMATCH: items differ on {mismatched[:20]}")
        return 1
    print("  per-item acc and acc_norm: identical")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
