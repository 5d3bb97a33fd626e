"""What a worker measures while it generates a shard (no heavy imports here).

The shard's wall time, token counts and batch sizes come from here and from the rows;
the split into prefill and decode and the GPU's peak memory only the backend knows, so a
backend may offer ``take_telemetry()``: its counters since the last call (keys
``prefill_seconds``, ``decode_seconds``, ``batch_sizes``, ``cuda_max_allocated_bytes``,
any of them), reset by the call. A backend without it still gets wall time, tokens and
the batch sizes its rows record.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from shared.records import WorkerTelemetry


def peak_rss_bytes() -> int | None:
    """The process's peak resident set size so far (None where the OS does not say).

    A process-lifetime peak: it includes loading the model, which is what decides
    whether a worker fits its machine."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _take(backend: Any) -> dict[str, Any]:
    take = getattr(backend, "take_telemetry", None)
    return dict(take()) if callable(take) else {}


class ShardMeter:
    """Measures one shard: create it before the backend calls, ``finish`` after."""

    def __init__(self, backend: Any):
        self.backend = backend
        _take(backend)  # drop counters of whatever ran before this shard
        self.started = time.perf_counter()

    def finish(self, rows: list[dict[str, Any]]) -> WorkerTelemetry:
        seconds = time.perf_counter() - self.started
        counters = _take(self.backend)
        prompt = sum(int(r.get("prompt_tokens") or 0) for r in rows)
        generated = sum(int(r.get("generated_tokens") or 0) for r in rows)
        sizes = [int(s) for s in counters.get("batch_sizes") or ()]
        if not sizes:
            # From the rows: a batch of n rows gives each of them batch_size n.
            per_row = [int(r["batch_size"]) for r in rows if r.get("batch_size")]
            batches = round(sum(1 / n for n in per_row))
            mean = sum(per_row) / len(per_row) if per_row else None
            largest = max(per_row, default=0)
        else:
            batches, mean, largest = len(sizes), sum(sizes) / len(sizes), max(sizes)
        decode = counters.get("decode_seconds")
        rate_seconds = decode if decode else seconds
        return WorkerTelemetry(
            seconds=round(seconds, 6),
            prefill_seconds=_rounded(counters.get("prefill_seconds")),
            decode_seconds=_rounded(decode),
            prompt_tokens=prompt,
            generated_tokens=generated,
            tokens_per_second=round(generated / rate_seconds, 3)
            if generated and rate_seconds
            else None,
            batches=batches,
            batch_size_max=largest,
            batch_size_mean=round(mean, 3) if mean is not None else None,
            peak_rss_bytes=peak_rss_bytes(),
            cuda_max_allocated_bytes=counters.get("cuda_max_allocated_bytes"),
        )


def _rounded(value: Any) -> float | None:
    return None if value is None else round(float(value), 6)
