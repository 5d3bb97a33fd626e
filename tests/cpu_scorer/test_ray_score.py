"""``tandem score --ray``: the scorer as a Ray Data job gives the daemon's bytes.

The tasks' work (``score_batch``) is tested here without Ray; the job itself on the
session's private Ray head (slow). The multi-node node-loss test is in
``test_ray_score_node_loss.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import add_bad_shards, child_env, fresh_copy, generate, tandem

import tandem.ray_score as ray_score
from cpu_scorer.daemon import Daemon, DaemonConfig
from shared.errors import TandemError
from shared.store import SCORES, ShardRef, Store
from tandem.ray_score import TASK_RETRIES, score_batch, task_resources

REPO = Path(__file__).resolve().parents[2]


def all_files(root: Path) -> dict[str, bytes]:
    """Every file of the store, relative path -> bytes (empty claim folders apart)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def hostile_store(template_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template runs (IFEval, tinyMMLU), a generative run (GSM8K), one bad shard of
    every kind, a folder that is not a task, a stray file and a run with a broken
    run.json: everything the daemon has a rule for. Copy it before scoring."""
    root = fresh_copy(template_store, tmp_path_factory.mktemp("hostile") / "store")
    generate(str(root), "run-g", tasks=("gsm8k",), limit={"gsm8k": 12})
    add_bad_shards(root, "run-b", "tinymmlu")
    bad_folder = root / "runs/run-a/generations/Bad Task"
    bad_folder.mkdir()
    good = root / "runs/run-a/generations/tinymmlu/0000000-0000004.parquet"
    shutil.copy(good, bad_folder / "0000000-0000004.parquet")
    (root / "runs/run-a/generations/ifeval/notes.txt").write_text("not a shard")
    shutil.copytree(root / "runs/run-a", root / "runs/run-x")
    (root / "runs/run-x/run.json").write_text("{not json")
    return root


def _rows(*refs: ShardRef) -> pa.Table:
    return pa.table(
        {
            "run_id": [r.run_id for r in refs],
            "task": [r.task for r in refs],
            "start": [r.start for r in refs],
            "end": [r.end for r in refs],
        }
    )


def _pending(root: Path) -> list[ShardRef]:
    work = Daemon(Store(str(root)), DaemonConfig(once=True)).plan()
    return [ref for _, refs in work for ref in refs]


# ---- the tasks' work, without Ray --------------------------------------------------------
def test_a_batch_scores_as_the_daemon_and_a_retry_changes_nothing(
    store_copy: Path, tmp_path: Path
) -> None:
    reference = fresh_copy(store_copy, tmp_path / "reference")
    Daemon(Store(str(reference)), DaemonConfig(once=True, interval=0.05)).run()
    refs = _pending(store_copy)
    config = DaemonConfig(once=True, job="ray-test")
    out = score_batch(_rows(*refs), str(store_copy), config)
    assert out.column("outcome").to_pylist() == ["scored"] * len(refs)
    scores = {k: v for k, v in all_files(store_copy).items() if "/scores/" in k}
    assert scores == {k: v for k, v in all_files(reference).items() if "/scores/" in k}
    # Ray runs a task again when its node died, or recomputes a lost output: the shards
    # already published are skipped, nothing is rewritten or duplicated.
    before = {p: p.stat().st_mtime_ns for p in store_copy.glob("runs/*/scores/*/*")}
    again = score_batch(_rows(*refs), str(store_copy), config)
    assert again.column("outcome").to_pylist() == ["skipped"] * len(refs)
    assert {p: p.stat().st_mtime_ns for p in store_copy.glob("runs/*/scores/*/*")} == before
    assert not list(store_copy.glob("runs/*/claims/*/*"))
    assert not [p for p in store_copy.rglob(".*") if p.is_file()]


def _lease(root: Path, ref: ShardRef, owner: str) -> None:
    store = Store(str(root))
    payload = {"owner": owner, "host": "elsewhere", "pid": 1, "expires": 4e9}
    store.publish_json(store.shard_path("claims", ref, ".json"), payload)


def test_the_lease_of_a_dead_attempt_of_the_same_job_is_taken_over(store_copy: Path) -> None:
    # The node that ran the first attempt is gone, on another host: its lease has not
    # expired and its pid cannot be checked; it is the job's own, so the retry takes it.
    ref, other = _pending(store_copy)[:2]
    _lease(store_copy, ref, "ray-job1/elsewhere:1:aa")
    _lease(store_copy, other, "elsewhere:2:bb")  # a daemon's live lease
    out = score_batch(_rows(ref, other), str(store_copy), DaemonConfig(once=True, job="ray-job1"))
    assert out.column("outcome").to_pylist() == ["scored", "busy"]
    store = Store(str(store_copy))
    assert store.exists(store.shard_path(SCORES, ref))
    assert not store.exists(store.shard_path(SCORES, other))


def test_scoring_tasks_ask_for_one_cpu_and_no_gpu() -> None:
    assert task_resources() == {"num_cpus": 1.0, "num_gpus": 0.0}


def _flaky(monkeypatch: pytest.MonkeyPatch, name: str, failures: int) -> list[int]:
    """Store.<name> raises OSError (a network hiccup) its first ``failures`` calls."""
    calls = [0]
    real = getattr(Store, name)

    def flaky(self: Store, *args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] <= failures:
            raise OSError(5, "Input/output error (injected)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Store, name, flaky)
    return calls


@pytest.mark.parametrize("name", ["stamp", "create_exclusive"])
def test_a_store_hiccup_in_a_task_is_retried_not_raised(
    store_copy: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # run.json's stamp (Daemon._record) or the lease (Leases.claim -> create_exclusive)
    # fails twice, then works: the task waits out the backoff and scores the shard.
    ref = _pending(store_copy)[0]
    config = DaemonConfig(once=True, job="ray-test", interval=0.01)
    calls = _flaky(monkeypatch, name, failures=2)
    out = score_batch(_rows(ref), str(store_copy), config)
    assert out.column("outcome").to_pylist() == ["scored"]
    assert calls[0] > 2
    store = Store(str(store_copy))
    assert store.exists(store.shard_path(SCORES, ref))


@pytest.mark.parametrize("name", ["stamp", "create_exclusive"])
def test_a_store_error_that_does_not_pass_leaves_the_shard_to_the_closing_pass(
    store_copy: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # Every attempt fails: the task does not raise (which would stop the whole job); it
    # reports the shard failed, left pending, and goes on with the next one.
    ref, other = _pending(store_copy)[:2]
    config = DaemonConfig(once=True, job="ray-test", interval=0.01)
    daemon = Daemon(Store(str(store_copy)), config)
    _flaky(monkeypatch, name, failures=10**6)
    assert daemon.score(ref) == "failed"
    monkeypatch.undo()
    assert daemon.score(other) == "scored"
    store = Store(str(store_copy))
    assert not store.exists(store.shard_path(SCORES, ref))
    assert not list(store_copy.glob("runs/*/quarantine/*/*"))


def test_a_node_that_does_not_see_the_store_stops_the_job_naming_itself(
    store_copy: Path, tmp_path: Path
) -> None:
    import socket

    ref = _pending(store_copy)[0]
    config = DaemonConfig(once=True, job="ray-test")
    # The store's path is not mounted on the node: nothing is created there.
    absent = tmp_path / "not-mounted" / "store"
    with pytest.raises(TandemError) as error:
        score_batch(_rows(ref), str(absent), config)
    assert socket.gethostname() in str(error.value) and "same URI" in str(error.value)
    assert not absent.exists()
    # An empty mount point (or another store): no run.json for the planned run; no
    # problem report is written into it.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TandemError) as error:
        score_batch(_rows(ref), str(empty), config)
    message = str(error.value)
    assert socket.gethostname() in message and ref.run_id in message, message
    assert "run.json" in message
    assert list(empty.rglob("*")) == []


class _FakeDataset:
    """What ``_run_job`` sees of Ray Data: records map_batches' arguments, yields the
    given rows, then raises ``error`` if any (a task lost after its retries)."""

    def __init__(self, rows: list[dict[str, str]], error: BaseException | None = None):
        self.rows, self.error, self.kwargs = rows, error, {}

    def map_batches(self, fn: object, **kwargs: object) -> _FakeDataset:
        self.kwargs = kwargs
        return self

    def iter_rows(self):  # type: ignore[no-untyped-def]
        yield from self.rows
        if self.error is not None:
            raise self.error


def _fake_ray(monkeypatch: pytest.MonkeyPatch, dataset: _FakeDataset) -> None:
    import ray.data

    monkeypatch.setattr(ray.data, "from_items", lambda items, **_: dataset)


def test_ray_reruns_a_task_whose_worker_died_a_bounded_number_of_times(
    store_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ray Data's default is max_retries=-1: a shard that gets its worker OOM-killed every
    # time would keep the job running for ever.
    dataset = _FakeDataset([])
    _fake_ray(monkeypatch, dataset)
    items = [{"run_id": "run-a", "task": "ifeval", "start": 0, "end": 4}]
    ray_score._run_job(Store(str(store_copy)), DaemonConfig(once=True), items, 8, False)
    assert dataset.kwargs["max_retries"] == TASK_RETRIES >= 1
    assert dataset.kwargs["num_cpus"] == 1.0 and dataset.kwargs["num_gpus"] == 0.0


def test_a_task_lost_after_its_retries_stops_the_job_naming_its_shards(
    store_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refs = _pending(store_copy)[:3]
    items = [{"run_id": r.run_id, "task": r.task, "start": r.start, "end": r.end} for r in refs]
    # The first shard was reported by its task; the second is published (its task's
    # output was lost); the third never was: the lost task's.
    reported = score_batch(_rows(refs[0]), str(store_copy), DaemonConfig(once=True)).to_pylist()
    score_batch(_rows(refs[1]), str(store_copy), DaemonConfig(once=True))
    _fake_ray(monkeypatch, _FakeDataset(reported, RuntimeError("worker died: OOM killed")))
    with pytest.raises(TandemError) as error:
        ray_score._run_job(Store(str(store_copy)), DaemonConfig(once=True), items, 1, False)
    message = str(error.value)
    assert f"{refs[2].run_id}/{refs[2].task}/{refs[2].name}" in message, message
    assert "1 shard(s) left unscored" in message and "OOM killed" in message
    assert f"{refs[0].task}/{refs[0].name}" not in message
    assert f"{refs[1].task}/{refs[1].name}" not in message


def test_counts_come_from_the_store_when_ray_reran_a_finished_task(
    store_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ray recomputes a finished task whose output was lost: the rerun reports "skipped"
    # for the shards its first attempt scored. The job still says they were scored.
    def rerun_job(store, config, items, shards_per_task, progress):  # type: ignore[no-untyped-def]
        rows = pa.Table.from_pylist(items)
        score_batch(rows, store.root, config)  # the first attempt, its output lost
        return score_batch(rows, store.root, config).to_pylist(), 1

    monkeypatch.setattr(ray_score, "connect", lambda address: None)
    monkeypatch.setattr(ray_score, "_run_job", rerun_job)
    result = ray_score.score_on_ray(Store(str(store_copy)), address="auto")
    assert result.shards > 0
    assert sum(o.tasks["skipped"] for o in result.runs.values()) == result.shards
    assert sum(o.scored for o in result.runs.values()) == result.shards
    assert all(o.closing.scored == 0 for o in result.runs.values())


@pytest.mark.parametrize(
    ("address", "says"),
    [
        (None, "needs a Ray cluster and none was given"),
        ("127.0.0.1:1", "no Ray cluster answers at 127.0.0.1:1"),
        ("http://127.0.0.1:8265", "is a Ray dashboard address"),
        ("nonsense", "is not host:port"),
    ],
)
def test_without_a_cluster_it_says_how_to_start_one(
    store_copy: Path, address: str | None, says: str
) -> None:
    env = child_env()
    env.pop("RAY_ADDRESS", None)
    args = ["score", "--ray", "--store", str(store_copy)]
    if address:
        args += ["--address", address]
    result = subprocess.run(tandem(*args), env=env, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert says in result.stderr and "Traceback" not in result.stderr
    if address in (None, "127.0.0.1:1"):
        assert "ray start --head" in result.stderr
    assert not list(store_copy.glob("runs/*/scores/*/*"))


def test_address_without_ray_is_refused(store_copy: Path) -> None:
    result = subprocess.run(
        tandem("score", "--store", str(store_copy), "--address", "127.0.0.1:6379"),
        env=child_env(),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2 and "use it with --ray" in result.stderr


# ---- the job on a Ray head (slow) --------------------------------------------------------
@pytest.mark.slow
def test_the_ray_job_writes_the_daemons_bytes_and_asks_for_no_gpu(
    hostile_store: Path, tmp_path: Path, ray_head
) -> None:
    daemon_copy = fresh_copy(hostile_store, tmp_path / "daemon")
    ray_copy = fresh_copy(hostile_store, tmp_path / "ray")
    by_daemon = subprocess.run(
        tandem("score", "--store", str(daemon_copy), "--quiet"),
        env=child_env(),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert by_daemon.returncode == 0, by_daemon.stderr
    by_ray = subprocess.run(
        tandem(
            "score", "--ray", "--address", ray_head.gcs_address, "--store", str(ray_copy), "--quiet"
        ),
        env=child_env(),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert by_ray.returncode == 0, by_ray.stderr[-3000:]

    # Every file of the two stores, byte for byte: score shards, summaries, quarantined
    # shards and their records, the run problems (bad folder, stray file, bad run.json).
    # Nothing is excluded: nothing the scorer writes carries a time or a host.
    got, want = all_files(ray_copy), all_files(daemon_copy)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []
    scores = [k for k in want if "/scores/" in k]
    generated = [k for k in all_files(hostile_store) if "/generations/" in k]
    assert len(scores) == 16 + 16 + 3  # run-a, run-b, run-g (12 GSM8K in shards of 4)
    assert len([k for k in want if k.endswith(".error.json")]) == 6 + 2 + 1
    assert sum(k.endswith("summary.json") for k in want) == 3
    # One score shard per good generation shard: not the bad ones, the one in Bad Task/,
    # the stray notes.txt, nor run-x's (its run.json is unusable).
    good = [
        k
        for k in generated
        if k.endswith(".parquet")
        and "/run-x/" not in k
        and "Bad Task" not in k
        and "/9000" not in k
    ]
    assert sorted(k.replace("/generations/", "/scores/") for k in good) == sorted(scores)
    assert "run run-b: scored 16 shard(s), quarantined 6" in by_ray.stdout
    assert "ray: 41 shard(s)" in by_ray.stdout  # 35 good + 6 bad, run-x's not planned

    # What the job's tasks asked Ray for (its state API, from the head's dashboard).
    from ray.util.state import list_tasks

    tasks = list_tasks(address=ray_head.dashboard_url, detail=True, limit=10_000)
    scoring = [t for t in tasks if "score_batch" in (t.name or "")]
    assert scoring, sorted({t.name for t in tasks})
    for task in scoring:
        assert task.required_resources.get("CPU") == 1.0, task.required_resources
        assert not task.required_resources.get("GPU"), task.required_resources


@pytest.mark.slow
def test_a_second_ray_job_finds_nothing_to_do(store_copy: Path, ray_head) -> None:
    args = ["score", "--ray", "--address", ray_head.gcs_address, "--store", str(store_copy)]
    first = subprocess.run(
        tandem(*args, "--quiet"), env=child_env(), capture_output=True, text=True, cwd=REPO
    )
    assert first.returncode == 0, first.stderr[-3000:]
    before = all_files(store_copy)
    second = subprocess.run(
        tandem(*args, "--quiet"), env=child_env(), capture_output=True, text=True, cwd=REPO
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "ray: 0 shard(s)" in second.stdout
    assert all_files(store_copy) == before
    summary = json.loads((store_copy / "runs/run-a/summary.json").read_text())
    assert summary["tasks"]["ifeval"]["complete"]


def test_the_ray_path_is_imported_only_with_ray() -> None:
    # cpu_scorer never imports ray (test_boundaries); tandem.ray_score imports it only
    # inside the job, and neither loads torch.
    script = (
        "import sys, tandem.ray_score, tandem.cli\n"
        "print(','.join(m for m in ('ray', 'torch') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=child_env()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
