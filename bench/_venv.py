"""The reference side's own environment, made once with pip and reused.

A reference (lm-eval, the IFEval reference) runs in a venv of its own at the
repository root so its pins cannot move tandem's. Every install is held at the CPU
torch build through a constraints file: a bare torch requirement would pull a
multi-GB CUDA build.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

TORCH = "torch==2.13.0"


def reference_python(venv: Path, probe: str, *installs: list[str]) -> Path:
    """``venv``'s python. When ``probe`` (Python code, e.g. imports) fails there, the
    venv is created and each of ``installs`` is one ``pip install`` into it, in order."""
    python = venv / "bin" / "python"
    if (
        python.exists()
        and subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0
    ):
        return python
    print(f"creating {venv} for the reference (one time)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as pin:
        pin.write(TORCH + "\n")
    try:
        for packages in installs:
            pip = [str(python), "-m", "pip", "install", "--quiet", "-c", pin.name]
            subprocess.run([*pip, *packages], check=True)
    finally:
        os.unlink(pin.name)
    return python


def same_transformers() -> str:
    """A pin on the transformers version tandem's own environment runs, so both sides
    of a bench run the same model code."""
    from importlib.metadata import version

    return f"transformers=={version('transformers')}"
