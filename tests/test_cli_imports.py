"""Each command imports what it runs and nothing else: the real ``tandem`` entry point in
a fresh process, with the modules it loaded read back at its exit (an import check, not a
timing)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Runs ``tandem.cli.main`` as the console script does and writes ``sorted(sys.modules)``.
RUNNER = r"""
import json, sys
out, argv = sys.argv[1], sys.argv[2:]
sys.argv = ["tandem", *argv]
from tandem.cli import main
try:
    code = main(argv)
except SystemExit as exit:  # argparse's --help
    code = exit.code
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""

TIERS = ("cpu_scorer", "gpu_worker", "shared.tasks")
HEAVY = ("torch", "transformers", "ray", "scipy", "pandas")


def loaded(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> set[str]:
    out = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(out), *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["code"] == 0, result.stderr
    return set(report["modules"])


def under(modules: set[str], *packages: str) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


def test_help_imports_no_tier_no_pydantic_no_pyarrow(tmp_path: Path) -> None:
    modules = loaded(tmp_path, "--help")
    assert under(modules, *TIERS, *HEAVY, "pydantic", "pyarrow", "numpy", "shared.store") == []


@pytest.mark.parametrize("command", ["ifeval", "scorer", "generate", "runs"])
def test_a_commands_help_imports_no_tier(command: str, tmp_path: Path) -> None:
    modules = loaded(tmp_path, command, "--help")
    assert under(modules, *TIERS, *HEAVY, "pydantic", "pyarrow", "numpy") == []


def test_runs_imports_the_store_only(tmp_path: Path) -> None:
    # Listing runs reads run.json records (pydantic) through the Store (pyarrow.fs): those
    # it needs. No task, checker, scorer or worker module.
    store = tmp_path / "store"
    shutil.copytree(REPO / "tests" / "golden" / "store-v1", store)
    modules = loaded(tmp_path, "runs", "--store", str(store))
    assert "shared.store._store" in modules
    assert under(modules, *TIERS, *HEAVY, "nltk", "langdetect", "fastapi", "tqdm") == []


SENTENCES = "Dr. Smith went to Washington. He met the U.S. president. THE END!"
INPUT = {
    "key": 1,
    "prompt": "Write three sentences in English.",
    "instruction_id_list": [
        "length_constraints:number_sentences",
        "change_case:capital_word_frequency",
        "language:response_language",
        "keywords:existence",
    ],
    "kwargs": [
        {"num_sentences": 3, "relation": "at least"},
        {"capital_frequency": 3, "capital_relation": "at least"},
        {"language": "en"},
        {"keywords": ["smith"]},
    ],
}


@pytest.mark.parametrize("responses", [1, 600], ids=["one-process", "worker-processes"])
def test_ifeval_imports_no_pydantic_pyarrow_or_whole_nltk(responses: int, tmp_path: Path) -> None:
    # The responses need Punkt, nltk's word tokenizer and langdetect: the whole scoring path.
    inputs = tmp_path / "input_data.jsonl"
    inputs.write_text(json.dumps(INPUT) + "\n", encoding="utf-8")
    answers = tmp_path / "responses.jsonl"
    line = json.dumps({"prompt": INPUT["prompt"], "response": SENTENCES}) + "\n"
    answers.write_text(line * responses, encoding="utf-8")
    output = tmp_path / "verdicts.jsonl"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TANDEM_CACHE": str(tmp_path / "c")}
    argv = ["ifeval", "--input-data", str(inputs), "--responses", str(answers)]
    argv += ["--output", str(output), "--workers", "2"]
    modules = loaded(tmp_path, *argv, env=env)

    verdicts = [json.loads(v) for v in output.read_text().splitlines()]
    assert len(verdicts) == responses
    assert verdicts[0]["inst_level_strict_acc"] == [True, True, True, True]
    assert {"langdetect", "numpy"} <= modules  # language detection ran here
    assert under(modules, "pydantic", "pyarrow", "shared.store", "shared.tasks", "gpu_worker") == []
    assert under(modules, *HEAVY, "tqdm") == []
    assert "nltk" not in modules  # only the tokenizers' modules, loaded privately
    assert list((tmp_path / "c" / "langdetect").glob("langdetect-*.bin"))  # the cache is used
    if responses == 1:  # too few to start worker processes: no process pool imported
        assert under(modules, "multiprocessing", "concurrent.futures") == []
