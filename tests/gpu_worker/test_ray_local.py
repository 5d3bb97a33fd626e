"""gpu_worker.ray_local's cleanup, without starting Ray: a process group whose leader
already exited is still stopped, and a head that fails to start leaves nothing behind."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from gpu_worker import ray_local


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_stop_kills_the_group_after_its_leader_exited() -> None:
    # The leader starts a member of its group and exits, as `ray start --block` does
    # once its raylet is killed.
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo $!"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert leader.stdout is not None
    member = int(leader.stdout.readline())
    leader.wait(timeout=30)
    leader.stdout.close()
    assert not _gone(member)
    ray_local._stop(leader)
    for _ in range(200):  # SIGKILL is delivered at once; the wait is for /proc to catch up
        if _gone(member):
            break
        time.sleep(0.05)
    assert _gone(member)


def test_head_that_cannot_start_removes_its_temp_dir(tmp_path, monkeypatch) -> None:
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(**kwargs) -> str:
        made.append(real_mkdtemp(prefix="tandem-ray-", dir=tmp_path))
        return made[-1]

    def no_popen(*args, **kwargs):
        raise OSError("cannot execute ray")

    monkeypatch.setattr(ray_local.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(ray_local, "ray_bin", lambda: "/bin/true")
    monkeypatch.setattr(ray_local.subprocess, "Popen", no_popen)
    with pytest.raises(OSError, match="cannot execute ray"):
        with ray_local.local_ray_head():
            pass
    assert made and not Path(made[0]).exists()


def test_missing_ray_command_makes_no_temp_dir(tmp_path, monkeypatch) -> None:
    def missing() -> str:
        raise ray_local.TandemError("the `ray` command is missing")

    made: list[str] = []
    monkeypatch.setattr(ray_local.tempfile, "mkdtemp", lambda **kw: made.append("x") or "x")
    monkeypatch.setattr(ray_local, "ray_bin", missing)
    with pytest.raises(ray_local.TandemError, match="missing"):
        with ray_local.local_ray_head():
            pass
    assert not made
