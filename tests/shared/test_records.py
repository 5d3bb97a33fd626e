"""run.json and summary.json are typed, versioned records: every version reads and
upgrades, a newer one is refused, a file of the wrong shape names itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shared.errors import TandemError
from shared.records import (
    RUN_VERSION,
    SUMMARY_VERSION,
    RunRecord,
    Summary,
    WorkerInfo,
    read_run_record,
    read_summary,
)
from shared.store import Store

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
OLD_RUN = GOLDEN / "store-v1" / "runs" / "golden-v1"


def test_a_v1_run_record_reads_and_upgrades() -> None:
    raw = json.loads((OLD_RUN / "run.json").read_text())
    assert raw["schema_version"] == 1
    record = read_run_record((OLD_RUN / "run.json").read_bytes())
    assert record.schema_version == RUN_VERSION and record.workers == []
    assert record.spec_hash == raw["spec_hash"] and record.spec == raw["spec"]
    assert record.tasks["ifeval"].samples == 4 and record.tasks["ifeval"].shard_size == 2
    assert record.environment.host == raw["environment"]["host"]
    # Nothing recorded what v1 workers resolved: the spec's request is all there is.
    assert record.resolved_precision == "auto"


def test_a_v1_summary_reads_and_upgrades() -> None:
    raw = json.loads((OLD_RUN / "summary.json").read_text())
    summary = read_summary((OLD_RUN / "summary.json").read_bytes())
    assert summary.schema_version == SUMMARY_VERSION
    assert summary.requested_precision == raw["precision"] == "auto"
    assert summary.tasks["arc_easy"].metrics == raw["tasks"]["arc_easy"]["metrics"]
    assert summary.counts() == {"arc_easy": (2, 2, 0), "ifeval": (2, 2, 0)}


def test_current_records_round_trip() -> None:
    worker = WorkerInfo(backend="hf", engine="transformers", precision="bf16", device="cuda")
    record = RunRecord(run_id="r", spec={"precision": "auto"}, workers=[worker])
    again = read_run_record(json.dumps(record.as_json()))
    assert again == record and again.resolved_precision == "bf16"
    summary = Summary(run_id="r", precision="bf16", workers=[worker])
    assert read_summary(json.dumps(summary.as_json())) == summary


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2, 3]", "expected a JSON object, got list"),
        ('"run"', "expected a JSON object, got str"),
        ("{not json", "not valid JSON"),
        ('{"schema": "tandem.run", "schema_version": 99, "run_id": "r"}', "newer than this"),
        ('{"schema": "tandem.summary", "run_id": "r"}', "a 'tandem.summary' record"),
        ('{"schema_version": true, "run_id": "r"}', "schema_version must be a positive"),
        ('{"run_id": "r", "tasks": {"x": {"samples": "many", "shard_size": 2}}}', "tasks.x"),
        ('{"run_id": 5}', "run_id"),
    ],
)
def test_a_run_record_of_the_wrong_shape_names_the_file(text: str, message: str) -> None:
    with pytest.raises(TandemError, match="runs/x/run.json") as caught:
        read_run_record(text, "runs/x/run.json")
    assert message in str(caught.value)


def test_the_store_reads_records_typed(tmp_path: Path) -> None:
    shutil.copytree(GOLDEN / "store-v1", tmp_path / "store")
    store = Store(tmp_path / "store")
    assert store.run_record("golden-v1").run_id == "golden-v1"
    assert store.summary("golden-v1").tasks["ifeval"].samples_scored == 4
    (tmp_path / "store/runs/golden-v1/run.json").write_text("[1, 2, 3]")
    with pytest.raises(TandemError, match=r"runs/golden-v1/run.json: expected a JSON object"):
        store.run_record("golden-v1")
