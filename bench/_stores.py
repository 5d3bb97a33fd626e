"""Synthetic stores for the API benchmarks and the API tests: IFEval-shaped generation
and score shards written directly (this measures the read path, not the scorer), with
prompts and responses of realistic length. Needs only pyarrow and tandem's shared/."""

from __future__ import annotations

import random
from pathlib import Path

TYPES = [
    "punctuation:no_comma",
    "change_case:english_lowercase",
    "length_constraints:number_words",
    "detectable_format:number_bullet_lists",
    "keywords:existence",
]
WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do".split()


def write_ifeval_run(
    root: Path | str, run_id: str, samples: int, shard: int, seed: int = 0, pass_rate: float = 0.7
) -> None:
    """A scored IFEval run of ``samples`` samples in shards of ``shard``."""
    from shared.schema import doc_json, make_table
    from shared.store import Store, shard_name

    store = Store(str(root))
    rng = random.Random(seed)
    store.publish_json(
        store.run_path(run_id, "run.json"),
        {
            "run_id": run_id,
            "created_at": "2026-01-01T00:00:00Z",
            "spec": {
                "model": "synthetic",
                "backend": "fake",
                "precision": "bf16",
                "tasks": ["ifeval"],
            },
            "model": {"model_id": "synthetic"},
            "environment": {},
            "tasks": {"ifeval": {"samples": samples, "shard_size": shard}},
        },
    )
    provenance = {"config_hash": "x", "backend": "fake", "model_id": "synthetic"}
    for start in range(0, samples, shard):
        generations, scores = [], []
        for i in range(start, min(start + shard, samples)):
            ids = rng.sample(TYPES, rng.randint(1, 3))
            strict = [rng.random() < pass_rate for _ in ids]
            base = {"run_id": run_id, "task": "ifeval", "sample_id": str(i), "error": None}
            generations.append(
                {
                    **base,
                    "prompt": " ".join(rng.choices(WORDS, k=60)),
                    "rendered_prompt": "",
                    "response": " ".join(rng.choices(WORDS, k=300)),
                    "prompt_tokens": 80,
                    "generated_tokens": 400,
                    "finish_reason": "eos",
                    "truncated_tokens": 0,
                    "batch_seconds": 1.0,
                    "batch_size": 8,
                    "doc": doc_json({"instruction_id_list": ids, "kwargs": [{} for _ in ids]}),
                }
            )
            scores.append(
                {
                    **base,
                    "metrics": [("prompt_level_strict_acc", float(all(strict)))],
                    "instruction_id_list": ids,
                    "inst_level_strict": strict,
                    "inst_level_loose": strict,
                    "prediction": None,
                    "scorer_version": "1",
                    "details": None,
                }
            )
        name = shard_name(start, min(start + shard, samples)) + ".parquet"
        store.publish_table(
            store.run_path(run_id, "generations", "ifeval", name),
            make_table("generations", generations, provenance),
        )
        store.publish_table(
            store.run_path(run_id, "scores", "ifeval", name),
            make_table("scores", scores, provenance),
        )
