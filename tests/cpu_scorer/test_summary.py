"""summary.json: the same numbers as before the records were typed, built from what
changed (a refresh reads only new score shards, never a generation shard)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
from conftest import generate

from cpu_scorer.daemon import Daemon, DaemonConfig
from cpu_scorer.scoring import score_store
from cpu_scorer.summary import SummaryBuilder
from shared.schema import upgrade
from shared.store import Store

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "store-v1"


def _old_summary() -> dict:
    return json.loads((GOLDEN / "runs/golden-v1/summary.json").read_text())


def _same_telemetry(new: dict, old: dict) -> None:
    """v1 counted the EOS a row ended with as a generated token; now it is apart
    (eos_tokens), so generated text tokens are that many fewer. Everything else equal."""
    for key, value in old.items():
        if key == "generated_tokens":
            assert new[key] == value - new["eos_tokens"] and new["eos_tokens"] >= 0
        elif key == "tokens_per_second":
            seconds = new["model_seconds"]
            assert new[key] == (round(new["generated_tokens"] / seconds, 2) if seconds else None)
        else:
            assert new[key] == value, key


def test_rescoring_a_v1_store_gives_its_numbers(tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(GOLDEN, root)
    run = root / "runs/golden-v1"
    old_scores = {p.relative_to(run / "scores"): pq.read_table(p) for p in run.glob("scores/*/*")}
    shutil.rmtree(run / "scores")
    (run / "summary.json").unlink()
    score_store(Store(root), progress=False)
    for name, table in old_scores.items():  # the same rows (v1 files read upgraded)
        assert pq.read_table(run / "scores" / name).equals(upgrade(table)[1]), name
    new = json.loads((run / "summary.json").read_text())
    old = _old_summary()
    for task, entry in old["tasks"].items():
        for metric, value in entry["metrics"].items():
            assert new["tasks"][task]["metrics"][metric] == value, (task, metric)
        _same_telemetry(new["tasks"][task]["telemetry"], entry["telemetry"])
        for key in ("samples_scored", "samples_failed", "samples_total", "complete", "shards"):
            assert new["tasks"][task][key] == entry[key], (task, key)
    # IFEval's prompt-level accuracies now carry a standard error as well.
    assert "prompt_level_strict_acc_stderr" in new["tasks"]["ifeval"]["metrics"]


def test_a_v1_store_summarizes_without_rescoring(tmp_path: Path) -> None:
    """Score shards written before they carried telemetry: the summary takes it from
    their generation shards, once, and its numbers are the old ones."""
    root = tmp_path / "store"
    shutil.copytree(GOLDEN, root)
    (root / "runs/golden-v1/summary.json").unlink()
    tally = Daemon(Store(root), DaemonConfig(once=True, interval=0.01)).run()
    assert tally.scored == 0 and tally.summaries == 1
    new = json.loads((root / "runs/golden-v1/summary.json").read_text())
    for task, entry in _old_summary()["tasks"].items():
        _same_telemetry(new["tasks"][task]["telemetry"], entry["telemetry"])
        for metric, value in entry["metrics"].items():
            assert new["tasks"][task]["metrics"][metric] == value


class _CountingStore(Store):
    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.reads: list[str] = []

    def read_table(self, path: str, columns: list[str] | None = None):  # type: ignore[override]
        self.reads.append(path)
        return super().read_table(path, columns)


def test_a_refresh_reads_only_new_score_shards(tmp_path: Path) -> None:
    root = tmp_path / "store"
    generate(str(root), "inc", tasks=("tinymmlu",), limit={"tinymmlu": 16}, shard_size=4)
    store = _CountingStore(str(root))
    first = store.list_shards("inc", "generations", "tinymmlu")[0]
    score_store(Store(root), progress=False)
    # Put one shard back to pending: its score shard moved away.
    scores = root / "runs/inc/scores/tinymmlu"
    (scores / f"{first.name}.parquet").rename(tmp_path / "held.parquet")

    builder = SummaryBuilder(store)
    record = store.run_record("inc")
    summary = builder.build(record, store.run_state("inc"))
    assert summary.tasks["tinymmlu"].samples_scored == 12
    assert len(store.reads) == 3 and all("/scores/" in p for p in store.reads)

    store.reads.clear()
    builder.build(record, store.run_state("inc"))
    assert store.reads == []  # nothing changed, nothing read

    (tmp_path / "held.parquet").rename(scores / f"{first.name}.parquet")
    summary = builder.build(record, store.run_state("inc"))
    assert store.reads == [store.shard_path("scores", first)]  # the new one only
    assert summary.tasks["tinymmlu"].samples_scored == 16
    assert summary.tasks["tinymmlu"].telemetry["samples_generated"] == 16
