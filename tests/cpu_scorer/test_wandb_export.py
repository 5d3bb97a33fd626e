"""``tandem export wandb`` in W&B's offline mode: the runs it writes, read back from
their files (the .wandb record log and the table files)."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import child_env, tandem, write_sweep

pytest.importorskip("wandb", reason="the wandb extra is not installed")

# The .wandb file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of
# records, each a 7-byte header (crc, length, type) and a piece of a protobuf Record.
_BLOCK, _FULL, _FIRST, _MIDDLE, _LAST = 32768, 1, 2, 3, 4


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    pos, pieces, out = 7, b"", []
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            break
        chunk = data[pos : pos + length]
        pos += length
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            pieces = chunk
        elif kind == _MIDDLE:
            pieces += chunk
        elif kind == _LAST:
            out.append(pieces + chunk)
    records = []
    for raw in out:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def logged(run_dir: Path) -> dict:
    """What a W&B run holds: its name, config, history rows by step, final summary."""
    [log] = run_dir.glob("run-*.wandb")
    out: dict = {"history": [], "summary": {}, "config": {}, "name": None}
    for record in read_records(log):
        kind = record.WhichOneof("record_type")
        items = {}
        if kind == "run":
            out["name"] = record.run.display_name
            for item in record.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind in ("history", "summary"):
            source = record.history.item if kind == "history" else record.summary.update
            for item in source:
                key = item.key or "/".join(item.nested_key)
                items[key] = json.loads(item.value_json)
            if kind == "history":
                out["history"].append(items)
            else:
                out["summary"].update(items)
    return out


def _export(store: Path, wandb_dir: Path, *args: str) -> list[Path]:
    env = {
        **child_env(),
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(wandb_dir),
        "WANDB_SILENT": "true",
    }
    done = subprocess.run(
        tandem("export", "wandb", *args, "--store", str(store), "--project", "evals"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return sorted((wandb_dir / "wandb").glob("offline-run-*"))


def test_one_wandb_run_per_tandem_run(scored_store: Path, tmp_path: Path) -> None:
    runs = _export(scored_store, tmp_path, "run-a", "run-b", "--max-samples", "5")
    assert len(runs) == 2
    by_name = {}
    for run_dir in runs:
        data = logged(run_dir)
        by_name[data["name"]] = (run_dir, data)
    assert set(by_name) == {"run-a", "run-b"}
    run_dir, data = by_name["run-b"]
    summary = json.loads((scored_store / "runs/run-b/summary.json").read_text())
    metrics = summary["tasks"]["ifeval"]["metrics"]
    history = data["history"][0]
    assert history["ifeval/prompt_level_strict_acc"] == metrics["prompt_level_strict_acc"]
    assert (
        history["ifeval/prompt_level_strict_acc_stderr"]
        == metrics["prompt_level_strict_acc_stderr"]
    )
    assert history["tinymmlu/acc_norm"] == summary["tasks"]["tinymmlu"]["metrics"]["acc_norm"]
    assert history["ifeval/telemetry/peak_rss_bytes"] > 0
    assert data["summary"]["ifeval/prompt_level_strict_acc"] == metrics["prompt_level_strict_acc"]
    record = json.loads((scored_store / "runs/run-b/run.json").read_text())
    assert data["config"]["spec_hash"] == record["spec_hash"]
    assert data["config"]["spec"]["backend"] == "fake"
    # The tables: per-instruction pass rates and a samples table per task.
    tables = {
        p.name.split("_")[0]: p for p in (run_dir / "files/media/table").rglob("*.table.json")
    }
    instructions = json.loads(
        next(p for p in (run_dir / "files/media/table").rglob("by*.table.json")).read_text()
    )
    assert instructions["columns"] == ["name", "by_instruction"]
    assert {row[0]: row[1] for row in instructions["data"]} == metrics["by_instruction"]
    samples = [
        json.loads(p.read_text())
        for p in (run_dir / "files/media/table").rglob("samples*.table.json")
    ]
    assert len(samples) == 2 and all(len(t["data"]) == 5 for t in samples), tables
    assert samples[0]["columns"] == ["sample_id", "passed", "prompt", "response", "metrics"]


def test_a_sweep_is_one_wandb_run_with_a_step_per_checkpoint(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ids = write_sweep(store, "pretrain", [2000, 1000, 3000], limit=4)
    runs = _export(store, tmp_path, *ids, "--step-from", "sweep", "--max-samples", "2")
    assert len(runs) == 1
    data = logged(runs[0])
    assert data["name"] == "pretrain"
    steps = [row["_step"] for row in data["history"] if "tandem_run" in row]
    assert steps == [1000, 2000, 3000]
    assert [row["tandem_run"] for row in data["history"] if "tandem_run" in row] == [
        ids[1],
        ids[0],
        ids[2],
    ]
    for row in data["history"]:
        if "tandem_run" in row:
            summary = json.loads((store / "runs" / row["tandem_run"] / "summary.json").read_text())
            assert (
                row["ifeval/prompt_level_strict_acc"]
                == (summary["tasks"]["ifeval"]["metrics"]["prompt_level_strict_acc"])
            )


def test_step_from_sweep_refuses_runs_outside_a_sweep(scored_store: Path, tmp_path: Path) -> None:
    env = {**child_env(), "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    done = subprocess.run(
        tandem("export", "wandb", "run-a", "--step-from", "sweep", "--store", str(scored_store)),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "run-a" in done.stderr and "no sweep and step" in done.stderr
    assert not (tmp_path / "wandb").exists()
