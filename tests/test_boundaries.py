"""The tier boundaries: the scorer never loads torch; shared imports only its allowed deps."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "vllm", "unsloth", "ray", "peft", "bitsandbytes")


def test_importing_the_scorer_never_loads_torch():
    modules = sorted(
        "cpu_scorer." + ".".join(p.relative_to(REPO / "cpu_scorer").with_suffix("").parts)
        for p in (REPO / "cpu_scorer").rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    )
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"cpu_scorer loaded {result.stdout.strip()}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_shared_imports_only_stdlib_pyarrow_pydantic():
    allowed = set(sys.stdlib_module_names) | {
        "pyarrow",
        "pydantic",
        "shared",
        "yaml",
        "tomli",
        "datasets",
    }
    for path in (REPO / "shared").rglob("*.py"):
        extra = _imports(path) - allowed
        assert not extra, f"{path.relative_to(REPO)} imports {extra}"


def test_scorer_never_imports_the_worker_and_back():
    for path in (REPO / "cpu_scorer").rglob("*.py"):
        assert not _imports(path) & {"gpu_worker", *HEAVY}, path
    for path in (REPO / "gpu_worker").rglob("*.py"):
        assert "cpu_scorer" not in _imports(path), path


def test_heavy_libraries_only_in_backends():
    for path in (REPO / "gpu_worker").rglob("*.py"):
        if "backends" in path.parts:
            continue
        top_level = set()
        for node in ast.parse(path.read_text()).body:  # module-level imports only
            if isinstance(node, ast.Import):
                top_level |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top_level.add(node.module.split(".")[0])
        assert not top_level & set(HEAVY), (
            f"{path.relative_to(REPO)} imports {top_level & set(HEAVY)} at import time"
        )


def test_the_scorer_extra_installs_without_torch():
    import re

    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = list(project["dependencies"])
    pending = ["scorer", "server"]
    while pending:  # follow self-references such as tandem-eval[scorer]
        for requirement in extras[pending.pop()]:
            if requirement.startswith("tandem-eval["):
                pending += requirement[len("tandem-eval[") : -1].split(",")
            else:
                requirements.append(requirement)
    names = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}
    assert not names & {"torch", "transformers", "vllm", "unsloth", "ray", "accelerate", "peft"}
