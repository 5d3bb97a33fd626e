"""The code-execution sandbox: HumanEval's canonical solutions pass, and each hazard the
issue names (an endless loop, a fork bomb, a 10 GB allocation, a write outside the
sandbox, a network connection) is contained, recorded, and followed by a program that
still passes. No wall-clock assertions: timings are in bench/sandbox_bench.py."""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path

import pytest

from cpu_scorer.sandbox import (
    UNSAFE_CODE_FLAG,
    Isolation,
    Limits,
    detect_isolation,
    require_confirmation,
    run_many,
    run_program,
)
from shared.errors import TandemError

HUMANEVAL = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "humaneval" / "HumanEval.jsonl"
)
FAST = Limits(wall_seconds=2.0)  # the hazards need no 3 s of lm-eval's timeout
GOOD = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n"


@pytest.fixture(scope="module")
def isolation() -> Isolation:
    return detect_isolation()


def humaneval() -> list[dict]:
    if not HUMANEVAL.is_file():
        pytest.skip(f"HumanEval not found at {HUMANEVAL}")
    return [json.loads(line) for line in HUMANEVAL.read_text(encoding="utf-8").splitlines()]


def program(doc: dict, completion: str) -> str:
    """As lm-eval's humaneval task and HF code_eval build it."""
    return doc["prompt"] + completion + "\n" + doc["test"] + "\n" + f"check({doc['entry_point']})\n"


def assert_keeps_going(isolation: Isolation) -> None:
    """The sandbox is still usable after a hazard: the next program passes."""
    outcome = run_program(GOOD, FAST, isolation)
    assert (outcome.status, outcome.message) == ("passed", "")


def survivors(marker: str) -> list[int]:
    """Host processes whose command line carries the marker (zombies have none)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return found


def test_every_humaneval_canonical_solution_passes(isolation):
    docs = humaneval()
    assert len(docs) == 164
    outcomes = run_many([program(d, d["canonical_solution"]) for d in docs], isolation=isolation)
    failures = {
        d["task_id"]: o for d, o in zip(docs, outcomes, strict=True) if o.status != "passed"
    }
    assert failures == {}


def test_a_wrong_solution_fails_with_its_exception(isolation):
    doc = humaneval()[0]  # has_close_elements: "never close" is wrong for the first case
    outcome = run_program(program(doc, "    return False\n"), Limits(), isolation)
    assert (outcome.status, outcome.message) == ("failed", "AssertionError")
    broken = run_program(program(doc, "    return undefined_name\n"), Limits(), isolation)
    assert (broken.status, broken.message) == (
        "failed",
        "NameError: name 'undefined_name' is not defined",
    )


def test_an_endless_loop_is_killed_at_the_wall_clock_limit(isolation):
    outcome = run_program("while True:\n    pass\n", Limits(wall_seconds=1.0), isolation)
    assert (outcome.status, outcome.message) == ("timeout", "wall-clock limit of 1 s")
    assert outcome.seconds >= 1.0
    assert_keeps_going(isolation)


def test_cpu_time_limit_stops_a_program_that_outlives_its_wall_clock(isolation):
    limits = Limits(wall_seconds=60.0, cpu_seconds=1)
    outcome = run_program("while True:\n    pass\n", limits, isolation)
    assert (outcome.status, outcome.message) == ("timeout", "CPU-time limit of 1 s")


def test_a_fork_bomb_is_contained(isolation):
    bomb = "import os\nwhile True:\n    os.fork()\n"
    outcome = run_program(bomb, FAST, isolation)
    assert outcome.status in ("failed", "timeout")
    assert outcome.message
    assert_keeps_going(isolation)


def test_the_process_limit_holds_and_no_process_outlives_the_program(isolation):
    # Each child becomes a `sleep` with a marker in its command line, so the test can
    # look for survivors on the host; the parent counts until fork is refused.
    marker = f"600.{secrets.randbelow(10**9):09d}"
    source = (
        "import os\n"
        "n = 0\n"
        "try:\n"
        "    while n < 1000:\n"
        "        if os.fork() == 0:\n"
        f"            os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
        "        n += 1\n"
        "except OSError as exc:\n"
        "    raise SystemExit(f'fork refused after {n} children: {exc.strerror}')\n"
    )
    limits = Limits(wall_seconds=10.0, processes=8)
    outcome = run_program(source, limits, isolation)
    assert outcome.status == "failed", outcome
    assert outcome.message.startswith("SystemExit: fork refused after ")
    children = int(outcome.message.split()[4])
    assert children < limits.processes
    assert survivors(marker) == []
    assert_keeps_going(isolation)


def test_a_10_gb_allocation_is_a_memory_error(isolation):
    outcome = run_program("block = bytearray(10 * 1000**3)\n", FAST, isolation)
    assert (outcome.status, outcome.message) == ("failed", "MemoryError")
    assert_keeps_going(isolation)


def test_writing_outside_the_sandbox_leaves_nothing(isolation, tmp_path):
    if not isolation.root:
        pytest.skip("not root: programs run as this user and can write where it can")
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o777)
    outside.chmod(0o777)  # even a world-writable folder: the sandbox user cannot reach it
    target = outside / "pwned.txt"
    outcome = run_program(f"open({str(target)!r}, 'w').write('pwned')\n", FAST, isolation)
    assert outcome.status == "failed"
    assert outcome.message.startswith(("PermissionError", "FileNotFoundError")), outcome
    assert not target.exists()
    assert_keeps_going(isolation)


def test_tmp_is_private_to_each_program(isolation):
    if isolation.unshare is None:
        pytest.skip("no mount namespace here: /tmp is the host's")
    name = f"tandem-sandbox-test-{secrets.token_hex(8)}"
    source = (
        f"for d in ('/tmp', '/var/tmp', '/dev/shm'):\n    open(d + '/{name}', 'w').write('x')\n"
    )
    assert run_program(source, FAST, isolation).status == "passed"
    for folder in ("/tmp", "/var/tmp", "/dev/shm"):
        assert not Path(folder, name).exists()


def test_a_network_connection_is_refused(isolation):
    if isolation.unshare is None:
        pytest.skip("no network namespace here: the sandbox does not block the network")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        source = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        outcome = run_program(source, FAST, isolation)
        assert outcome.status == "failed"
        assert outcome.message.startswith("OSError: [Errno 101]"), outcome  # unreachable
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()
    assert_keeps_going(isolation)


def test_no_secret_of_the_scorer_reaches_the_program(isolation, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    source = (
        "import os\n"
        "assert 'AWS_SECRET_ACCESS_KEY' not in os.environ, 'inherited'\n"
        "assert set(os.environ) <= {'PATH', 'LANG', 'LC_ALL', 'HOME', 'TMPDIR'}, set(os.environ)\n"
        "try:\n"
        f"    seen = open('/proc/{os.getpid()}/environ', 'rb').read()\n"
        "except OSError:\n"
        "    seen = b''\n"
        "assert b'hunter2' not in seen, 'read from /proc'\n"
    )
    assert run_program(source, FAST, isolation).status == "passed"


def test_exiting_early_is_a_failure_as_in_lm_eval(isolation):
    # A completion that calls exit() before check() runs must not count as solved.
    for source, message in (
        ("import sys\nsys.exit(0)\nassert False\n", "SystemExit: 0"),
        ("exit()\n", "SystemExit: None"),
        ("import os\nos._exit(0)\n", "exited before the end of the program (os._exit?)"),
    ):
        outcome = run_program(source, FAST, isolation)
        assert (outcome.status, outcome.message) == ("failed", message)


def test_a_crash_is_an_error_and_a_big_file_a_failure(isolation):
    crash = run_program("import ctypes\nctypes.string_at(0)\n", FAST, isolation)
    assert (crash.status, crash.message) == ("error", "killed by SIGSEGV")
    flood = run_program("print('x' * (20 << 20))\n", Limits(file_bytes=1 << 20), isolation)
    assert (flood.status, flood.message) == ("failed", "OSError: [Errno 27] File too large")


def test_run_many_keeps_order_and_one_outcome_per_program(isolation):
    sources = [
        GOOD,
        "assert 1 == 2\n",
        "while True:\n    pass\n",
        GOOD,
        "import os\nwhile True:\n    os.fork()\n",
        "block = bytearray(10 * 1000**3)\n",
        "raise ValueError('bad input')\n",
        GOOD,
    ]
    outcomes = run_many(sources, Limits(wall_seconds=1.0), workers=3, isolation=isolation)
    statuses = [o.status for o in outcomes]
    assert statuses[:4] == ["passed", "failed", "timeout", "passed"]
    assert statuses[4] in ("failed", "timeout")
    assert statuses[5:] == ["failed", "failed", "passed"]
    assert outcomes[6].message == "ValueError: bad input"
    assert run_many([], isolation=isolation) == []


def test_a_sandbox_that_cannot_start_is_an_error_outcome(tmp_path):
    broken = Isolation(python=str(tmp_path / "no-python"), unshare=None, root=False)
    outcome = run_program(GOOD, FAST, broken)
    assert outcome.status == "error"
    assert "no-python" in outcome.message


def test_running_model_code_needs_the_flag():
    with pytest.raises(TandemError, match=UNSAFE_CODE_FLAG):
        require_confirmation(False, "humaneval")
    require_confirmation(True, "humaneval")


def test_limits_must_be_positive():
    with pytest.raises(TandemError, match="wall_seconds must be positive"):
        Limits(wall_seconds=0)
