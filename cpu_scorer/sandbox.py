"""Run untrusted, model-written programs (HumanEval, MBPP) in a sandbox, one child each.

    isolation = detect_isolation()                  # once: what this machine allows
    outcomes = run_many(programs, Limits(), isolation=isolation)

Each program runs in its own process tree and temporary directory, with CPU-time,
address-space, file-size and process-count limits, a wall-clock timeout, a clean
environment and, where ``unshare`` works, its own network, PID, IPC, UTS and mount
namespaces with private, size-capped ``/tmp``-like directories. Run as root, every
program gets a fresh unprivileged uid. What this contains and what it does not is
written in docs/tasks.md ("Running model-written code"); running model code is opt-in
(``require_confirmation``). Standard library only: the scorer tier never needs more.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Literal

from shared.errors import TandemError

log = logging.getLogger(__name__)

Status = Literal["passed", "failed", "timeout", "error"]

UNSAFE_CODE_FLAG = "--confirm-run-unsafe-code"
UNSAFE_CODE_WARNING = (
    "This run executes programs written by the model. Each runs sandboxed (own process "
    "tree and temp directory, time/memory/file/process limits, no network where the kernel "
    "allows a network namespace, no inherited environment), but a sandbox is not a "
    "guarantee: see docs/tasks.md, 'Running model-written code'."
)

_SETUP_EXIT = 125  # the launcher could not set the sandbox up (not the program's fault)
_STDERR_TAIL = 8192  # bytes of stderr kept to find the exception line
_MESSAGE_CHARS = 300
# Fresh uids for programs run as root: above the ranges distributions and container
# tools hand out (systemd's container range ends at 0x6FFFFFFF; /etc/subuid ranges
# start at 100000), so no account owns files under them. One uid per program because
# RLIMIT_NPROC counts per uid: programs sharing "nobody" would eat each other's quota.
_UID_BASE = 0x7E000000
_UID_COUNT = 1 << 20
# Stdlib modules the launcher has not loaded: importing them as the sandbox user proves
# that user can read the interpreter's library (a pyenv under /root/ cannot be).
_PROBE = "import decimal, fractions, statistics\nassert statistics.mean([1, 2]) == 1.5\n"


@dataclass(frozen=True)
class Limits:
    """Per-program limits. The wall clock decides timeouts; the others stop runaways."""

    wall_seconds: float = 3.0  # lm-eval 0.4.13's humaneval/mbpp timeout, for comparable pass@1
    cpu_seconds: int = 10  # per process; a backstop for processes that outlive the wall kill
    memory_bytes: int = 1 << 30  # address space per process: a 10 GB list is a MemoryError
    file_bytes: int = 10 << 20  # any one file, stdout and stderr included
    processes: int = 16  # processes and threads of the program's uid (its own uid as root)
    network: bool = False  # True keeps the host network (no network namespace)

    def __post_init__(self) -> None:
        for name in ("wall_seconds", "cpu_seconds", "memory_bytes", "file_bytes", "processes"):
            if not getattr(self, name) > 0:
                raise TandemError(
                    f"sandbox limit {name} must be positive, got {getattr(self, name)!r}"
                )


@dataclass(frozen=True)
class Outcome:
    """How one program ended. ``passed``: ran to its end; ``failed``: raised or exited
    (SystemExit too, as in lm-eval); ``timeout``: hit the wall-clock or CPU limit;
    ``error``: killed by a signal, or the sandbox could not run it."""

    status: Status
    message: str  # the exception line, the signal or the limit hit; "" when passed
    seconds: float


@dataclass(frozen=True)
class Isolation:
    """How programs are isolated on this machine (from ``detect_isolation``)."""

    python: str  # the interpreter that runs the programs
    unshare: str | None  # util-linux unshare, or None: no namespaces (network NOT blocked)
    root: bool  # the scorer runs as root: each program runs as a fresh unprivileged uid

    def describe(self) -> str:
        """One line for the log: what is isolated and what is not."""
        parts = [f"python {self.python}"]
        if self.unshare:
            parts.append("own network, pid, ipc, uts and mount namespaces; private /tmp")
        else:
            parts.append("NO namespaces: the network is not blocked, /tmp is shared")
        if self.root:
            parts.append("each program as a fresh unprivileged uid")
        else:
            parts.append("programs run as this user and can write wherever it can")
        return "; ".join(parts)


def require_confirmation(confirmed: bool, task: str) -> None:
    """Refuse to score a code task unless the user opted in to running model code."""
    if not confirmed:
        raise TandemError(
            f"task {task!r} runs programs written by the model on this machine; they run "
            f"sandboxed, but only if you say so: pass {UNSAFE_CODE_FLAG} (see docs/tasks.md, "
            "'Running model-written code', for what the sandbox contains and what it does not)"
        )


def detect_isolation(python: str | None = None) -> Isolation:
    """The strongest isolation that works here, found by running a probe program in each
    candidate: namespaces before none, then each interpreter the sandbox user can run.
    Raises TandemError naming every attempt when none works."""
    root = os.geteuid() == 0
    unshare = shutil.which("unshare")
    tried = []
    for namespaces in [unshare, None] if unshare else [None]:
        for exe in [python] if python else _interpreters():
            candidate = Isolation(python=exe, unshare=namespaces, root=root)
            outcome = run_program(_PROBE, Limits(wall_seconds=20), candidate)
            if outcome.status == "passed":
                if namespaces is None:
                    log.warning("sandbox without namespaces: %s", candidate.describe())
                else:
                    log.info("sandbox: %s", candidate.describe())
                return candidate
            tried.append(f"{candidate.describe()} -> {outcome.status}: {outcome.message}")
    raise TandemError(
        "cannot run sandboxed programs here; tried: "
        + " | ".join(tried)
        + ". Install util-linux (unshare) and a python3 readable by all users."
    )


def _interpreters() -> list[str]:
    """This interpreter, then the system ones: as root the programs run as another uid,
    which cannot read an interpreter under a private home such as /root/.pyenv."""
    found: dict[str, str] = {}
    for path in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if path and os.access(path, os.X_OK):
            found.setdefault(os.path.realpath(path), path)
    return list(found.values())


def run_many(
    sources: list[str],
    limits: Limits | None = None,
    workers: int | None = None,
    isolation: Isolation | None = None,
) -> list[Outcome]:
    """One Outcome per source, in order, running ``workers`` programs at a time (default:
    the cores this process may use). A program that hangs, crashes or exhausts a limit
    gives its own Outcome and never stops the others."""
    limits = Limits() if limits is None else limits
    isolation = detect_isolation() if isolation is None else isolation
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    # Threads suffice: each one only waits on its child process, which does the work.
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda source: run_program(source, limits, isolation), sources))


def run_program(
    source: str, limits: Limits | None = None, isolation: Isolation | None = None
) -> Outcome:
    """Run one program in the sandbox and say how it ended; never raises for anything the
    program does. Pass ``isolation`` when running many (detection runs probe programs)."""
    limits = Limits() if limits is None else limits
    isolation = detect_isolation() if isolation is None else isolation
    start = time.monotonic()
    box = None
    try:
        box = tempfile.mkdtemp(prefix="tandem-sandbox-")
        with open(os.path.join(box, "main.py"), "w", encoding="utf-8") as file:
            file.write(source)
        return _run_in(box, limits, isolation, start)
    except (OSError, UnicodeError, subprocess.SubprocessError) as exc:
        return Outcome("error", _clip(f"sandbox: {exc}"), time.monotonic() - start)
    finally:
        if box is not None:
            shutil.rmtree(box, ignore_errors=True)
            if os.path.exists(box):
                log.warning("sandbox directory %s could not be removed", box)


def _run_in(box: str, limits: Limits, isolation: Isolation, start: float) -> Outcome:
    nonce = secrets.token_hex(16)
    config = {
        "rlimits": [
            # soft < hard for CPU: SIGXCPU first (reported as a CPU timeout), SIGKILL after.
            ("RLIMIT_CPU", limits.cpu_seconds, limits.cpu_seconds + 1),
            ("RLIMIT_AS", limits.memory_bytes, limits.memory_bytes),
            ("RLIMIT_FSIZE", limits.file_bytes, limits.file_bytes),
            ("RLIMIT_NPROC", limits.processes, limits.processes),
            ("RLIMIT_CORE", 0, 0),
        ],
        "uid": _UID_BASE + secrets.randbelow(_UID_COUNT) if isolation.root else None,
        "private_tmp": isolation.unshare is not None,
        "tmpfs": f"size={2 * limits.file_bytes},mode=1777",
        "nonce": nonce,
        "setup_exit": _SETUP_EXIT,
    }
    launch = [isolation.python, "-I", "-c", _LAUNCHER, json.dumps(config)]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            _namespaces(isolation, limits) + launch,
            cwd=box,
            env=env,  # nothing inherited: no tokens, keys or proxies reach the program
            stdin=subprocess.DEVNULL,
            stdout=out,  # files, not pipes: a leftover holding a pipe cannot stall us,
            stderr=err,  # and RLIMIT_FSIZE caps what the program can print
            start_new_session=True,
        )
        try:
            finished = _wait_unreaped(process, limits.wall_seconds)
        finally:
            # The group is killed while its leader is still unreaped, so the group id
            # cannot have been reused by an unrelated process; it also takes leftovers.
            _kill_group(process.pid)
            process.wait()
        seconds = time.monotonic() - start
        if not finished:
            return Outcome("timeout", f"wall-clock limit of {limits.wall_seconds:g} s", seconds)
        status, message = _verdict(process.returncode, _tail(out, len(nonce)), _tail(err), nonce)
        if status == "timeout":
            message = f"CPU-time limit of {limits.cpu_seconds} s"
        return Outcome(status, _clip(message), seconds)


def _namespaces(isolation: Isolation, limits: Limits) -> list[str]:
    if isolation.unshare is None:
        return []
    # --kill-child: when unshare dies (our SIGKILL at the timeout), so does the PID
    # namespace's init, and the kernel kills everything left in the namespace with it.
    command = [isolation.unshare]
    if not isolation.root:
        command.append("--map-root-user")  # a user namespace lets a plain user make the rest
    if not limits.network:
        command.append("--net")  # no interface but a down loopback: nothing to connect to
    return command + ["--pid", "--ipc", "--uts", "--kill-child", "--mount-proc", "--"]


def _wait_unreaped(process: subprocess.Popen[bytes], seconds: float) -> bool:
    """Whether the process ended within ``seconds``, leaving it unreaped. A pidfd wakes
    at once; Popen.wait(timeout) polls every 50 ms, a visible share of a 20 ms program."""
    if not hasattr(os, "pidfd_open"):
        try:
            process.wait(seconds)
            return True
        except subprocess.TimeoutExpired:
            return False
    pidfd = os.pidfd_open(process.pid)
    try:
        return bool(select.select([pidfd], [], [], seconds)[0])
    finally:
        os.close(pidfd)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left, or only processes that already changed uid and died


def _verdict(code: int, stdout_tail: str, stderr: str, nonce: str) -> tuple[Status, str]:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if code == 0:
        if stdout_tail == nonce:  # written by the launcher after the program's last line
            return "passed", ""
        return "failed", "exited before the end of the program (os._exit?)"
    if code == _SETUP_EXIT and last.startswith("sandbox:"):
        return "error", last
    if code > 128 and last.startswith("killed by"):
        signum = code - 128
        if signum == signal.SIGXCPU:
            return "timeout", last
        return "error", last
    if code < 0:  # unshare or the launcher itself was killed
        return "error", f"sandbox killed by {signal.Signals(-code).name}"
    return "failed", last or f"exit status {code}"


def _tail(file: IO[bytes], size: int = _STDERR_TAIL) -> str:
    file.seek(0, os.SEEK_END)
    file.seek(max(0, file.tell() - size))
    return file.read().decode("utf-8", "replace")


def _clip(message: str) -> str:
    return message if len(message) <= _MESSAGE_CHARS else message[: _MESSAGE_CHARS - 3] + "..."


# Runs in the child, started by the sandbox's own interpreter with -I (no environment
# variables, no user site, no cwd on sys.path). As PID 1 of its namespace when there is
# one: it sets the limits up, forks the program and reports how it ended, because the
# kernel drops signals a PID 1 has no handler for -- the program must not be PID 1, or
# SIGXCPU would never stop it. The program is not given a file path to run but exec'd
# as __main__, so an exit() is caught and counted as a failure, as lm-eval does.
_LAUNCHER = r"""
import json, os, resource, signal, sys, traceback, types
cfg = json.loads(sys.argv[1])
uid = cfg["uid"]

def setup_failed(message):
    sys.stderr.write("sandbox: " + message + "\n")
    sys.stderr.flush()
    os._exit(cfg["setup_exit"])

try:
    for name, soft, hard in cfg["rlimits"]:
        kind = getattr(resource, name)
        ceiling = resource.getrlimit(kind)[1]
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        resource.setrlimit(kind, (soft, hard))
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")  # if memory runs out, the kernel kills a sandboxed program first
    with open("main.py", "rb") as f:
        source = f.read()
    if cfg["private_tmp"]:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        for path in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock"):
            nosuid_nodev = 2 | 4
            if os.path.isdir(path) and libc.mount(
                b"tmpfs", path.encode(), b"tmpfs", nosuid_nodev, cfg["tmpfs"].encode()
            ):
                raise OSError(ctypes.get_errno(), "cannot mount a tmpfs on " + path)
        os.mkdir("/tmp/sandbox", 0o700)
        os.chdir("/tmp/sandbox")
        with open("main.py", "wb") as f:
            f.write(source)
    if uid is not None:
        for path in (".", "main.py"):
            os.chown(path, uid, uid)
    pid = os.fork()
except OSError as exc:
    setup_failed(str(exc))

if pid:
    status = os.waitpid(pid, 0)[1]
    if os.WIFSIGNALED(status):
        sys.stderr.write("killed by " + signal.Signals(os.WTERMSIG(status)).name + "\n")
        sys.stderr.flush()
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status))

try:
    if uid is not None:
        import ctypes
        ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no setuid binaries
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
except OSError as exc:
    setup_failed("cannot drop privileges: " + str(exc))
os.environ["HOME"] = os.environ["TMPDIR"] = os.getcwd()
main = types.ModuleType("__main__")
main.__file__ = "main.py"
sys.modules["__main__"] = main
sys.argv = ["main.py"]
code = 1
try:
    exec(compile(source, "main.py", "exec"), main.__dict__)
    sys.stdout.flush()
    code = 0
except BaseException:
    traceback.print_exc()
sys.stderr.flush()
if code == 0:
    os.write(1, cfg["nonce"].encode())
os._exit(code)
"""
