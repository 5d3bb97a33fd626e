"""Results API latency and throughput against a real ``tandem serve`` (uvicorn, 127.0.0.1).

Builds synthetic scored IFEval runs (``bench/_stores.py``) and measures, each with a
baseline from the same run so the numbers compare across machines and loads:

* **samples pages** of a 10,000-sample run (20 shards): cold and warm latency, as a
  ratio to reading one score shard with pyarrow directly;
* **compare** of two runs with many shards per task (``--wide`` shards) against two runs
  of ``--narrow`` shards with the same samples: "the same time class" means a ratio near
  1 (before stamp-keyed indexes, runs over 128 shards re-read every shard on every call);
* **filtered pages** (the viewer's instruction and text filters) and **one sample** in
  full: the first request (reads the filter's columns of every shard) and later pages;
* **throughput** with ``--clients`` concurrent clients over a mix of run listings,
  samples pages and compares: requests/s and p50/p99 latency.

    .venv/bin/python bench/api_bench.py [--wide 200 --narrow 100 --clients 20 --seconds 10]
    .venv/bin/python bench/api_bench.py --repo /path/to/other/checkout   # serve that code

Nothing is asserted: the numbers are printed (and written with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(repo: Path, store: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tandem", "serve", "--store", str(store), "--port", str(port)],
        cwd=repo,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server did not start; see {log}")


def _timed(client: httpx.Client, path: str, params: dict | None = None) -> float:
    started = time.perf_counter()
    response = client.get(path, params=params)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"{path} {params}: HTTP {response.status_code} {response.text[:200]}")
    return elapsed


def _raw_shard_read(store: Path) -> float:
    import pyarrow.parquet as pq

    path = sorted((store / "runs/big/scores/ifeval").glob("*.parquet"))[0]
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        pq.read_table(path)
        best = min(best, time.perf_counter() - started)
    return best


def _throughput(url: str, clients: int, seconds: float, wide: int) -> dict:
    rng = random.Random(0)
    requests = [
        ("/runs", None),
        ("/runs/big/samples", {"task": "ifeval", "offset": 5000, "limit": 50}),
        ("/runs/big/samples", {"task": "ifeval", "failed": True, "limit": 50}),
        ("/compare", {"a": "wide-a", "b": "wide-b", "task": "ifeval"}),
    ]
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client_loop(seed: int) -> None:
        local = random.Random(seed)
        with httpx.Client(base_url=url, timeout=120) as client:
            while time.monotonic() < stop:
                path, params = local.choice(requests)
                elapsed = _timed(client, path, params)
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client_loop, args=(rng.random(),)) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(latencies),
        "requests_per_second": round(len(latencies) / wall, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose server to run")
    parser.add_argument("--wide", type=int, default=200, help="shards per run in the wide pair")
    parser.add_argument("--narrow", type=int, default=100, help="shards per run, narrow pair")
    parser.add_argument("--samples", type=int, default=5000, help="samples per compared run")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from bench._stores import TYPES, WORDS, write_ifeval_run

    with tempfile.TemporaryDirectory(prefix="tandem-api-bench-") as tmp:
        store = Path(tmp) / "store"
        write_ifeval_run(store, "big", 10_000, 500)
        for suffix, seed in (("a", 1), ("b", 2)):
            write_ifeval_run(store, f"wide-{suffix}", args.samples, args.samples // args.wide, seed)
            write_ifeval_run(
                store, f"narrow-{suffix}", args.samples, args.samples // args.narrow, seed
            )
        proc, url = _serve(args.repo.resolve(), store, Path(tmp) / "serve.log")
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                page = {"task": "ifeval", "offset": 5000, "limit": 50}
                cold = _timed(client, "/runs/big/samples", page)
                warm = statistics.median(
                    _timed(client, "/runs/big/samples", {**page, "offset": o})
                    for o in (0, 2500, 5000, 7500, 9950) * 3
                )
                filtered = {}
                for name, extra in (
                    ("instruction", {"instruction": TYPES[0], "failed": "true"}),
                    ("text", {"q": WORDS[0]}),
                ):
                    params = {"task": "ifeval", "limit": 50, **extra}
                    first = _timed(client, "/runs/big/samples", params)
                    later = statistics.median(
                        _timed(client, "/runs/big/samples", {**params, "offset": o})
                        for o in (50, 100, 150) * 3
                    )
                    filtered[name] = {
                        "first_ms": round(first * 1000, 1),
                        "later_ms": round(later * 1000, 2),
                    }
                one = statistics.median(
                    _timed(client, "/runs/big/sample", {"task": "ifeval", "id": str(i)})
                    for i in (0, 4999, 9999) * 3
                )
                compares = {}
                for pair in ("narrow", "wide"):
                    params = {"a": f"{pair}-a", "b": f"{pair}-b", "task": "ifeval"}
                    first = _timed(client, "/compare", params)
                    again = statistics.median(_timed(client, "/compare", params) for _ in range(5))
                    compares[pair] = {"first_s": round(first, 3), "warm_s": round(again, 4)}
            mix = _throughput(url, args.clients, args.seconds, args.wide)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        raw = _raw_shard_read(store)
    result = {
        "repo": str(args.repo.resolve()),
        "load_average": round(os.getloadavg()[0], 2),
        "samples_page": {
            "cold_ms": round(cold * 1000, 1),
            "warm_ms": round(warm * 1000, 2),
            "raw_score_shard_read_ms": round(raw * 1000, 2),
            "warm_vs_raw_read": round(warm / raw, 2),
        },
        "filtered_pages": filtered,
        "one_sample_ms": round(one * 1000, 2),
        "compare": {
            **compares,
            "shards": {"narrow": args.narrow, "wide": args.wide},
            "wide_vs_narrow_warm": round(
                compares["wide"]["warm_s"] / compares["narrow"]["warm_s"], 2
            ),
        },
        "throughput": mix,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
