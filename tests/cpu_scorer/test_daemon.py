"""The scorer daemon in-process: same results as one-shot scoring, quarantine of every
kind of bad shard, leases, and the repairs it makes after a crash."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from conftest import BAD_REASONS, add_bad_shards, bad_shards, fresh_copy, tree_bytes

from cpu_scorer._lease import Leases
from cpu_scorer.daemon import Daemon, DaemonConfig
from cpu_scorer.scoring import score_store
from shared.store import ShardRef, Store


def _daemon(root: Path, **config: object) -> Daemon:
    return Daemon(Store(str(root)), DaemonConfig(once=True, interval=0.05, **config))


def test_once_matches_one_shot_scoring_byte_for_byte(store_copy: Path, tmp_path: Path) -> None:
    reference = fresh_copy(store_copy, tmp_path / "reference")
    score_store(Store(str(reference)), progress=False)
    tally = _daemon(store_copy).run()
    assert tally.scored == len(list(store_copy.glob("runs/*/generations/*/*.parquet")))
    assert tally.quarantined == 0 and tally.failed == 0
    got = tree_bytes(store_copy, "scores")
    assert got == tree_bytes(reference, "scores")
    assert any(k.endswith("summary.json") for k in got)
    # Leases are released and nothing half-written is left behind.
    assert not list(store_copy.glob("runs/*/claims/*/*"))
    assert not [p for p in store_copy.rglob(".*") if p.is_file()]


@pytest.mark.parametrize("kind", sorted(BAD_REASONS))
def test_each_kind_of_bad_shard_is_quarantined_with_why(store_copy: Path, kind: str) -> None:
    names = add_bad_shards(store_copy, "run-a", "tinymmlu")
    original = (store_copy / f"runs/run-a/generations/tinymmlu/{names[kind]}.parquet").read_bytes()
    tally = _daemon(store_copy).run()
    assert tally.quarantined == len(names) and tally.failed == 0
    folder = store_copy / "runs/run-a/quarantine/tinymmlu"
    record = json.loads((folder / f"{names[kind]}.error.json").read_text())
    assert BAD_REASONS[kind] in record["error"], record
    assert record["shard"] == names[kind] and record["task"] == "tinymmlu"
    # Nothing deleted: the shard's bytes sit in quarantine/, gone from generations/.
    assert (folder / f"{names[kind]}.parquet").read_bytes() == original
    assert not (store_copy / f"runs/run-a/generations/tinymmlu/{names[kind]}.parquet").exists()
    # The daemon kept going: every good shard is scored and the summary counts the bad.
    generated = {p.name for p in store_copy.glob("runs/*/generations/*/*.parquet")}
    scored = {p.name for p in store_copy.glob("runs/*/scores/*/*.parquet")}
    assert generated == scored
    summary = json.loads((store_copy / "runs/run-a/summary.json").read_text())
    assert summary["tasks"]["tinymmlu"]["shards"]["quarantined"] == len(names)


def test_a_transient_read_error_is_retried_before_quarantine(
    store_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(str(store_copy))
    real = store.read_table
    failures = {"left": 1}

    def flaky(path: str):  # one network hiccup, then the file reads fine
        if "generations" in path and failures["left"]:
            failures["left"] -= 1
            raise OSError("connection reset by peer")
        return real(path)

    monkeypatch.setattr(store, "read_table", flaky)
    tally = Daemon(store, DaemonConfig(once=True, interval=0.01)).run()
    assert tally.quarantined == 0 and failures["left"] == 0
    assert not list(store_copy.glob("runs/*/quarantine/*/*"))


def test_an_interrupted_quarantine_is_completed(store_copy: Path) -> None:
    # A kill between writing the error record and moving the shard leaves both behind.
    store = Store(str(store_copy))
    ref = store.list_shards("run-a", "generations", "tinymmlu")[0]
    store.publish_json(store.shard_path("quarantine", ref, ".error.json"), {"error": "x"})
    _daemon(store_copy).run()
    assert not store.exists(store.shard_path("generations", ref))
    assert store.exists(store.shard_path("quarantine", ref))
    assert not store.exists(store.shard_path("scores", ref))


def test_a_stale_summary_is_recomputed(store_copy: Path) -> None:
    _daemon(store_copy).run()
    path = store_copy / "runs/run-a/summary.json"
    good = path.read_bytes()
    stale = json.loads(good)
    stale["tasks"]["tinymmlu"]["shards"]["scored"] -= 1  # written from an older listing
    path.write_text(json.dumps(stale))
    tally = _daemon(store_copy).run()
    assert tally.summaries >= 1
    assert path.read_bytes() == good


def test_stale_temp_files_and_finished_leases_are_swept(store_copy: Path) -> None:
    _daemon(store_copy).run()
    folder = store_copy / "runs/run-a/scores/tinymmlu"
    old_tmp = folder / ".0000000-0000004.parquet.tmp-deadbeef0000"
    old_tmp.write_bytes(b"half a file")
    past = time.time() - 3600
    os.utime(old_tmp, (past, past))
    young_tmp = folder / ".0000004-0000008.parquet.tmp-deadbeef0001"
    young_tmp.write_bytes(b"being written right now")
    lease = store_copy / "runs/run-a/claims/tinymmlu/0000000-0000004.json"
    lease.parent.mkdir(parents=True, exist_ok=True)
    lease.write_text(json.dumps({"owner": "gone", "host": "elsewhere", "pid": 1, "expires": 0}))
    _daemon(store_copy, lease=60.0).run()
    assert not old_tmp.exists() and not lease.exists()
    assert young_tmp.exists()  # might be a live writer's


def test_sigterm_style_stop_finishes_and_releases(store_copy: Path) -> None:
    stop = threading.Event()
    daemon = Daemon(Store(str(store_copy)), DaemonConfig(interval=0.05), stop)
    worker = threading.Thread(target=daemon.run)
    worker.start()
    deadline = time.monotonic() + 30
    while daemon.tally.scored < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    worker.join(10)
    assert not worker.is_alive()
    assert not list(store_copy.glob("runs/*/claims/*/*"))


# ---- leases ----------------------------------------------------------------------------
@pytest.fixture
def ref() -> ShardRef:
    return ShardRef("run-a", "tinymmlu", 0, 4)


def test_a_live_lease_excludes_others_until_released(tmp_path: Path, ref: ShardRef) -> None:
    store = Store(str(tmp_path))
    first, second = Leases(store, "one", 60), Leases(store, "two", 60)
    assert first.claim(ref)
    assert not second.claim(ref)
    second.release(ref)  # not its lease: must not delete it
    assert not second.claim(ref)
    first.release(ref)
    assert second.claim(ref)


def test_an_expired_lease_is_taken_over(tmp_path: Path, ref: ShardRef) -> None:
    store = Store(str(tmp_path))
    now = [1000.0]
    first = Leases(store, "one", 10, clock=lambda: now[0])
    second = Leases(store, "two", 10, clock=lambda: now[0])
    assert first.claim(ref)
    now[0] += 5
    assert not second.claim(ref)
    now[0] += 10
    assert second.claim(ref)
    assert json.loads(store.read_bytes(second.path(ref)))["owner"] == "two"
    first.release(ref)  # the old holder must not release the new holder's lease
    assert store.exists(second.path(ref))
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]


def test_a_dead_local_holder_is_taken_over_at_once(tmp_path: Path, ref: ShardRef) -> None:
    import socket
    import subprocess
    import sys

    store = Store(str(tmp_path))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    record = {
        "owner": "killed",
        "host": socket.gethostname(),
        "pid": int(dead.stdout),
        "expires": time.time() + 3600,
    }
    path = Leases(store, "x", 60).path(ref)
    store.publish_json(path, record)
    assert Leases(store, "fresh", 60).claim(ref)


def test_a_half_written_lease_waits_one_lease_period(tmp_path: Path, ref: ShardRef) -> None:
    store = Store(str(tmp_path))
    leases = Leases(store, "fresh", 60)
    store.publish_bytes(leases.path(ref), b"")
    assert not leases.claim(ref)
    past = time.time() - 120
    os.utime(leases.path(ref), (past, past))
    assert leases.claim(ref)


def test_bad_shard_fixtures_are_what_they_claim(store_copy: Path) -> None:
    good = next((store_copy / "runs/run-a/generations/tinymmlu").glob("*.parquet")).read_bytes()
    assert set(bad_shards(good)) == set(BAD_REASONS)
