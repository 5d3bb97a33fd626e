"""The daemon as a process: SIGKILL at random points loses nothing, SIGTERM exits 0,
and two daemons on one store give exactly the results of one, without double work."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest
from conftest import add_bad_shards, fresh_copy, generate, spawn, stop, tree_bytes

from cpu_scorer.daemon import Daemon, DaemonConfig
from shared.store import Store

FAST = ("--interval", "0.05", "--lease", "1")


@pytest.fixture(scope="module")
def crash_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Many one-sample shards (so a kill lands mid-work) plus one of each bad kind."""
    root = tmp_path_factory.mktemp("crash") / "store"
    generate(str(root), "many", shard_size=1, limit={"ifeval": 40, "tinymmlu": 40})
    add_bad_shards(root, "many", "tinymmlu")
    return root


@pytest.fixture(scope="module")
def reference(crash_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same store scored by one uninterrupted daemon."""
    root = fresh_copy(crash_template, tmp_path_factory.mktemp("reference") / "store")
    Daemon(Store(str(root)), DaemonConfig(once=True, interval=0.05)).run()
    return root


def _scored_lines(log: Path) -> int:
    """Shards finished so far, per the logs: scored or quarantined."""
    text = log.read_text(errors="replace")
    return text.count(" INFO tandem.scorer: scored ") + text.count(
        " WARNING tandem.scorer: quarantined "
    )


def _pending(root: Path) -> set[str]:
    generated = {
        p.relative_to(root).as_posix().replace("/generations/", "/")
        for p in root.glob("runs/*/generations/*/*.parquet")
    }
    done = {
        p.relative_to(root).as_posix().replace("/scores/", "/")
        for p in root.glob("runs/*/scores/*/*.parquet")
    }
    done |= {
        p.relative_to(root)
        .as_posix()
        .replace("/quarantine/", "/")
        .replace(".error.json", ".parquet")
        for p in root.glob("runs/*/quarantine/*/*.error.json")
    }
    return generated - done


def _wait_for_work(log: Path, before: int, proc, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if _scored_lines(log) > before:
            return True
        time.sleep(0.01)
    return False


def _normalized_quarantine(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for path in sorted(root.glob("runs/*/quarantine/*/*")):
        key = path.relative_to(root).as_posix()
        if path.name.endswith(".error.json"):
            out[key] = json.loads(path.read_text().replace(str(root), "<store>"))
        else:
            out[key] = path.read_bytes()
    return out


def _assert_same_as_reference(root: Path, reference: Path) -> None:
    assert tree_bytes(root, "scores") == tree_bytes(reference, "scores")
    assert _normalized_quarantine(root) == _normalized_quarantine(reference)
    assert sorted(p.name for p in root.glob("runs/*/generations/*/*")) == sorted(
        p.name for p in reference.glob("runs/*/generations/*/*")
    )
    # Nothing half-written or left claimed; exactly one score shard per generation shard.
    assert not [p for p in root.rglob(".*") if p.is_file()]
    assert not list(root.glob("runs/*/claims/*/*"))
    generated = sorted(p.name for p in root.glob("runs/*/generations/*/*.parquet"))
    assert sorted(p.name for p in root.glob("runs/*/scores/*/*.parquet")) == generated


def _finish(root: Path, log: Path) -> None:
    # Temp files younger than a lease period might belong to a live writer; the last kill
    # was just now, so let one lease period (1 s) pass before the final daemon sweeps.
    time.sleep(1.1)
    proc = spawn("scorer", "--store", str(root), "--once", *FAST, log=log)
    assert proc.wait(120) == 0, log.read_text()[-3000:]


def _kill_repeatedly(root: Path, log: Path, kills: int, seed: int) -> int:
    rng = random.Random(seed)
    landed = 0
    for _ in range(kills):
        if not _pending(root):
            break  # all scored: later kills would only hit an idle daemon
        proc = spawn("scorer", "--store", str(root), *FAST, log=log)
        before = _scored_lines(log)
        if _wait_for_work(log, before, proc):
            # A random point inside the work: between claims, mid-score, mid-publish,
            # mid-summary or mid-quarantine.
            time.sleep(rng.uniform(0.0, 0.25))
            landed += 1
        proc.kill()
        proc.wait()
    return landed


def test_sigkill_at_random_points_loses_nothing(
    crash_template: Path, reference: Path, tmp_path: Path
) -> None:
    root = fresh_copy(crash_template, tmp_path / "store")
    log = tmp_path / "daemon.log"
    landed = _kill_repeatedly(root, log, kills=4, seed=1)
    print(f"{landed} kills landed mid-work")
    assert landed >= 2, "the kills should land while shards are being scored"
    _finish(root, log)
    _assert_same_as_reference(root, reference)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_sigkill_many_times(
    crash_template: Path, reference: Path, tmp_path: Path, seed: int
) -> None:
    root = fresh_copy(crash_template, tmp_path / "store")
    log = tmp_path / "daemon.log"
    landed = _kill_repeatedly(root, log, kills=12, seed=100 + seed)
    print(f"seed {seed}: {landed} kills landed mid-work")
    assert landed >= 2
    _finish(root, log)
    _assert_same_as_reference(root, reference)


def test_sigterm_finishes_the_shard_and_exits_zero(
    crash_template: Path, reference: Path, tmp_path: Path
) -> None:
    root = fresh_copy(crash_template, tmp_path / "store")
    log = tmp_path / "daemon.log"
    proc = spawn("scorer", "--store", str(root), *FAST, log=log)
    assert _wait_for_work(log, 0, proc)
    assert stop(proc) == 0
    text = log.read_text()
    assert "received SIGTERM" in text and "scorer: scored" in text
    assert not list(root.glob("runs/*/claims/*/*"))
    assert not [p for p in root.rglob(".*") if p.is_file()]
    _finish(root, log)
    _assert_same_as_reference(root, reference)


def test_two_daemons_give_the_results_of_one(
    crash_template: Path, reference: Path, tmp_path: Path
) -> None:
    root = fresh_copy(crash_template, tmp_path / "store")
    logs = [tmp_path / "one.log", tmp_path / "two.log"]
    procs = [spawn("scorer", "--store", str(root), "--once", *FAST, log=log) for log in logs]
    for proc, log in zip(procs, logs, strict=True):
        assert proc.wait(120) == 0, log.read_text()[-3000:]
    tallies = []
    for log in logs:
        match = re.search(r"scorer: scored (\d+), quarantined (\d+)", log.read_text())
        assert match, log.read_text()[-2000:]
        tallies.append((int(match[1]), int(match[2])))
    good = len(list(reference.glob("runs/*/scores/*/*.parquet")))
    bad = len(list(reference.glob("runs/*/quarantine/*/*.error.json")))
    # Each shard was scored (or quarantined) by exactly one of the two: no double work.
    assert sum(t[0] for t in tallies) == good
    assert sum(t[1] for t in tallies) == bad
    assert all(t[0] > 0 for t in tallies), f"both daemons should have worked: {tallies}"
    _assert_same_as_reference(root, reference)
