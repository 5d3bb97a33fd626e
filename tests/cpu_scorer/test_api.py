"""The results API against a real uvicorn on 127.0.0.1: every route, path traversal,
tokens, page-size limits, no CORS."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from conftest import TASKS, child_env, spawn

from cpu_scorer.api import create_app, is_loopback
from shared.errors import TandemError


@pytest.fixture(scope="module")
def server(scored_store: Path, tmp_path_factory: pytest.TempPathFactory):
    from conftest import free_port, stop, wait_http

    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = spawn("serve", "--store", str(scored_store), "--port", str(port), log=log)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc)
    with httpx.Client(base_url=url, timeout=10) as client:
        yield client
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it (systemd counts that
    # as a clean stop).
    assert stop(proc) in (0, -15)


def _summary(store: Path, run_id: str) -> dict:
    return json.loads((store / "runs" / run_id / "summary.json").read_text())


def test_runs_are_listed_paginated_and_filtered(server: httpx.Client) -> None:
    body = server.get("/runs").json()
    assert [r["run_id"] for r in body["runs"]] == ["run-a", "run-b"] and body["total"] == 2
    assert set(body["runs"][0]["scores"]) == set(TASKS)
    page = server.get("/runs", params={"offset": 1, "limit": 1}).json()
    assert [r["run_id"] for r in page["runs"]] == ["run-b"] and page["total"] == 2
    assert server.get("/runs", params={"model": "SMOLLM2"}).json()["total"] == 2
    assert server.get("/runs", params={"model": "llama"}).json()["total"] == 0
    assert server.get("/runs", params={"task": "tinymmlu"}).json()["total"] == 2
    assert server.get("/runs", params={"task": "arc_easy"}).json()["total"] == 0


def test_a_run_shows_spec_environment_and_telemetry(server: httpx.Client) -> None:
    body = server.get("/runs/run-a").json()
    assert body["spec"]["backend"] == "fake" and body["spec"]["chat_template"] == "off"
    assert "python" in body["environment"]
    assert set(body["telemetry"]) == set(TASKS)
    assert body["telemetry"]["tinymmlu"]["samples_generated"] == 24


def test_scores_are_the_summary(server: httpx.Client, scored_store: Path) -> None:
    body = server.get("/runs/run-b/scores").json()
    assert body["tasks"] == _summary(scored_store, "run-b")["tasks"]
    assert body["tasks"]["tinymmlu"]["shards"]["quarantined"] == 1


def test_samples_filter_and_page(server: httpx.Client) -> None:
    everything = server.get("/runs/run-a/samples", params={"task": "tinymmlu"}).json()
    assert everything["total"] == 24 and len(everything["rows"]) == 24
    failed = server.get("/runs/run-a/samples", params={"task": "tinymmlu", "failed": True}).json()
    passed = server.get("/runs/run-a/samples", params={"task": "tinymmlu", "failed": False}).json()
    assert failed["total"] + passed["total"] == 24
    assert all(r["passed"] is False for r in failed["rows"])
    assert all(r["passed"] is True and r["metrics"]["acc"] == 1.0 for r in passed["rows"])
    page = server.get(
        "/runs/run-a/samples", params={"task": "tinymmlu", "offset": 20, "limit": 10}
    ).json()
    assert [r["sample_id"] for r in page["rows"]] == [
        r["sample_id"] for r in everything["rows"][20:]
    ]
    beyond = server.get("/runs/run-a/samples", params={"task": "tinymmlu", "offset": 999}).json()
    assert beyond["rows"] == [] and beyond["total"] == 24


def test_ifeval_samples_carry_per_instruction_verdicts(server: httpx.Client) -> None:
    body = server.get("/runs/run-a/samples", params={"task": "ifeval", "limit": 40}).json()
    assert body["total"] == 40
    for row in body["rows"]:
        verdicts = [i["strict"] for i in row["instructions"]]
        assert verdicts and all(isinstance(v, bool) for v in verdicts)
        assert row["passed"] == all(verdicts)
        assert {"id", "strict", "loose", "kwargs"} <= set(row["instructions"][0])
    failed = server.get("/runs/run-a/samples", params={"task": "ifeval", "failed": True}).json()
    assert all(not all(i["strict"] for i in r["instructions"]) for r in failed["rows"])


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_streams_every_sample(server: httpx.Client, fmt: str) -> None:
    with server.stream("GET", "/runs/run-a/export", params={"format": fmt}) as response:
        assert response.status_code == 200
        assert response.headers.get("transfer-encoding") == "chunked"
        assert "attachment" in response.headers["content-disposition"]
        data = b"".join(response.iter_bytes())
    if fmt == "jsonl":
        rows = [json.loads(line) for line in data.decode().splitlines()]
    else:
        rows = pq.read_table(io.BytesIO(data)).to_pylist()
    expected = {"ifeval": 40, "tinymmlu": 24}
    assert len(rows) == sum(expected[t] for t in TASKS)
    assert {r["task"] for r in rows} == set(TASKS) and all(r["scored"] for r in rows)
    one = server.get("/runs/run-a/export", params={"format": "jsonl", "task": "tinymmlu"})
    assert len(one.text.splitlines()) == 24


def test_compare_counts_each_way(server: httpx.Client) -> None:
    body = server.get("/compare", params={"a": "run-a", "b": "run-b", "task": "tinymmlu"}).json()
    counts = body["counts"]
    assert counts["fixed"] + counts["broken"] == len(body["flips"])
    assert counts["fixed"] == sum(f["direction"] == "fixed" for f in body["flips"])
    # run-b's fourth tinymmlu shard holds samples 20..23 and is not bad; the quarantined
    # one is an extra shard, so both runs have all 24 samples.
    assert sum(counts[k] for k in ("fixed", "broken", "both_pass", "both_fail")) == 24
    assert counts["fixed"] + counts["broken"] > 0, "the two fake runs answer differently"
    back = server.get("/compare", params={"a": "run-b", "b": "run-a", "task": "tinymmlu"}).json()
    assert back["counts"]["fixed"] == counts["broken"]


def test_healthz_and_metrics(server: httpx.Client, scored_store: Path) -> None:
    assert server.get("/healthz").json() == {"status": "ok"}
    response = server.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in response.text.splitlines()
        if line and not line.startswith("#")
    }
    scored = len(list(scored_store.glob("runs/*/scores/*/*.parquet")))
    assert values["tandem_shards_scored"] == scored
    assert values["tandem_shards_quarantined"] == 1
    assert values["tandem_shards_pending"] == 0
    assert values["tandem_scoring_latency_seconds_count"] == scored
    assert values['tandem_scoring_latency_seconds{quantile="0.5"}'] >= 0


# ---- security ------------------------------------------------------------------------
TRAVERSALS = [
    "/runs/..%2F..%2Fsecret/scores",
    "/runs/%2e%2e/scores",
    "/runs/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/runs/.hidden/scores",
    "/runs/run-a..%2F..%2F/scores",
    "/runs/a..b/scores",
    "/runs/run-a/samples?task=..%2F..%2F..%2Fsecret",
    "/runs/run-a/samples?task=%2Fetc%2Fpasswd",
    "/runs/run-a/export?task=..&format=jsonl",
    "/compare?a=..%2Fsecret&b=run-a",
    "/compare?a=run-a&b=run-b&task=../../secret",
    "/runs/%2Fetc%2Fpasswd",
    "/runs/run-a%00/scores",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_is_refused(server: httpx.Client, scored_store: Path, path: str) -> None:
    (scored_store.parent / "secret").mkdir(exist_ok=True)
    (scored_store.parent / "secret" / "run.json").write_text('{"spec": "SECRET-XYZ"}')
    (scored_store.parent / "secret.txt").write_text("SECRET-XYZ")
    # Send the path byte for byte: no client-side normalization of ".." or escapes.
    response = server.send(
        server.build_request("GET", httpx.URL(server.base_url.join("/"), raw_path=path.encode()))
    )
    assert response.status_code in (400, 404, 422), (path, response.status_code)
    assert "SECRET-XYZ" not in response.text


def test_page_size_is_capped(server: httpx.Client) -> None:
    assert server.get("/runs", params={"limit": 501}).status_code == 422
    assert server.get("/runs/run-a/samples", params={"limit": 10_000}).status_code == 422
    assert server.get("/runs/run-a/samples", params={"offset": -1}).status_code == 422


def test_no_cors_headers_by_default(server: httpx.Client) -> None:
    origin = {"Origin": "https://evil.example"}
    response = server.get("/runs", headers=origin)
    assert response.status_code == 200
    assert not any(h.lower().startswith("access-control-") for h in response.headers)
    preflight = server.options("/runs", headers={**origin, "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in preflight.headers


def test_a_token_is_required_when_set(server_factory, scored_store: Path) -> None:
    url = server_factory(scored_store, token="s3cret-token")
    with httpx.Client(base_url=url, timeout=10) as client:
        for path in (
            "/runs",
            "/runs/run-a",
            "/runs/run-a/scores",
            "/metrics",
            "/runs/run-a/samples",
            "/compare?a=run-a&b=run-b&task=tinymmlu",
            "/runs/run-a/export",
        ):
            assert client.get(path).status_code == 401, path
            wrong = client.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
            basic = client.get(path, headers={"Authorization": "Basic czNjcmV0LXRva2Vu"})
            assert basic.status_code == 401
            ok = client.get(path, headers={"Authorization": "Bearer s3cret-token"})
            assert ok.status_code == 200, path
        assert client.get("/healthz").status_code == 200  # liveness stays open
        assert client.get("/").status_code == 200  # the page holds no data


def test_non_loopback_binding_needs_a_token(scored_store: Path) -> None:
    from cpu_scorer import api

    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        assert not is_loopback(host)
        with pytest.raises(TandemError, match="without a token"):
            api.serve(str(scored_store), host=host, port=8000, token=None)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    # The CLI says so and exits 2 before binding anything.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tandem",
            "serve",
            "--store",
            str(scored_store),
            "--host",
            "0.0.0.0",
            "--port",
            "9",
        ],
        env={**child_env(), "TANDEM_TOKEN": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "without a token" in done.stderr


def test_settings_come_from_an_overridable_dependency(scored_store: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from cpu_scorer.api import Settings, get_settings

    app = create_app(str(tmp_path / "empty"))
    app.dependency_overrides[get_settings] = lambda: Settings(store_uri=str(scored_store))
    with TestClient(app) as client:
        assert client.get("/runs").json()["total"] == 2


def test_the_api_and_daemon_never_load_torch() -> None:
    code = (
        "import sys, cpu_scorer.api, cpu_scorer.daemon, cpu_scorer.compare\n"
        "bad = [m for m in ('torch', 'transformers', 'ray', 'gpu_worker') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], env=child_env(), check=True, timeout=60)
