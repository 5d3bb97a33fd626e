"""A private Ray head on loopback, for the demo and the tests.

Ray on a single machine binds to the host's network address even when told
127.0.0.1, unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is in the environment; with it,
every Ray service stays on loopback. The head runs with ``--block`` in its own process
group, so stopping it kills exactly this head, never another Ray on the machine
(``ray stop`` would stop them all).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared.errors import TandemError

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def ray_env() -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    return env


def ray_bin() -> str:
    candidate = Path(sys.executable).with_name("ray")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ray")
    if not found:
        raise TandemError("the `ray` command is missing: pip install 'tandem-eval[worker]'")
    return found


@dataclass(frozen=True)
class RayHead:
    gcs_address: str
    dashboard_url: str
    temp_dir: str


@contextmanager
def local_ray_head(num_cpus: int | None = None, timeout: float = 90.0) -> Iterator[RayHead]:
    """Start a Ray head on 127.0.0.1 with a temp dir of its own; stop and clean up after."""
    # Short path: Ray's unix socket paths must stay under ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="tandem-ray-", dir="/tmp")
    port, dashboard_port = free_port(), free_port()
    command = [
        ray_bin(),
        "start",
        "--head",
        "--block",
        f"--node-ip-address={LOOPBACK}",
        f"--port={port}",
        f"--dashboard-host={LOOPBACK}",
        f"--dashboard-port={dashboard_port}",
        "--include-dashboard=true",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--min-worker-port={20000}",
        f"--max-worker-port={29999}",
    ]
    if num_cpus:
        command.append(f"--num-cpus={num_cpus}")
    log_path = Path(temp_dir) / "head.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        command, env=ray_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    head = RayHead(f"{LOOPBACK}:{port}", f"http://{LOOPBACK}:{dashboard_port}", temp_dir)
    try:
        _wait_ready(head, process, timeout, log_path)
        yield head
    finally:
        _stop(process)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_ready(head: RayHead, process: subprocess.Popen, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TandemError(
                f"ray head exited early:\n{log_path.read_text(errors='replace')[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"{head.dashboard_url}/api/version", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TandemError(f"ray head not ready after {timeout:.0f} s; log: {log_path}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


def submit_job(head: RayHead, entrypoint: list[str], env: dict[str, str] | None = None) -> int:
    """``ray job submit`` the entrypoint and stream its logs; returns the job's exit status."""
    command = [ray_bin(), "job", "submit", "--address", head.dashboard_url]
    if env:
        import json

        command += ["--runtime-env-json", json.dumps({"env_vars": env})]
    command += ["--", *entrypoint]
    return subprocess.run(command, env=ray_env()).returncode
