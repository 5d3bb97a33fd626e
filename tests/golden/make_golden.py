"""Write the golden Parquet files for the current schema versions.

Run once per new schema version (``python tests/golden/make_golden.py``) and commit the
files: they are what an old store holds, and tests/shared/test_golden.py proves today's
readers still read them. Never regenerate an existing version's file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shared.schema import SCHEMAS, make_table  # noqa: E402

HERE = Path(__file__).resolve().parent
PROVENANCE = {
    "config_hash": "0123456789abcdef",
    "git_sha": "golden",
    "backend": "fake",
    "model_id": "golden-model",
    "model_revision": "",
    "created_at": "2026-11-25T00:00:00.000000Z",
}
KEYS = {"run_id": "golden-run", "sample_id": "0", "error": None}
ROWS = {
    "generations": {
        **KEYS,
        "task": "ifeval",
        "prompt": "Say hi in lowercase.",
        "rendered_prompt": "<|user|>Say hi in lowercase.<|assistant|>",
        "response": "hi",
        "prompt_tokens": 9,
        "generated_tokens": 2,
        "finish_reason": "eos",
        "truncated_tokens": 0,
        "batch_seconds": 0.25,
        "batch_size": 1,
        "doc": '{"instruction_id_list":["change_case:english_lowercase"],"key":1,"kwargs":[{}]}',
    },
    "loglikelihoods": {
        **KEYS,
        "task": "tinymmlu",
        "prompt": "Q?\nAnswer:",
        "rendered_prompt": "Q?\nAnswer:",
        "choices": [" A", " B"],
        "logprobs": [-1.5, -0.5],
        "is_greedy": [False, True],
        "continuation_tokens": [1, 1],
        "prompt_tokens": 4,
        "gold": 1,
        "batch_seconds": 0.1,
        "batch_size": 1,
        "doc": '{"choice_texts":["A","B"]}',
    },
    "rolling": {
        **KEYS,
        "task": "perplexity",
        "text": "hello world",
        "logprob": -7.25,
        "tokens": 2,
        "words": 2,
        "bytes": 11,
        "batch_seconds": 0.1,
        "doc": "{}",
    },
    "scores": {
        **KEYS,
        "task": "ifeval",
        "metrics": [("prompt_level_strict_acc", 1.0)],
        "instruction_id_list": ["change_case:english_lowercase"],
        "inst_level_strict": [True],
        "inst_level_loose": [True],
        "prediction": None,
        "scorer_version": "1",
        "details": None,
    },
}


def main() -> None:
    for kind, definition in SCHEMAS.items():
        path = HERE / f"{kind}-v{definition.version}.parquet"
        if path.exists():
            continue
        pq.write_table(make_table(kind, [ROWS[kind]], PROVENANCE), path, compression="zstd")
        print("wrote", path)


if __name__ == "__main__":
    main()
