"""The samples pages of a 10,000-sample run (real uvicorn): right rows, right filters.

How fast they answer is measured by ``bench/api_bench.py`` (printed, against a baseline
measured in the same run), never asserted here: a wall-clock bound fails on a busy CI.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pytest

SAMPLES, SHARD = 10_000, 500
_spec = importlib.util.spec_from_file_location(
    "bench_stores", Path(__file__).resolve().parents[2] / "bench" / "_stores.py"
)
bench_stores = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_stores)


@pytest.fixture(scope="module")
def big_server(tmp_path_factory: pytest.TempPathFactory):
    from conftest import free_port, spawn, stop, wait_http

    root = tmp_path_factory.mktemp("big") / "store"
    bench_stores.write_ifeval_run(root, "big", SAMPLES, SHARD)
    port = free_port()
    proc = spawn("serve", "--store", str(root), "--port", str(port), log=root.parent / "serve.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc)
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client
    stop(proc)


def test_samples_pages_of_a_10k_run(big_server: httpx.Client) -> None:
    body = big_server.get("/runs/big/samples", params={"task": "ifeval", "limit": 50}).json()
    assert body["total"] == SAMPLES and len(body["rows"]) == 50
    pages = [
        ({"task": "ifeval", "offset": 0, "limit": 50}, 0),
        ({"task": "ifeval", "offset": 5000, "limit": 100}, 5000),
        ({"task": "ifeval", "offset": 9950, "limit": 50}, 9950),
    ]
    for params, first in pages:
        rows = big_server.get("/runs/big/samples", params=params).json()["rows"]
        assert [r["sample_id"] for r in rows] == [
            str(i) for i in range(first, first + params["limit"])
        ]
    failed = big_server.get(
        "/runs/big/samples", params={"task": "ifeval", "failed": True, "offset": 1000, "limit": 50}
    ).json()
    passed = big_server.get(
        "/runs/big/samples", params={"task": "ifeval", "failed": False, "limit": 50}
    ).json()
    assert failed["total"] + passed["total"] == SAMPLES
    assert all(r["passed"] is False for r in failed["rows"])
    assert all(r["passed"] is True for r in passed["rows"])
