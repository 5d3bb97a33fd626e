"""A private Ray head on loopback, for the demo and the tests.

Ray on a single machine binds to the host's network address even when told
127.0.0.1, unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is in the environment; with it,
every Ray service stays on loopback. The head runs with ``--block`` in its own process
group, so stopping it kills exactly this head, never another Ray on the machine
(``ray stop`` would stop them all).

``local_ray_cluster`` adds worker nodes on the same machine, each its own ``ray start
--block`` process group with its own ports and resources (a custom resource such as
``{"gpu_slot": 1}`` stands in for a GPU), all under the head's temp dir. A node's
raylet can be SIGKILLed to play a lost machine.
"""

from __future__ import annotations

import json
import os
import secrets
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
from dataclasses import dataclass, field
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
def local_ray_head(
    num_cpus: int | None = None,
    timeout: float = 90.0,
    resources: dict[str, float] | None = None,
) -> Iterator[RayHead]:
    """Start a Ray head on 127.0.0.1 with a temp dir of its own; stop and clean up after."""
    ray = ray_bin()  # before anything is made that would need cleaning up
    # Short path: Ray's unix socket paths must stay under ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="tandem-ray-", dir="/tmp")
    port, dashboard_port = free_port(), free_port()
    command = [
        ray,
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
    if num_cpus is not None:  # 0 is a head that runs no tasks
        command.append(f"--num-cpus={num_cpus}")
    if resources:
        command.append(f"--resources={json.dumps(resources)}")
    log_path = Path(temp_dir) / "head.log"
    head = RayHead(f"{LOOPBACK}:{port}", f"http://{LOOPBACK}:{dashboard_port}", temp_dir)
    process: subprocess.Popen | None = None
    try:
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                env=ray_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # The child holds its own descriptor of the log.
        _wait_ready(head, process, timeout, log_path)
        yield head
    finally:
        if process is not None:
            _stop(process)
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


# Seconds a head or node gets to exit on SIGTERM before its group is SIGKILLed. A quiet
# `ray start --block` exits in about 2 s, but about one stop in three here it never does
# (the leader and one child stay up while the rest are zombies), and a private head
# keeps nothing worth a graceful exit: its temp dir is removed right after.
STOP_GRACE_SECONDS = 5.0


def _stop(process: subprocess.Popen) -> None:
    """Stop the process group ``process`` leads (its own session), every member of it.

    The leader may have exited already (``ray start --block`` exits by itself once its
    raylet is killed) while other members of its group still run: the group is signalled
    all the same. Its id cannot have been reused while any member is left (Linux keeps a
    process group id from reuse until the group is empty); an empty group is
    ProcessLookupError.
    """
    if process.poll() is None:
        _killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
    # Whatever of the group outlived the leader (or ignored SIGTERM).
    _killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def processes_naming(text: str) -> list[str]:
    """Command lines (first 200 characters) of running processes that mention ``text``:
    what is left of a head whose temp dir it is (Ray's head, raylets, workers and agents
    all name their session's temp dir)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(command[:200])
    return found


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # nobody is left in the group


def submit_command(
    head: RayHead | RayCluster,
    entrypoint: list[str],
    env: dict[str, str] | None = None,
    submission_id: str | None = None,
) -> list[str]:
    """The ``ray job submit`` command line for the entrypoint (run it with ``ray_env()``)."""
    command = [ray_bin(), "job", "submit", "--address", head.dashboard_url]
    if submission_id:
        command += ["--submission-id", submission_id]
    if env:
        command += ["--runtime-env-json", json.dumps({"env_vars": env})]
    return [*command, "--", *entrypoint]


def submit_job(
    head: RayHead | RayCluster, entrypoint: list[str], env: dict[str, str] | None = None
) -> int:
    """``ray job submit`` the entrypoint and stream its logs; returns the job's exit status.

    Interrupted (Ctrl-C), it stops the job before it re-raises: a submitted job runs on
    without the CLI that tails it, and its driver runs in a session of its own, so
    stopping the head would leave the driver behind (and the head waits on it)."""
    submission_id = f"tandem-{secrets.token_hex(6)}"
    command = submit_command(head, entrypoint, env, submission_id)
    try:
        return subprocess.run(command, env=ray_env()).returncode
    except KeyboardInterrupt:
        print(f"stopping Ray job {submission_id} ...", file=sys.stderr, flush=True)
        stop_job(head, submission_id)
        raise


def stop_job(head: RayHead | RayCluster, submission_id: str, timeout: float = 60.0) -> None:
    """``ray job stop`` and wait until the job has ended (Ray sends its driver SIGTERM,
    then SIGKILL). Its own session: a second Ctrl-C must not cut the stop short. A stop
    that fails says so with Ray's words (a job interrupted before it was submitted is
    "not found")."""
    command = [ray_bin(), "job", "stop", "--address", head.dashboard_url, submission_id]
    try:
        done = subprocess.run(
            command,
            env=ray_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        print(f"Ray job {submission_id} did not stop within {timeout:.0f} s", file=sys.stderr)
        return
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        print(
            f"ray job stop {submission_id} failed (exit {done.returncode}): "
            + (lines[-1] if lines else "no output"),
            file=sys.stderr,
        )


# --- several nodes on one machine -------------------------------------------------------


@dataclass
class RayNode:
    """One worker node of a ``local_ray_cluster``: a ``ray start --block`` process group."""

    name: str
    resources: dict[str, float]
    process: subprocess.Popen
    log_path: Path
    node_id: str = ""

    def raylet_pid(self) -> int:
        """The pid of this node's raylet (a member of the node's process group)."""
        for pid in _group_members(self.process.pid):
            if _read_proc(pid, "comm").strip() == "raylet":
                return pid
        raise TandemError(f"ray node {self.name}: no raylet is running (log: {self.log_path})")

    def kill_raylet(self) -> int:
        """SIGKILL this node's raylet, as if the machine were lost; returns its pid.

        The node's workers lose their raylet and exit; the GCS marks the node dead.
        """
        pid = self.raylet_pid()
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        _stop(self.process)


@dataclass
class RayCluster:
    """A head plus worker nodes on 127.0.0.1 (see ``local_ray_cluster``)."""

    head: RayHead
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def gcs_address(self) -> str:
        return self.head.gcs_address

    @property
    def dashboard_url(self) -> str:
        return self.head.dashboard_url

    @property
    def temp_dir(self) -> str:
        return self.head.temp_dir

    def node(self, name: str) -> RayNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise TandemError(f"no ray node {name!r}; nodes: {[n.name for n in self.nodes]}")

    def alive_node_ids(self) -> set[str]:
        """Node ids the GCS reports ALIVE (through the dashboard's state API)."""
        return {n["node_id"] for n in list_nodes(self.dashboard_url) if n["state"] == "ALIVE"}


def list_nodes(dashboard_url: str) -> list[dict]:
    """The cluster's nodes as the state API lists them (node_id, state, resources_total)."""
    url = f"{dashboard_url}/api/v0/nodes?limit=1000&detail=1"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.load(reply)["data"]["result"]["result"]


@contextmanager
def local_ray_cluster(
    workers: list[dict[str, float]],
    num_cpus_per_worker: int = 1,
    head_num_cpus: int = 1,
    head_resources: dict[str, float] | None = None,
    timeout: float = 120.0,
) -> Iterator[RayCluster]:
    """A Ray head and one worker node per entry of ``workers`` (its custom resources).

    Every node runs on 127.0.0.1 with ports of its own, shares the head's temp dir and
    is its own process group; all are alive when this yields. On exit every node is
    stopped (worker nodes first) and the temp dir removed.
    """
    with local_ray_head(num_cpus=head_num_cpus, timeout=timeout, resources=head_resources) as head:
        cluster = RayCluster(head)
        try:
            # One at a time: a raylet gets a fixed 30 s to register with the GCS, which
            # two starting at once on a small, busy machine can miss.
            for index, resources in enumerate(workers, start=1):
                cluster.nodes.append(_start_node(head, index, resources, num_cpus_per_worker))
                _wait_nodes(cluster, timeout)
            yield cluster
        finally:
            for node in cluster.nodes:
                node.stop()


def _start_node(head: RayHead, index: int, resources: dict[str, float], num_cpus: int) -> RayNode:
    name = f"worker-{index}"
    # gpu_worker._ray_node is `ray start` that may join a head on loopback (see there).
    # Every port is chosen here: two raylets on one host must not share any of them.
    # Worker ports: the head uses 20000-29999; below it, out of the ephemeral range
    # (32768+ on Linux) that free_port() draws this node's other ports from.
    low = 10000 + 1000 * index
    command = [
        sys.executable,
        "-m",
        "gpu_worker._ray_node",
        f"--address={head.gcs_address}",
        "--block",
        f"--node-ip-address={LOOPBACK}",
        f"--num-cpus={num_cpus}",
        f"--resources={json.dumps(resources)}",
        f"--temp-dir={head.temp_dir}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--min-worker-port={low}",
        f"--max-worker-port={low + 999}",
        "--disable-usage-stats",
    ]
    log_path = Path(head.temp_dir) / f"{name}.log"
    with log_path.open("wb") as log:  # the child holds its own descriptor
        process = subprocess.Popen(
            command, env=ray_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return RayNode(name, dict(resources), process, log_path)


def _wait_nodes(cluster: RayCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in cluster.nodes:
            if node.process.poll() is not None:
                raise TandemError(
                    f"ray node {node.name} exited early:\n"
                    f"{node.log_path.read_text(errors='replace')[-3000:]}"
                )
        ids = _raylet_node_ids(cluster.nodes)
        if ids is not None:
            try:
                alive = cluster.alive_node_ids()
            except OSError:
                alive = set()
            if set(ids) <= alive and len(alive) == len(cluster.nodes) + 1:
                for node, node_id in zip(cluster.nodes, ids, strict=True):
                    node.node_id = node_id
                return
        time.sleep(0.5)
    raise TandemError(f"ray nodes not all alive after {timeout:.0f} s; logs in {cluster.temp_dir}")


def _raylet_node_ids(nodes: list[RayNode]) -> list[str] | None:
    """Each node's id, read from its raylet's command line (None until all have one)."""
    ids = []
    for node in nodes:
        try:
            pid = node.raylet_pid()
        except TandemError:
            return None
        args = _read_proc(pid, "cmdline").split("\0")
        found = [a.split("=", 1)[1] for a in args if a.startswith("--node_id=")]
        if not found:
            return None
        ids.append(found[0])
    return ids


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) == pgid:
                members.append(int(entry))
        except (ProcessLookupError, PermissionError):
            continue
    return members


def _read_proc(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text(errors="replace")
    except OSError:
        return ""
