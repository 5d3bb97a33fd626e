"""Bad stores, full disks, racing specs and malformed inputs: one clear error each, from
every command, and nothing partial left behind (the hardening issue, cases 4 to 6)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from shared.errors import TandemError
from tandem.cli import main

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

SPEC = """
run_id = "{run_id}"
backend = "{backend}"
tasks = ["ifeval", "tinymmlu"]
limit = {{ ifeval = 6, tinymmlu = 4 }}
shard_size = 2
"""


def _spec(tmp_path: Path, run_id: str = "hostile", backend: str = "fake", extra: str = "") -> Path:
    path = tmp_path / f"{run_id}-{backend}.toml"
    path.write_text(SPEC.format(run_id=run_id, backend=backend) + extra)
    return path


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


def _generate(tmp_path: Path, store: Path, capsys, **spec) -> tuple[int, str]:
    return _run(
        capsys,
        "generate",
        str(_spec(tmp_path, **spec)),
        "--store",
        str(store),
        "--local",
        "--quiet",
        "--data-dir",
        str(DATA),
    )


def _no_temp_files(root: Path) -> None:
    assert not [p for p in root.rglob(".*") if p.is_file()], "a temp file was left behind"


# ---- 4. the store path -----------------------------------------------------------------
COMMANDS = {
    "scorer": ["scorer", "--once", "--interval", "0.01"],
    "score": ["score", "--quiet"],
    "runs": ["runs"],
    "serve": ["serve", "--port", "9"],
    "compare": ["compare", "a", "b"],
    "report": ["report", "a"],
    "export": ["export", "wandb", "a"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_missing_store_is_one_clear_error(tmp_path: Path, capsys, command: str) -> None:
    missing = tmp_path / "nowhere"
    code, err = _run(capsys, *COMMANDS[command], "--store", str(missing))
    assert code == 2 and "does not exist" in err and str(missing) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not missing.exists()


@pytest.mark.parametrize("command", [*sorted(COMMANDS), "generate"])
def test_a_store_that_is_a_file_is_one_clear_error(tmp_path: Path, capsys, command: str) -> None:
    afile = tmp_path / "store.txt"
    afile.write_text("not a store")
    argv = COMMANDS.get(command) or ["generate", str(_spec(tmp_path)), "--local"]
    code, err = _run(capsys, *argv, "--store", str(afile))
    assert code == 2 and "is a file, not a folder" in err
    assert afile.read_text() == "not a store"


def _deny(monkeypatch, root: Path, error: int) -> None:
    """Make every open for writing under ``root`` fail with ``error`` (a read-only mount,
    no permission, a full disk): injected, because root ignores file modes."""
    real_open, real_os_open = open, os.open

    def guarded(path, flags) -> bool:
        return str(path).startswith(str(root)) and bool(flags)

    def fake_os_open(path, flags, *args, **kwargs):
        if guarded(path, flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
            raise OSError(error, os.strerror(error), str(path))
        return real_os_open(path, flags, *args, **kwargs)

    def fake_open(path, mode="r", *args, **kwargs):
        if guarded(path, any(c in mode for c in "wxa+")):
            raise OSError(error, os.strerror(error), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr("builtins.open", fake_open)


@pytest.mark.parametrize("command", ["scorer", "score", "generate"])
def test_a_read_only_store_is_refused_by_writers(
    tmp_path: Path, capsys, monkeypatch, command: str
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    _deny(monkeypatch, store, errno.EROFS)
    argv = COMMANDS.get(command) or ["generate", str(_spec(tmp_path)), "--local"]
    code, err = _run(capsys, *argv, "--store", str(store))
    assert code == 2 and "is not writable: Read-only file system" in err
    assert not list(store.iterdir())


def test_readers_serve_a_read_only_store(tmp_path: Path, capsys, monkeypatch) -> None:
    """Listing and serving never write: a read-only mount of a store is fine for them."""
    store = tmp_path / "store"
    assert _generate(tmp_path, store, capsys)[0] == 0
    _deny(monkeypatch, store, errno.EROFS)
    code, _ = _run(capsys, "runs", "--store", str(store))
    assert code == 0


def test_disk_full_while_generating_then_the_rerun_completes(tmp_path: Path, capsys) -> None:
    store = tmp_path / "store"
    clean = tmp_path / "clean"
    assert _generate(tmp_path, clean, capsys)[0] == 0
    from shared import atomic

    real_write, real_create = atomic.write_file, atomic.create_file
    calls = {"n": 0}

    def full_after_one_shard(real):
        # Shards are created exclusively (a published shard is never replaced), other
        # files written in place: the disk fills up for both once one shard is in.
        def write(path, data):
            if str(path).endswith(".parquet"):
                calls["n"] += 1
                if calls["n"] > 1:
                    raise atomic.write_error(str(path), OSError(errno.ENOSPC, "No space left"))
            return real(path, data)

        return write

    atomic.write_file = full_after_one_shard(real_write)
    atomic.create_file = full_after_one_shard(real_create)
    try:
        code, err = _generate(tmp_path, store, capsys)
    finally:
        atomic.write_file, atomic.create_file = real_write, real_create
    (line,) = [line for line in err.splitlines() if line.startswith("tandem: error:")]
    assert code == 2 and "the disk is full; nothing partial was left behind" in line
    _no_temp_files(store)
    shards = list(store.glob("runs/*/generations/*/*.parquet"))
    assert len(shards) == 1  # what was published stays, nothing partial beside it
    assert _generate(tmp_path, store, capsys)[0] == 0
    names = sorted(p.relative_to(store).as_posix() for p in store.glob("runs/*/generations/*/*"))
    assert names == sorted(
        p.relative_to(clean).as_posix() for p in clean.glob("runs/*/generations/*/*")
    )


def test_disk_full_while_scoring_then_the_rerun_completes(tmp_path: Path, capsys) -> None:
    store = tmp_path / "store"
    assert _generate(tmp_path, store, capsys)[0] == 0
    reference = tmp_path / "reference"
    shutil.copytree(store, reference)
    assert _run(capsys, "score", "--quiet", "--store", str(reference))[0] == 0
    from shared import atomic

    real = atomic.write_file
    calls = {"n": 0}

    def full_after_three(path, data):
        calls["n"] += 1
        if calls["n"] > 3:
            raise atomic.write_error(str(path), OSError(errno.ENOSPC, "No space left"))
        return real(path, data)

    atomic.write_file = full_after_three
    try:
        code, err = _run(capsys, "score", "--quiet", "--store", str(store))
    finally:
        atomic.write_file = real
    assert code == 2 and "the disk is full" in err and "Traceback" not in err
    _no_temp_files(store)
    assert _run(capsys, "score", "--quiet", "--store", str(store))[0] == 0
    for path in reference.glob("runs/*/scores/*/*.parquet"):
        assert (store / path.relative_to(reference)).read_bytes() == path.read_bytes()
    assert not list(store.glob("runs/*/quarantine/*/*"))


# ---- 5. nothing written before the work can start ----------------------------------------
def test_a_backend_that_cannot_load_leaves_no_run(tmp_path: Path, capsys) -> None:
    store = tmp_path / "store"
    code, err = _generate(tmp_path, store, capsys, backend="unsloth")
    assert code == 2 and "NVIDIA" in err
    assert not list(store.glob("runs/*/run.json"))
    # The corrected spec under the same run id is accepted.
    assert _generate(tmp_path, store, capsys, backend="fake")[0] == 0
    assert json.loads((store / "runs/hostile/run.json").read_text())["spec"]["backend"] == "fake"


@pytest.mark.slow  # builds the hf backend on the embedded model (the adapter check fails first)
def test_a_missing_adapter_leaves_no_run(tmp_path: Path, capsys) -> None:
    store = tmp_path / "store"
    spec = _spec(tmp_path, backend="hf", extra=f'adapter = "{tmp_path / "no-adapter"}"\n')
    code, err = _run(
        capsys, "generate", str(spec), "--store", str(store), "--local", "--data-dir", str(DATA)
    )
    assert code == 2 and "no-adapter" in err
    assert not list(store.glob("runs/*/run.json"))


def _race(store) -> dict[str, str]:
    """Two threads start run "race" at once with different spec hashes."""
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def start(spec_hash: str) -> None:
        barrier.wait()
        try:
            store.start_run("race", {"run_id": "race", "spec_hash": spec_hash})
            outcomes[spec_hash] = "accepted"
        except TandemError as error:
            outcomes[spec_hash] = str(error)

    threads = [threading.Thread(target=start, args=(h,)) for h in ("aaa", "bbb")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_two_specs_racing_for_one_run_id_cannot_both_win(tmp_path: Path) -> None:
    from shared.store import Store

    for attempt in range(20):
        store = Store(tmp_path / f"store-{attempt}")
        outcomes = _race(store)
        accepted = [h for h, outcome in outcomes.items() if outcome == "accepted"]
        assert len(accepted) == 1, outcomes
        loser = ({"aaa", "bbb"} - set(accepted)).pop()
        assert "different spec" in outcomes[loser]
        assert store.read_json(store.run_path("race", "run.json"))["spec_hash"] == accepted[0]


# ---- 6. inputs -------------------------------------------------------------------------
def test_a_spec_with_bytes_that_are_not_utf8_names_the_offset(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_bytes(b'run_id = "x"\ntasks = ["ifeval"]\n# caf\xe9\n')
    code, err = _run(capsys, "generate", str(spec), "--store", str(tmp_path / "s"), "--local")
    assert code == 2 and "bad.toml: not UTF-8 text: byte 37 (0xe9)" in err


def test_a_jsonl_with_bytes_that_are_not_utf8_names_the_offset(tmp_path: Path) -> None:
    from shared.jsonl import read_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(TandemError, match=r"rows.jsonl: not UTF-8 text: byte 16 \(0xff\)"):
        list(read_jsonl(path))


@pytest.mark.parametrize(
    "line",
    [
        "shard_size = true",
        "seed = false",
        "limit = { ifeval = true }",
        "merge_adapter = 1",
        "generation = { max_new_tokens = true }",
        "generation = { batch_size = true }",
        "generation = { max_prompt_tokens = true }",
    ],
)
def test_a_bool_is_never_an_int_in_a_spec(tmp_path: Path, line: str) -> None:
    from shared.spec import load_spec

    path = tmp_path / "spec.toml"
    path.write_text(f'tasks = ["ifeval"]\n{line}\n')
    with pytest.raises(TandemError, match="invalid run spec"):
        load_spec(path)


def test_a_bool_is_never_an_int_in_task_data(tmp_path: Path) -> None:
    from shared.tasks import TASKS

    folder = tmp_path / "tinymmlu"
    folder.mkdir()
    row = {"input_formatted": "Q", "answer": True, "subject": "x"}
    (folder / "tinyMMLU_test.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(TandemError, match="field 'answer' must be an integer, got bool"):
        TASKS["tinymmlu"].loader(tmp_path)


def test_an_empty_responses_file_is_an_error(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "responses.jsonl"
    empty.write_text("")
    code, err = _run(
        capsys,
        "ifeval",
        "--input-data",
        str(DATA / "ifeval" / "input_data.jsonl"),
        "--responses",
        str(empty),
        "--output",
        str(tmp_path / "out.jsonl"),
    )
    assert code == 2 and "responses.jsonl: no responses (the file is empty)" in err
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "soon"])
def test_bad_intervals_are_refused_with_the_range(tmp_path: Path, capsys, value: str) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["scorer", "--store", str(tmp_path), "--interval", value])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "--interval" in err and ("positive, finite" in err or "not a number" in err)


@pytest.mark.parametrize("value", ["99999", "0", "-5", "http"])
def test_bad_ports_are_refused_with_the_range(tmp_path: Path, capsys, value: str) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["serve", "--store", str(tmp_path), "--port", value])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "--port" in err and ("1..65535" in err or "not a port number" in err)
