"""Property-based: a store mutated at random never crashes the scorer, and every shard
ends as it should -- intact ones scored with the clean store's bytes, damaged ones
quarantined, damaged runs set aside, nothing outside the store touched.

Each example copies a small clean store (two fake-backend runs, one half-scored),
applies 1 to 5 random mutations (truncate, swap, rename, retype a column, duplicate
ids, copy from the other run, corrupt run.json or a score shard, stray files, folders
and symlinks), then runs the daemon's once mode on one copy and ``tandem score`` on
another. ``make test`` tries TANDEM_FUZZ_EXAMPLES (default 15) stores; ``make fuzz``
runs the long setting.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import generate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpu_scorer.daemon import Daemon, DaemonConfig
from cpu_scorer.scoring import score_store
from shared.store import Store

EXAMPLES = int(os.environ.get("TANDEM_FUZZ_EXAMPLES", "15"))
RUNS = ("fz-a", "fz-b")
TASKS = ("ifeval", "tinymmlu", "arc_easy")
STATS = {"stores": 0, "mutations": 0, "quarantined": 0, "set_aside": 0, "dead_runs": 0}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The template (fz-b already scored, fz-a not) and its fully scored reference."""
    base = tmp_path_factory.mktemp("fuzz")
    template = base / "template"
    for run in RUNS:
        generate(
            str(template),
            run,
            tasks=TASKS,
            limit={"ifeval": 6, "tinymmlu": 6, "arc_easy": 4},
            shard_size=2,
        )
    half = Store(str(template))
    score_store(half, "fz-b", progress=False)
    reference = base / "reference"
    shutil.copytree(template, reference)
    score_store(Store(str(reference)), progress=False)
    outside = base / "outside.parquet"  # a file a symlink in the store may point at
    shutil.copy(next(template.glob("runs/fz-a/generations/tinymmlu/*.parquet")), outside)
    return {"template": template, "reference": reference, "outside": outside}


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file() and not p.is_symlink())


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


# One mutation: (kind, two indexes to pick targets, a fraction, a choice).
MUTATION = st.tuples(
    st.sampled_from(
        [
            "truncate",
            "swap",
            "rename",
            "retype",
            "duplicate_ids",
            "other_run",
            "run_json",
            "score_shard",
            "stray_file",
            "stray_folder",
            "symlink",
        ]
    ),
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.floats(0.0, 1.0),
    st.integers(0, 4),
)


def _mutate(root: Path, outside: Path, mutation: tuple) -> None:
    kind, i, j, fraction, choice = mutation
    # Generation shards as they arrive (not yet scored): the scorer judges a shard when
    # it scores it, and never re-reads the generation shard of a published score.
    shards = [
        p
        for p in _files(root, "runs/*/generations/*/*.parquet")
        if not (p.parents[2] / "scores" / p.parent.name / p.name).exists()
    ]
    if not shards:
        return
    shard = shards[i % len(shards)]
    other = shards[j % len(shards)]
    if kind == "truncate":
        data = shard.read_bytes()
        shard.write_bytes(data[: int(len(data) * fraction)])
    elif kind == "swap" and shard != other:
        a, b = shard.read_bytes(), other.read_bytes()
        shard.write_bytes(b)
        other.write_bytes(a)
    elif kind == "rename":
        names = ["0000001-0000003", "0000000-0000099", "9999990-9999992", "x", "0000002-0000000"]
        shard.rename(shard.with_name(names[choice] + ".parquet"))
    elif kind == "retype":
        try:
            table = pq.read_table(shard)
        except (pa.ArrowException, OSError):
            return
        column = [c for c in ("batch_size", "prompt_tokens", "gold") if c in table.column_names][
            choice % 2
        ]
        words = pa.array([f"w{k}" for k in range(table.num_rows)], pa.string())
        shard.write_bytes(
            _parquet(table.set_column(table.column_names.index(column), column, words))
        )
    elif kind == "duplicate_ids":
        try:
            table = pq.read_table(shard)
        except (pa.ArrowException, OSError):
            return
        if table.num_rows < 2:
            return
        ids = table.column("sample_id").to_pylist()
        ids[1] = ids[0]
        index = table.column_names.index("sample_id")
        shard.write_bytes(
            _parquet(table.set_column(index, "sample_id", pa.array(ids, pa.string())))
        )
    elif kind == "other_run":
        run = shard.parts[-4]
        twin = root / "runs" / RUNS[1 - RUNS.index(run)] / "generations" / shard.parts[-2]
        source = twin / shard.name
        if source.exists():
            shutil.copy(source, shard)
    elif kind == "run_json":
        run = RUNS[i % 2]
        contents = ["[1, 2, 3]", "{", "", '{"run_id": 5}', '"a string"']
        (root / "runs" / run / "run.json").write_text(contents[choice])
    elif kind == "score_shard":
        scores = _files(root, "runs/*/scores/*/*.parquet")
        if scores:
            target = scores[j % len(scores)]
            data = target.read_bytes()
            target.write_bytes(data[: int(len(data) * fraction)] + b"\x00garbage")
    elif kind == "stray_file":
        places = [
            root / "runs",
            root / "runs" / RUNS[i % 2],
            shard.parent,
            root / "runs" / RUNS[i % 2] / "scores",
            root / "runs" / RUNS[i % 2] / "quarantine",
        ]
        names = ["notes.txt", "0000000-0000002.parquet.bak", "README", "run.json.orig", "x.json"]
        folder = places[choice]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / names[j % len(names)]).write_bytes(b"stray")
    elif kind == "stray_folder":
        names = ["Bad Task", "UPPER", "nosuchtask", ".hidden", "a..b"]
        folder = shard.parents[1] / names[choice]
        folder.mkdir(exist_ok=True)
        if other.parent != folder:  # an earlier mutation may have put it there already
            shutil.copy(other, folder / other.name)
    elif kind == "symlink":
        link = shard.parent / "0000090-0000092.parquet"
        if not link.exists():
            link.symlink_to(outside)


def _intact(root: Path, template: Path) -> tuple[set[str], set[str], set[str]]:
    """(generation shards with their template bytes, changed ones, runs with a bad
    run.json), as paths relative to the store."""
    intact, changed, dead = set(), set(), set()
    for run in RUNS:
        path = root / "runs" / run / "run.json"
        if path.read_bytes() != (template / "runs" / run / "run.json").read_bytes():
            dead.add(run)
    for path in _files(root, "runs/*/generations/*/*.parquet"):
        rel = path.relative_to(root).as_posix()
        twin = template / rel
        if twin.is_file() and twin.read_bytes() == path.read_bytes():
            intact.add(rel)
        else:
            changed.add(rel)
    return intact, changed, dead


def _check(root: Path, clean: dict[str, Path], before: tuple, outside_bytes: bytes) -> None:
    intact, changed, dead = before
    reference = clean["reference"]
    for rel in intact:
        run = rel.split("/")[1]
        score = root / rel.replace("/generations/", "/scores/")
        if run in dead:
            continue
        assert score.is_file(), f"intact {rel} was not scored"
        expected = reference / rel.replace("/generations/", "/scores/")
        assert score.read_bytes() == expected.read_bytes(), rel
    for rel in changed:
        run, task, name = rel.split("/")[1], rel.split("/")[3], rel.split("/")[4]
        if run in dead or not _is_task_folder(task):
            continue
        record = root / "runs" / run / "quarantine" / task / name.replace(".parquet", ".error.json")
        if not _is_shard_name(name):
            continue
        assert record.is_file(), f"damaged {rel} was not quarantined"
        assert json.loads(record.read_text())["error"]
        assert not (root / rel.replace("/generations/", "/scores/")).exists(), rel
    for run in dead:
        problem = root / "runs" / run / "quarantine" / "_run" / "run.json.error.json"
        assert problem.is_file(), f"{run}'s bad run.json was not recorded"
    for run in set(RUNS) - dead:
        summary = json.loads((root / "runs" / run / "summary.json").read_text())
        for entry in summary["tasks"].values():
            total = entry["samples_total"]
            assert total is None or entry["samples_scored"] + entry["samples_failed"] <= total
    assert clean["outside"].read_bytes() == outside_bytes
    assert not [p for p in root.rglob(".*") if p.is_file() and ".tmp-" in p.name]


def _is_task_folder(name: str) -> bool:
    from shared.store import is_task_name

    return is_task_name(name)


def _is_shard_name(name: str) -> bool:
    from shared.store import parse_shard_name

    return name.endswith(".parquet") and parse_shard_name(name[: -len(".parquet")]) is not None


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=os.environ.get("TANDEM_FUZZ_RANDOM") is None,
)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=5))
def test_no_mutated_store_crashes_or_pollutes(
    clean: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, mutations: list
) -> None:
    from tandem.cli import main

    work = tmp_path_factory.mktemp("case")
    daemon_root, cli_root = work / "daemon", work / "cli"
    shutil.copytree(clean["template"], daemon_root, symlinks=True)
    for mutation in mutations:
        _mutate(daemon_root, clean["outside"], mutation)
    shutil.copytree(daemon_root, cli_root, symlinks=True)
    outside_bytes = clean["outside"].read_bytes()
    before = _intact(daemon_root, clean["template"])
    siblings = sorted(p.name for p in work.iterdir())

    tally = Daemon(Store(str(daemon_root)), DaemonConfig(once=True, interval=0.01)).run()
    assert tally.failed == 0
    code = main(["score", "--quiet", "--store", str(cli_root)])
    assert code == 0

    _check(daemon_root, clean, before, outside_bytes)
    _check(cli_root, clean, before, outside_bytes)
    for kind in ("scores", "quarantine"):  # both modes end the same
        for path in daemon_root.glob(f"runs/*/{kind}/*/*"):
            twin = cli_root / path.relative_to(daemon_root)
            assert twin.is_file(), twin
            if path.suffix == ".parquet":
                assert twin.read_bytes() == path.read_bytes()
    assert sorted(p.name for p in work.iterdir()) == siblings  # nothing written beside
    STATS["stores"] += 1
    STATS["mutations"] += len(mutations)
    STATS["quarantined"] += tally.quarantined
    STATS["set_aside"] += tally.set_aside
    STATS["dead_runs"] += len(before[2])


def teardown_module() -> None:
    print("\nfuzz: " + ", ".join(f"{v} {k}" for k, v in STATS.items()), file=sys.stderr)
