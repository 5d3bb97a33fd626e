"""Generation throughput: tandem hf vs lm-eval's hf backend vs a naive loop (vs vLLM,
vs llama.cpp).

The same IFEval prompts (chat-rendered once, here), the same model and max_new_tokens,
greedy, in one run:

- ``tandem-hf``: tandem's hf backend (length-sorted, left-padded batches, KV cache);
- ``lmeval-hf``: lm-eval's ``HFLM.generate_until`` (in .venv-genbench if it exists, else
  here when lm-eval is installed: the ``lmeval`` extra), at
  its default batch size 1 and at tandem's batch size;
- ``naive``: ``model.generate`` on one prompt at a time, no padding;
- ``tandem-llamacpp``: tandem's llamacpp backend on the embedded model's GGUF as it
  ships (Q4_1), where llama-cpp-python is installed: the same weights, quantized, so
  its text may differ from fp32's (the column says how often);
- ``tandem-vllm`` and ``raw-vllm``: tandem's vLLM backend and a plain
  ``LLM.generate`` on the same engine (its own env, .venv-vllm), where installed.

Load time and a small warm-up call are excluded from every timing; the two vLLM runs
share one engine, start from an empty prefix cache and take the best of two turns.
Outputs are compared token for token with tandem-hf's (re-tokenized text: first
differing token).

    .venv/bin/python bench/generation_bench.py [--prompts 64] [--max-new-tokens 32]
        [--threads N] [--json out.json]

Every engine gets the same torch thread count (``--threads``, default: the cores this
process may use).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LMEVAL_PY = REPO / ".venv-genbench" / "bin" / "python"
VLLM_PY = REPO / ".venv-vllm" / "bin" / "python"


# ---- workers: each runs in its own environment and prints one JSON object ----------
def worker_naive(job: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(job["threads"])
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32).eval()
    eos = tokenizer.eos_token_id

    def run(prompts, max_new):
        texts, tokens = [], 0
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            with torch.inference_mode():
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new,
                    do_sample=False,
                    pad_token_id=eos,
                )
            new = out[0, ids.shape[1] :].tolist()
            tokens += len(new)
            texts.append(tokenizer.decode(new, skip_special_tokens=True))
        return texts, tokens

    run(job["prompts"][:2], 4)
    started, cpu = time.perf_counter(), time.process_time()
    texts, tokens = run(job["prompts"], job["max_new_tokens"])
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "tokens": tokens,
        "texts": texts,
    }


def worker_lmeval(job: dict) -> dict:
    import lm_eval
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    torch.set_num_threads(job["threads"])
    lm = HFLM(pretrained=job["model"], device="cpu", dtype="float32", batch_size=job["batch_size"])

    def run(prompts, max_new):
        requests = [
            Instance(
                request_type="generate_until",
                doc={},
                arguments=(p, {"until": [], "max_gen_toks": max_new, "do_sample": False}),
                idx=i,
            )
            for i, p in enumerate(prompts)
        ]
        return lm.generate_until(requests, disable_tqdm=True)

    run(job["prompts"][:2], 4)
    started, cpu = time.perf_counter(), time.process_time()
    texts = run(job["prompts"], job["max_new_tokens"])
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    tokens = sum(
        len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts
    )  # lm-eval returns text only; EOS tokens are not counted here
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "tokens": tokens,
        "texts": texts,
        "version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "",
    }


def worker_vllm(job: dict) -> dict:
    from vllm import SamplingParams

    from gpu_worker.backends import create_backend
    from gpu_worker.backends.base import GenerationRequest
    from shared.spec import RunSpec

    spec = RunSpec(tasks=("ifeval",), backend="vllm", precision="fp32")
    backend = create_backend(spec)
    max_new = job["max_new_tokens"]
    requests = [GenerationRequest(p, max_new) for p in job["prompts"]]
    params = SamplingParams(temperature=0.0, max_tokens=max_new)
    backend.generate(requests[:2])
    backend.llm.generate(job["prompts"][:2], params, use_tqdm=False)
    # vLLM caches prompt prefixes: each timed run starts from an empty cache, and the
    # two take turns (best of 2 each), so neither profits from the other's work.
    tandem_seconds = raw_seconds = float("inf")
    for _ in range(2):
        backend.llm.reset_prefix_cache()
        started = time.perf_counter()
        results = backend.generate(requests)
        tandem_seconds = min(tandem_seconds, time.perf_counter() - started)
        backend.llm.reset_prefix_cache()
        started = time.perf_counter()
        raw = backend.llm.generate(job["prompts"], params, use_tqdm=False)
        raw_seconds = min(raw_seconds, time.perf_counter() - started)
    out = {
        "tandem-vllm": {
            "seconds": tandem_seconds,
            "tokens": sum(r.generated_tokens for r in results),
            "texts": [r.text for r in results],
        },
        "raw-vllm": {
            "seconds": raw_seconds,
            "tokens": sum(len(o.outputs[0].token_ids) for o in raw),
            "texts": [o.outputs[0].text for o in raw],
        },
    }
    backend.close()
    return out


# ---- driver ------------------------------------------------------------------------
def load_prompts(count: int, data_dir: Path) -> tuple[list[str], str]:
    from gpu_worker.models import embedded_model_dir
    from shared.tasks import TASKS, load_samples

    model = str(embedded_model_dir())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    samples = load_samples(TASKS["ifeval"], str(data_dir), count)
    rendered = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": s.prompt}], tokenize=False, add_generation_prompt=True
        )
        for s in samples
    ]
    return rendered, model


def run_tandem_hf(prompts: list[str], max_new: int, precision: str = "fp32") -> tuple[dict, int]:
    from gpu_worker.backends import create_backend
    from gpu_worker.backends.base import GenerationRequest
    from shared.spec import RunSpec

    backend = create_backend(RunSpec(tasks=("ifeval",), precision=precision))
    requests = [GenerationRequest(p, max_new) for p in prompts]
    backend.generate([GenerationRequest(p, 4) for p in prompts[:2]])  # warm-up
    started, cpu = time.perf_counter(), time.process_time()
    results = backend.generate(requests)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    size = max(r.batch_size for r in results)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        # Text tokens, as lm-eval's count: the EOS a row ended with is not text.
        "tokens": sum(r.generated_tokens - (r.finish_reason == "eos") for r in results),
        "texts": [r.text for r in results],
    }, size


def run_tandem_llamacpp(prompts: list[str], max_new: int) -> dict:
    from gpu_worker.backends import create_backend
    from gpu_worker.backends.base import GenerationRequest
    from shared.spec import RunSpec

    backend = create_backend(RunSpec(tasks=("ifeval",), backend="llamacpp"))
    requests = [GenerationRequest(p, max_new) for p in prompts]
    backend.generate([GenerationRequest(p, 4) for p in prompts[:2]])  # warm-up
    started = time.perf_counter()
    results = backend.generate(requests)
    seconds = time.perf_counter() - started
    backend.close()
    return {
        "seconds": seconds,
        "tokens": sum(r.generated_tokens for r in results),
        "texts": [r.text for r in results],
    }


def lmeval_python() -> Path:
    """lm-eval's own env when made; else this one, if it has lm-eval (the lmeval extra)."""
    if LMEVAL_PY.exists() or importlib.util.find_spec("lm_eval") is None:
        return LMEVAL_PY
    return Path(sys.executable)


def in_env(python: Path, mode: str, job: dict, env: dict) -> dict | None:
    if not python.exists():
        print(f"skip {mode}: {python} not found", file=sys.stderr)
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(job, handle)
    out = Path(handle.name).with_suffix(".out.json")
    command = [str(python), __file__, "--worker", mode, handle.name, str(out)]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0 or not out.exists():
        print(f"{mode} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(out.read_text())


def first_difference(tokenizer, a: str, b: str) -> int | None:
    """Index of the first differing token of two texts, None if identical."""
    if a == b:
        return None
    x = tokenizer(a, add_special_tokens=False)["input_ids"]
    y = tokenizer(b, add_special_tokens=False)["input_ids"]
    for index, (p, q) in enumerate(zip(x, y, strict=False)):
        if p != q:
            return index
    return min(len(x), len(y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--skip", default="", help="comma list: lmeval,lmeval1,naive,vllm,llamacpp")
    parser.add_argument(
        "--hf-precisions",
        default="",
        help="also run tandem hf at these precisions (e.g. bf16,fp16,int8,nf4)",
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "JOB", "OUT"), default=None)
    args = parser.parse_args()
    if args.worker:
        mode, job_file, out_file = args.worker
        job = json.loads(Path(job_file).read_text())
        result = {"naive": worker_naive, "lmeval": worker_lmeval, "vllm": worker_vllm}[mode](job)
        Path(out_file).write_text(json.dumps(result))
        return

    from gpu_worker.batching import available_cores

    threads = args.threads or available_cores()
    os.environ["TANDEM_THREADS"] = str(threads)
    env = {**os.environ, "TANDEM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    skip = set(filter(None, args.skip.split(",")))
    load_before = f"{os.getloadavg()[0]:.2f}"
    prompts, model = load_prompts(args.prompts, Path(args.data_dir))
    job = {
        "prompts": prompts,
        "model": model,
        "max_new_tokens": args.max_new_tokens,
        "threads": threads,
    }

    results: dict[str, dict] = {}
    results["tandem-hf"], batch_size = run_tandem_hf(prompts, args.max_new_tokens)
    for precision in filter(None, args.hf_precisions.split(",")):
        results[f"tandem-hf {precision}"], _ = run_tandem_hf(
            prompts, args.max_new_tokens, precision
        )
    if "llamacpp" not in skip:
        if importlib.util.find_spec("llama_cpp") is None:
            print("skip llamacpp: llama-cpp-python not installed", file=sys.stderr)
        else:
            results["tandem-llamacpp (Q4_1 GGUF)"] = run_tandem_llamacpp(
                prompts, args.max_new_tokens
            )
    if "lmeval" not in skip:
        got = in_env(lmeval_python(), "lmeval", {**job, "batch_size": batch_size}, env)
        if got:
            results[f"lmeval-hf (batch {batch_size})"] = got
    if "lmeval1" not in skip:
        got = in_env(lmeval_python(), "lmeval", {**job, "batch_size": 1}, env)
        if got:
            results["lmeval-hf (batch 1, its default)"] = got
    if "naive" not in skip:
        got = in_env(Path(sys.executable), "naive", job, env)
        if got:
            results["naive loop"] = got
    if "vllm" not in skip:
        got = in_env(VLLM_PY, "vllm", job, env)
        if got:
            results.update(got)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    base = results["tandem-hf"]
    print(
        f"\n{len(prompts)} IFEval prompts, max_new_tokens={args.max_new_tokens}, "
        f"fp32 CPU, {threads} thread(s), tandem batch size {batch_size}, "
        f"load average {load_before} at the start, {os.getloadavg()[0]:.2f} at the end\n"
    )
    # CPU seconds (all threads of the timed process) move little with other work on the
    # machine, unlike wall seconds: on a shared box, compare both speed-ups.
    print(
        "| engine | seconds | CPU s | text tokens | tokens/s | tandem-hf speed-up (wall) "
        "| (CPU) | same text as tandem-hf |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    summary = {}
    for name, got in results.items():
        rate = got["tokens"] / got["seconds"]
        pairs = zip(base["texts"], got["texts"], strict=True)
        diffs = [first_difference(tokenizer, a, b) for a, b in pairs]
        same = sum(d is None for d in diffs)
        summary[name] = {
            "seconds": got["seconds"],
            "tokens": got["tokens"],
            "tokens_per_s": rate,
            "same_text": same,
            "first_differences": [d for d in diffs if d is not None],
        }
        speedup = got["seconds"] / base["seconds"]
        cpu = got.get("cpu_seconds")
        cpu_cell = f"{cpu:.1f}" if cpu is not None else "-"
        cpu_speedup = (
            f"{cpu / base['cpu_seconds']:.2f}x"
            if cpu is not None and "cpu_seconds" in base
            else "-"
        )
        summary[name]["cpu_seconds"] = cpu
        print(
            f"| {name} | {got['seconds']:.1f} | {cpu_cell} | {got['tokens']} | {rate:.1f} | "
            f"{speedup:.2f}x | {cpu_speedup} | {same}/{len(diffs)} |"
        )
    if "tandem-vllm" in results and "raw-vllm" in results:
        ratio = results["raw-vllm"]["seconds"] / results["tandem-vllm"]["seconds"]
        print(f"\ntandem vllm / raw LLM.generate throughput: {ratio:.2f} (goal >= 0.9)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "job": {k: v for k, v in job.items() if k != "prompts"},
                    "batch_size": batch_size,
                    "results": summary,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
