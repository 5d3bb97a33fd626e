"""The daemon and the API on an S3-compatible store (moto's server on 127.0.0.1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from conftest import generate, spawn

from cpu_scorer.daemon import Daemon, DaemonConfig
from shared.store import Store

moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")


@pytest.fixture(scope="module")
def s3_uri():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"{host}:{port}"
        fs = pafs.S3FileSystem(
            access_key="test",
            secret_key="test",
            region="us-east-1",
            endpoint_override=endpoint,
            scheme="http",
            allow_bucket_creation=True,
        )
        fs.create_dir("evals")
        yield f"s3://test:test@evals/store?endpoint_override={endpoint}&scheme=http&region=us-east-1"
    finally:
        server.stop()


def _download(store: Store, local: Path) -> None:
    """Copy the store's run folders to a local directory (for a local reference)."""
    pafs.copy_files(
        store.path("runs"),
        str(local / "runs"),
        source_filesystem=store.fs,
        destination_filesystem=pafs.LocalFileSystem(),
    )


def test_daemon_and_api_on_s3(s3_uri: str, tmp_path: Path) -> None:
    generate(s3_uri, "s3run", limit={"ifeval": 8, "tinymmlu": 8})
    store = Store(s3_uri)
    bad = store.run_path("s3run", "generations", "tinymmlu", "9000000-9000004.parquet")
    store.publish_bytes(bad, b"definitely not parquet")
    reference = tmp_path / "reference"
    _download(store, reference)
    Daemon(Store(str(reference)), DaemonConfig(once=True, interval=0.05)).run()

    log = tmp_path / "daemon.log"
    proc = spawn("scorer", "--store", s3_uri, "--once", "--interval", "0.1", log=log)
    assert proc.wait(120) == 0, log.read_text()[-3000:]
    assert "test:test@" not in log.read_text()  # credentials never logged

    local = tmp_path / "from-s3"
    _download(store, local)
    for path in sorted(reference.glob("runs/*/scores/*/*.parquet")):
        rel = path.relative_to(reference)
        assert (local / rel).read_bytes() == path.read_bytes(), rel
    assert sorted(p.name for p in local.glob("runs/*/scores/*/*")) == sorted(
        p.name for p in reference.glob("runs/*/scores/*/*")
    )
    # The bad shard moved (copy + delete on S3) with its record; nothing lost.
    quarantine = local / "runs/s3run/quarantine/tinymmlu"
    assert (quarantine / "9000000-9000004.parquet").read_bytes() == b"definitely not parquet"
    assert (
        "not a parquet file"
        in json.loads((quarantine / "9000000-9000004.error.json").read_text())["error"]
    )
    assert not (local / "runs/s3run/generations/tinymmlu/9000000-9000004.parquet").exists()
    assert not list(local.glob("runs/*/claims/*/*"))
    summary = json.loads((local / "runs/s3run/summary.json").read_text())
    assert summary == json.loads((reference / "runs/s3run/summary.json").read_text())

    from fastapi.testclient import TestClient

    from cpu_scorer.api import create_app

    with TestClient(create_app(s3_uri)) as client:
        assert client.get("/runs").json()["total"] == 1
        assert client.get("/runs/s3run/scores").json()["tasks"] == summary["tasks"]
        rows = client.get("/runs/s3run/samples", params={"task": "ifeval"}).json()
        assert rows["total"] == 8 and rows["rows"][0]["instructions"]
        metrics = client.get("/metrics").text
        assert "tandem_shards_quarantined 1" in metrics and "tandem_shards_pending 0" in metrics
    shutil.rmtree(local)
