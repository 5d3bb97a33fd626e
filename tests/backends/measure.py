"""Measure every precision against the hf fp32 reference (not run by pytest).

    python tests/backends/measure.py [--backend hf] [--precisions fp32,bf16,...] [--lora DIR]

Prints one JSON line per configuration: max |log-prob - fp32| over tests/backends'
requests (per request and rolling), whether greedy batch == one-at-a-time, and
generation tokens/s. The tolerances in tests/backends and docs/backends.md come from
these numbers.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _cases import LOGLIK, ROLLING, generation_requests  # noqa: E402

from gpu_worker.backends import create_backend  # noqa: E402
from shared.spec import RunSpec  # noqa: E402


def measure(spec: RunSpec, reference: dict | None, max_new: int) -> dict:
    started = time.perf_counter()
    backend = create_backend(spec)
    load = time.perf_counter() - started
    ll = [r.logprob for r in backend.loglikelihood(LOGLIK)]
    # Batch noise: the same requests in other batches (shuffled, with duplicates), as
    # the conformance suite's ordering test sends them.
    noise = 0.0
    for seed in range(3):
        order = list(range(len(LOGLIK))) * 2
        random.Random(seed).shuffle(order)
        shuffled = backend.loglikelihood([LOGLIK[i] for i in order])
        pairs = zip(shuffled, order, strict=True)
        noise = max(noise, *(abs(r.logprob - ll[i]) for r, i in pairs))
    rolling = [r.logprob for r in backend.loglikelihood_rolling(ROLLING)]
    requests = generation_requests(backend, max_new)
    started = time.perf_counter()
    batch = backend.generate(requests)
    seconds = time.perf_counter() - started
    single = [backend.generate([r])[0] for r in requests]
    out = {
        "backend": spec.backend,
        "precision": spec.precision,
        "adapter": bool(spec.adapter),
        "merged": spec.merge_adapter,
        "load_s": round(load, 1),
        "gen_tokens_per_s": round(sum(r.generated_tokens for r in batch) / seconds, 2),
        "batch_equals_single": [b.text for b in batch] == [s.text for s in single],
        "max_abs_loglik_batch_noise": noise,
        "texts": [b.text for b in batch],
        "loglik": ll,
        "rolling": rolling,
    }
    if reference:
        out["max_abs_loglik_dev"] = max(
            abs(a - b) for a, b in zip(ll, reference["loglik"], strict=True)
        )
        out["max_abs_rolling_dev"] = max(
            abs(a - b) for a, b in zip(rolling, reference["rolling"], strict=True)
        )
        out["texts_equal_fp32"] = out["texts"] == reference["texts"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="hf")
    parser.add_argument("--precisions", default="fp32,bf16,fp16,int8,nf4")
    parser.add_argument("--lora", default=None)
    parser.add_argument("--merge", action="store_true")
    parser.add_argument("--reference", default=None, help="JSON line of the fp32 reference")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    reference = json.loads(Path(args.reference).read_text()) if args.reference else None
    for precision in args.precisions.split(","):
        spec = RunSpec(
            tasks=("ifeval",),
            backend=args.backend,
            precision=precision,
            adapter=args.lora,
            merge_adapter=args.merge,
        )
        result = measure(spec, reference, args.max_new_tokens)
        if reference is None and precision == "fp32":
            reference = result
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
