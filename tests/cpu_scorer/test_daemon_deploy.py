"""The systemd units in deploy/ are well-formed and run the daemon the way it is built
to be run (restart policy, user, environment file, SIGTERM stop)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _keys(unit: Path) -> dict[str, str]:
    keys = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            keys[key.strip()] = value.strip()
    return keys


@pytest.mark.parametrize("name,command", [("tandem-scorer", "scorer"), ("tandem-serve", "serve")])
def test_units_name_user_environment_restart(name: str, command: str) -> None:
    keys = _keys(DEPLOY / f"{name}.service")
    assert keys["User"] == "tandem" and keys["Restart"] == "always"
    assert keys["EnvironmentFile"] == "/etc/tandem/tandem.env"
    assert keys["ExecStart"].split()[1] == command
    assert keys["KillSignal"] == "SIGTERM"
    example = (DEPLOY / "tandem-scorer.env.example").read_text()
    for variable in ("TANDEM_STORE=", "TANDEM_SCORER_ARGS=", "TANDEM_SERVE_ARGS=", "TANDEM_TOKEN="):
        assert variable in example


def test_the_scorer_caches_where_it_may_write() -> None:
    # ProtectHome=read-only: ~/.cache is not writable, so the cache goes to /var/cache.
    keys = _keys(DEPLOY / "tandem-scorer.service")
    assert keys["ProtectHome"] == "read-only"
    assert keys["CacheDirectory"] == "tandem"
    assert keys["Environment"] == "TANDEM_CACHE=%C/tandem"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_verify() -> None:
    done = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            str(DEPLOY / "tandem-scorer.service"),
            str(DEPLOY / "tandem-serve.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # The venv path does not exist on the test machine; anything else is a unit error.
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and "is not executable" not in line
    ]
    assert not problems, problems
