"""Fixtures for the scorer daemon, the results API and compare: real shards from the
fake backend (no model), bad shards of every kind, and subprocess helpers."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO.parent / "shared" / "data"
TASKS = ("ifeval", "tinymmlu")


def generate(
    store_uri: str,
    run_id: str,
    *,
    tasks: tuple[str, ...] = TASKS,
    limit: dict[str, int] | None = None,
    shard_size: int = 4,
    chat_template: str = "auto",
    model: str | None = None,
) -> str:
    """Write a run's generation shards with the fake backend (imports gpu_worker: fine in
    the test process, never in the daemon or server processes)."""
    from gpu_worker.job import run_generation
    from shared.spec import RunSpec

    fields = dict(
        run_id=run_id,
        backend="fake",
        tasks=tasks,
        shard_size=shard_size,
        limit={t: n for t, n in (limit or {}).items() if t in tasks},
        data_dir=str(DATA_DIR),
        chat_template=chat_template,
    )
    if model:
        fields["model"] = model
    run_generation(RunSpec(**fields), store_uri, local=True, progress=False)
    return run_id


def write_sweep(root: Path, sweep: str, steps: list[int | None], limit: int = 8) -> list[str]:
    """Runs of one sweep, written by hand: fake-backend shards, scored, with ``sweep`` and
    ``step`` put into their run.json's spec (as the training-loop integration will)."""
    import json

    from cpu_scorer.scoring import score_store
    from shared.store import Store

    ids = []
    for k, step in enumerate(steps):
        run_id = f"{sweep}-{k}"
        chat = "off" if k % 2 else "on"
        generate(str(root), run_id, tasks=("ifeval",), limit={"ifeval": limit}, chat_template=chat)
        path = root / "runs" / run_id / "run.json"
        record = json.loads(path.read_text())
        record["spec"]["sweep"] = sweep
        if step is not None:
            record["spec"]["step"] = step
        path.write_text(json.dumps(record))
        ids.append(run_id)
    score_store(Store(str(root)), progress=False)
    return ids


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def bad_shards(good: bytes) -> dict[str, bytes]:
    """One shard of each kind the scorer must quarantine, from a good shard's bytes."""
    table = pq.read_table(io.BytesIO(good))
    newer = table.replace_schema_metadata(
        {**table.schema.metadata, b"tandem.schema_version": b"99"}
    )
    bad_rows = table.set_column(
        table.schema.get_field_index("doc"),
        "doc",
        pa.array(["{not json"] * table.num_rows, pa.string()),
    )
    return {
        "corrupt": b"PAR1" + bytes(range(256)) * 8 + b"PAR1",
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "wrong_schema": _parquet_bytes(pa.table({"x": [1, 2, 3]})),
        "newer_version": _parquet_bytes(newer),
        "bad_rows": _parquet_bytes(bad_rows),
    }


# Why each kind is refused: a phrase from its quarantine record.
BAD_REASONS = {
    "corrupt": "Parquet",
    "truncated": "Parquet magic bytes",
    "empty": "0 bytes",
    "wrong_schema": "not a tandem shard",
    "newer_version": "newer than this tandem understands",
    "bad_rows": "not JSON",
}


def add_bad_shards(store_root: Path, run_id: str, task: str) -> dict[str, str]:
    """Publish each bad kind as an extra shard of ``task``; returns kind -> shard name."""
    folder = store_root / "runs" / run_id / "generations" / task
    good = sorted(folder.glob("*.parquet"))[0].read_bytes()
    names = {}
    for index, (kind, data) in enumerate(sorted(bad_shards(good).items())):
        start = 9_000_000 + index * 10
        name = f"{start:07d}-{start + 4:07d}"
        (folder / f"{name}.parquet").write_bytes(data)
        names[kind] = name
    return names


def tree_bytes(root: Path, *kinds: str) -> dict[str, bytes]:
    """Every file under runs/*/<kind>/ (and summary.json), relative path -> bytes."""
    out = {}
    for path in sorted((root / "runs").rglob("*")):
        parts = path.relative_to(root).parts  # runs, <id>, <kind>, <task>, <file>
        kind = parts[2] if len(parts) > 3 else parts[-1]
        if path.is_file() and kind in (*kinds, "summary.json"):
            out["/".join(parts)] = path.read_bytes()
    return out


def fresh_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def tandem(*args: str) -> list[str]:
    return [sys.executable, "-m", "tandem", *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn(*args: str, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed by the OS
    return subprocess.Popen(
        tandem(*args), cwd=REPO, env=child_env(), stdout=out, stderr=subprocess.STDOUT
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(
    url: str, proc: subprocess.Popen, timeout: float = 30.0, headers: dict[str, str] | None = None
) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=1.0, headers=headers).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture(scope="session")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generation shards only (nothing scored): two runs that answer differently (chat
    template off vs on), so compare has flips. Copy it before changing it."""
    root = tmp_path_factory.mktemp("template") / "store"
    generate(str(root), "run-a", chat_template="off", limit={"ifeval": 40, "tinymmlu": 24})
    generate(str(root), "run-b", chat_template="on", limit={"ifeval": 40, "tinymmlu": 24})
    return root


@pytest.fixture
def store_copy(template_store: Path, tmp_path: Path) -> Path:
    return fresh_copy(template_store, tmp_path / "store")


@pytest.fixture(scope="session")
def scored_store(template_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template runs scored once with the real scorers, plus one quarantined shard."""
    from cpu_scorer.scoring import score_store
    from shared.store import Store

    root = fresh_copy(template_store, tmp_path_factory.mktemp("scored") / "store")
    folder = root / "runs" / "run-b" / "generations" / "tinymmlu"
    (folder / "9000000-9000004.parquet").write_bytes(b"not parquet at all")
    score_store(Store(str(root)), progress=False)
    return root


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start ``tandem serve`` (real uvicorn) on 127.0.0.1; returns its base URL."""
    procs: list[subprocess.Popen] = []

    def start(store: Path | str, token: str | None = None) -> str:
        port = free_port()
        args = ["serve", "--store", str(store), "--host", "127.0.0.1", "--port", str(port)]
        if token:
            args += ["--token", token]
        proc = spawn(*args, log=tmp_path / f"serve-{port}.log")
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", proc)
        return url

    yield start
    for proc in procs:
        stop(proc)
