"""The IFEval scorer works offline with no NLTK data, never loads torch, and loads its
heavy libraries only when it scores (importing it, e.g. to build the CLI, stays light)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, socket, sys

def refuse(*args, **kwargs):
    raise OSError("the network is off in this test")

socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

from cpu_scorer.ifeval import _command, evaluate
light = sorted({"numpy", "nltk", "langdetect", "scipy", "torch"} & set(sys.modules))

verdict = evaluate(
    "p",
    "Dr. Smith went to Washington. He met the U.S. president. THE END!",
    [
        "length_constraints:number_sentences",
        "change_case:capital_word_frequency",
        "length_constraints:number_words",
        "language:response_language",
    ],
    [
        {"num_sentences": 3, "relation": "at least"},
        {"capital_frequency": 3, "capital_relation": "at least"},
        {"num_words": 12, "relation": "at least"},
        {"language": "en"},
    ],
)
# What scoring loaded, before this script imports nltk itself (a whole ``import nltk``
# brings scipy when it is installed; the scorer imports only nltk's tokenizer modules).
heavy = sorted({"torch", "transformers", "ray", "vllm", "scipy"} & set(sys.modules))
whole_nltk = "nltk" in sys.modules
import nltk
try:
    nltk.data.find("tokenizers/punkt_tab/english/")
    punkt_tab_installed = True
except LookupError:
    punkt_tab_installed = False
print(json.dumps({"light": light, "strict": verdict.strict, "heavy": heavy,
                  "whole_nltk": whole_nltk, "punkt_tab_installed": punkt_tab_installed}))
"""


def test_scores_offline_without_nltk_data_and_without_torch(tmp_path: Path) -> None:
    empty = tmp_path / "nltk_data"
    empty.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NLTK_DATA": str(empty)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["light"] == []  # importing the package loads none of them
    assert report["punkt_tab_installed"] is False  # so the tokenizer did not come from there
    # 3 sentences ("Dr." and "U.S." are abbreviations); THE, END, U.S. are capital words
    # (Dr., Smith... are not); 13 words ("U.S." is two); English.
    assert report["strict"] == [True, True, True, True]
    assert report["heavy"] == []
    assert report["whole_nltk"] is False  # only the tokenizers' modules, not all of nltk
