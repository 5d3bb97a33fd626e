"""Few-shot speed: shared blocks computed once. Three measurements, each with its baseline
in the same run:

    .venv/bin/python bench/fewshot_bench.py [--only mmlu,tinymmlu,prefix] [--repeat 1]

* ``mmlu``: MMLU 5-shot, 5 questions of each of the 57 subjects (285 items), whole
  process: ``tandem generate`` + ``tandem score`` against lm-evaluation-harness 0.4.13's
  ``lm_eval --model hf`` CLI (its 57 ``mmlu_<subject>`` task definitions, pointed at the
  same local files), same model (the embedded SmolLM2-135M-Instruct, fp32, CPU), same
  torch threads. Per-item acc must agree. Goal: >= 4x.
* ``tinymmlu``: ``tandem generate`` on tinyMMLU's 100 items, this checkout against the
  code at ``--baseline`` (a git worktree of that commit, run with the same venv).
  Goal: >= 3x.
* ``prefix``: MATH-500 4-shot generation (``--prefix-items`` problems, 64 new tokens)
  through the hf backend in one process, the fixed 4-shot block declared shared
  (prefilled once per batch) against the same requests with nothing declared; greedy
  texts must be identical.

Every side runs in a fresh process (the prefix one excepted: one process, alternating),
after the other, never at the same time; ``--repeat`` alternates them and the fastest
run of each counts, since other work on a shared machine can only slow a run down.
The load average is printed with each result. lm-eval runs in ``.venv-mcbench``
(bench/mc_bench.py makes it on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()
BENCH_VENV = REPO / ".venv-mcbench"
LM_EVAL = "lm-eval[hf]==0.4.13"  # [hf]: transformers, accelerate, peft
BASELINE = "fb998cf"  # main before issue 17's work (the issue's "today")
PER_SUBJECT = 5


def _load() -> str:
    return f"load average {os.getloadavg()[0]:.1f}"


def _env(threads: int) -> dict[str, str]:
    return {
        **os.environ,
        "TANDEM_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(command: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, float]:
    """Wall seconds and CPU seconds (the process and its children, all threads) of one
    command. CPU seconds barely move with other work on a shared machine; wall does."""
    started, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    seconds, cpu = time.perf_counter() - started, _children_cpu() - cpu
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-4000:])
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}")
    return seconds, cpu


def _keep_best(best: dict[str, tuple[float, float]], side: str, got: tuple[float, float]) -> None:
    """The fastest wall time of a side, and apart, its smallest CPU time."""
    wall, cpu = best.get(side, got)
    best[side] = (min(wall, got[0]), min(cpu, got[1]))


# ---- MMLU against lm-eval ------------------------------------------------------------------
def _mmlu_yamls(work: Path, lm_eval_python: str) -> list[str]:
    """lm-eval's own mmlu_<subject>.yaml files, each included and pointed at local
    per-subject JSONL files (lm-eval runs MMLU as 57 tasks)."""
    where = subprocess.run(
        [lm_eval_python, "-c", "import lm_eval, os; print(os.path.dirname(lm_eval.__file__))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    templates = Path(where) / "tasks" / "mmlu" / "default"
    by_subject: dict[str, dict[str, list[str]]] = {}
    for split, name in (("test", "mmlu_test.jsonl"), ("dev", "mmlu_dev.jsonl")):
        with open(DATA / "mmlu" / name, encoding="utf-8") as handle:
            for line in handle:
                subject = json.loads(line)["subject"]
                by_subject.setdefault(subject, {}).setdefault(split, []).append(line)
    tasks = []
    for subject, splits in sorted(by_subject.items()):
        files = {}
        for split, lines in splits.items():
            files[split] = work / f"mmlu_{subject}_{split}.jsonl"
            files[split].write_text("".join(lines), encoding="utf-8")
        (work / f"bench_mmlu_{subject}.yaml").write_text(
            f"include: {json.dumps(str(templates / f'mmlu_{subject}.yaml'))}\n"
            f"task: bench_mmlu_{subject}\ndataset_path: json\ndataset_name: null\n"
            "dataset_kwargs:\n  data_files:\n"
            + "".join(f"    {s}: {json.dumps(str(p))}\n" for s, p in files.items())
        )
        tasks.append(f"bench_mmlu_{subject}")
    return tasks


def _lm_eval_items(out: Path) -> dict[str, float]:
    """sample id (``<subject>/<doc_id>``, as tandem names them) -> acc."""
    items = {}
    for path in out.rglob("samples_bench_mmlu_*.jsonl"):
        subject = path.name[len("samples_bench_mmlu_") :].rsplit("_", 1)[0]
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            items[f"{subject}/{row['doc_id']}"] = float(row["acc"])
    return items


def _tandem_items(store: Path, run_id: str) -> dict[str, float]:
    import pyarrow.parquet as pq

    items = {}
    for path in (store / "runs" / run_id / "scores" / "mmlu").glob("*.parquet"):
        for row in pq.read_table(path, columns=["sample_id", "metrics"]).to_pylist():
            items[row["sample_id"]] = dict(row["metrics"])["acc"]
    return items


def bench_mmlu(threads: int, repeat: int, batch_size: int) -> bool:
    sys.path.insert(0, str(REPO / "bench"))
    import _venv

    from gpu_worker.models import embedded_model_dir

    reference = str(
        _venv.reference_python(
            BENCH_VENV,
            "import lm_eval.models.huggingface",
            [_venv.TORCH],
            [LM_EVAL, _venv.same_transformers()],
        )
    )
    model_dir = str(embedded_model_dir())
    env = _env(threads)
    tandem_bin = str(Path(sys.executable).with_name("tandem"))
    best: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tasks = _mmlu_yamls(work, reference)
        spec = work / "spec.toml"
        spec.write_text(
            f'run_id = "mmlu-bench"\ntasks = ["mmlu"]\nlimit = {{ mmlu = {PER_SUBJECT} }}\n'
            'num_fewshot = { mmlu = 5 }\nprecision = "fp32"\n'
        )
        for turn in range(repeat):
            store = work / f"store{turn}"
            generate = _timed(
                [tandem_bin, "generate", str(spec), "--store", str(store), "--local"]
                + ["--data-dir", str(DATA)],
                env,
            )
            score = _timed([tandem_bin, "score", "--store", str(store)], env)
            _keep_best(best, "tandem", (generate[0] + score[0], generate[1] + score[1]))
            out = work / f"lm{turn}"
            got = _timed(
                [str(Path(reference).with_name("lm_eval")), "--model", "hf"]
                + ["--model_args", f"pretrained={model_dir},dtype=float32"]
                + ["--device", "cpu", "--batch_size", str(batch_size)]
                + ["--tasks", ",".join(tasks), "--include_path", str(work)]
                + ["--num_fewshot", "5", "--limit", str(PER_SUBJECT)]
                + ["--log_samples", "--output_path", str(out)],
                env,
            )
            _keep_best(best, "lm-eval", got)
            print(
                f"  turn {turn + 1}: tandem {best['tandem'][0]:.1f} s, lm-eval "
                f"{best['lm-eval'][0]:.1f} s so far ({_load()})",
                flush=True,
            )
        ours, theirs = _tandem_items(work / "store0", "mmlu-bench"), _lm_eval_items(work / "lm0")
    n = len(ours)
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    (wall, cpu), (their_wall, their_cpu) = best["tandem"], best["lm-eval"]
    print(
        f"MMLU 5-shot, {PER_SUBJECT} per subject ({n} items), whole process, fp32 CPU, "
        f"{threads} threads, best of {repeat}, {_load()}\n"
        f"  tandem generate+score {wall:7.1f} s ({cpu:.1f} CPU s)  "
        f"acc {sum(ours.values()) / n:.4f}\n"
        f"  lm-eval hf (batch {batch_size}) {their_wall:7.1f} s ({their_cpu:.1f} CPU s)  acc "
        f"{sum(theirs.values()) / max(1, len(theirs)):.4f}\n"
        f"  ratio {their_wall / wall:.2f}x wall, {their_cpu / cpu:.2f}x CPU "
        "(goal >= 4x); per-item acc "
        + ("identical" if not differ else f"DIFFERS on {len(differ)}: {differ[:10]}")
    )
    return not differ and n == PER_SUBJECT * 57


# ---- tinyMMLU against the code before ----------------------------------------------------
def bench_tinymmlu(threads: int, repeat: int, baseline: str) -> bool:
    env = _env(threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        old = work / "baseline"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(old), baseline],
            check=True,
        )
        try:
            spec = work / "spec.toml"
            spec.write_text('run_id = "tiny-bench"\ntasks = ["tinymmlu"]\nprecision = "fp32"\n')
            best: dict[str, tuple[float, float]] = {}
            for turn in range(repeat):
                for side, root in (("now", REPO), ("baseline", old)):
                    store = work / f"{side}{turn}"
                    command = [sys.executable, "-m", "tandem", "generate", str(spec)]
                    command += ["--store", str(store), "--local", "--data-dir", str(DATA)]
                    got = _timed(command, {**env, "PYTHONPATH": str(root)}, cwd=root)
                    _keep_best(best, side, got)
                print(
                    f"  turn {turn + 1}: now {best['now'][0]:.1f} s, {baseline} "
                    f"{best['baseline'][0]:.1f} s so far ({_load()})",
                    flush=True,
                )
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)])
    (wall, cpu), (old_wall, old_cpu) = best["now"], best["baseline"]
    print(
        f"tinyMMLU 100 items, tandem generate (whole process), fp32 CPU, {threads} threads, "
        f"best of {repeat}, {_load()}\n"
        f"  this checkout {wall:7.1f} s ({cpu:.1f} CPU s)\n"
        f"  at {baseline:13s} {old_wall:7.1f} s ({old_cpu:.1f} CPU s)\n"
        f"  ratio {old_wall / wall:.2f}x wall, {old_cpu / cpu:.2f}x CPU (goal >= 3x)"
    )
    return True


# ---- generation with a declared block ------------------------------------------------------
def bench_prefix(items: int, repeat: int) -> bool:
    from dataclasses import replace

    from gpu_worker.backends import create_backend
    from gpu_worker.backends.base import GenerationRequest
    from shared.spec import RunSpec
    from shared.tasks import TASKS, load_samples

    backend = create_backend(RunSpec(tasks=("math500",), precision="fp32", device="cpu"))
    samples = load_samples(TASKS["math500"], DATA, items, num_fewshot=4)
    shared = [GenerationRequest(s.prompt, 64, ("Problem:",), s.shared_prefix) for s in samples]
    plain = [replace(r, prefix="") for r in shared]
    backend.generate(plain[:2])  # warm-up
    best: dict[str, float] = {}
    texts: dict[str, list[str]] = {}
    for _ in range(repeat):
        for side, requests in (("shared", shared), ("plain", plain)):
            started = time.perf_counter()
            results = backend.generate(requests)
            seconds = time.perf_counter() - started
            best[side] = min(best.get(side, seconds), seconds)
            texts[side] = [r.text for r in results]
    same = texts["shared"] == texts["plain"]
    block = len(backend.encode(samples[0].shared_prefix))
    prompt = sum(len(backend.encode(s.prompt)) for s in samples) / len(samples)
    print(
        f"MATH-500 4-shot generation, {items} problems (block {block} of ~{prompt:.0f} prompt "
        f"tokens), 64 new tokens, hf fp32, best of {repeat}, {_load()}\n"
        f"  block declared (prefilled once a batch) {best['shared']:6.1f} s\n"
        f"  nothing declared                        {best['plain']:6.1f} s\n"
        f"  ratio {best['plain'] / best['shared']:.2f}x; greedy texts "
        + ("identical" if same else "DIFFER")
    )
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="mmlu,tinymmlu,prefix")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    # lm-eval's hf model keeps the logits of every position: at batch 64 the longest
    # 5-shot MMLU prompts asked for a 38 GB tensor here (OOM); 8 fits in 24 GB.
    parser.add_argument("--batch-size", type=int, default=8, help="lm-eval's batch size")
    parser.add_argument("--baseline", default=BASELINE, help="commit tinyMMLU compares with")
    parser.add_argument("--prefix-items", type=int, default=16)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from gpu_worker.batching import available_cores

    if not (DATA / "mmlu").is_dir():
        raise SystemExit(f"no MMLU data under {DATA}")
    if shutil.which("git") is None:
        raise SystemExit("git is needed for the baseline worktree")
    threads = args.threads or available_cores()
    ok = True
    for part in args.only.split(","):
        if part == "mmlu":
            ok &= bench_mmlu(threads, args.repeat, args.batch_size)
        elif part == "tinymmlu":
            ok &= bench_tinymmlu(threads, args.repeat, args.baseline)
        elif part == "prefix":
            ok &= bench_prefix(args.prefix_items, args.repeat)
        else:
            raise SystemExit(f"--only: unknown part {part!r} (mmlu, tinymmlu, prefix)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
