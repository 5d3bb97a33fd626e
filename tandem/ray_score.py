"""``tandem score --ray``: the scorer as a Ray Data job on a cluster's CPU nodes.

The same scorer, run from a different driver:

1. **Plan** (this process): ``Daemon.plan`` does what run-once mode's first poll does
   before it scores: the same repairs (stale leases, temp files, summaries checked
   against their shards), the same reports of a bad run.json, folder or file, the same
   pending list.
2. **Score** (the cluster): one Dataset row per pending shard (``ray.data.from_items``),
   ``map_batches`` over a few shards per task. A task scores each shard through the
   daemon's own ``Daemon.process``: lease, the checks, the task's scorer, then the
   atomic publish (``Store.publish_table``) or the quarantine. A score shard is a pure
   function of its generation shard, so it is byte for byte the daemon's.
3. **Close** (this process): the daemon's run-once pass itself (``Daemon.run``). It finds
   nothing pending, or only what the job could not do (a shard a daemon held a lease on),
   and writes every summary.json with the same code.

**Node loss.** Ray Data runs a task again when its worker or node dies, and
recomputes a finished task whose output lived on the lost node. The store is the only
state: a shard whose score shard is already published is skipped (no duplicate, the
bytes would be the same anyway), a shard cut off mid-write left only a hidden temp file
(swept later) and is scored again, and the lease the dead attempt left carries the job's
name, so the retry takes it over at once (``cpu_scorer._lease``).

**CPU only.** Every task asks for one CPU and, explicitly, no GPU.

Ray is imported here only, and only when ``--ray`` is given: ``cpu_scorer`` never imports
it (``tests/test_boundaries.py``). Every node needs tandem installed (``tandem-eval
[ray-scorer]``) and must reach the store at the same URI: an object store, or a shared
(NFS) path.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cpu_scorer.daemon import Daemon, DaemonConfig, Tally
from shared.errors import TandemError
from shared.store import ShardRef, Store

log = logging.getLogger("tandem.scorer")

# Shards per Ray task: enough to amortise a task's overhead (a few ms) over shards that
# score in tens of ms, few enough that a lost node costs little work and the job spreads
# over every node.
SHARDS_PER_TASK = 8
# Test hook (the node-loss test): seconds each task sleeps per shard, so a node can be
# killed mid-job. Read by the driver, passed to the tasks; never set in production.
TEST_DELAY_ENV = "TANDEM_TEST_SHARD_DELAY"

START_HINT = (
    "start one with `ray start --head` (add worker nodes with `ray start "
    "--address=HEAD:6379`), then pass its address with --address HEAD:6379 or "
    "RAY_ADDRESS=HEAD:6379; or submit with `ray job submit -- tandem score --ray ...`, "
    "which sets RAY_ADDRESS; or score without Ray: `tandem score` / `tandem scorer`"
)


@dataclass
class RunOutcome:
    """What happened to one run's shards: on the cluster (by outcome, see
    ``Daemon.process``) and in the closing pass (the daemon's tally)."""

    cluster: Counter[str] = field(default_factory=Counter)
    closing: Tally = field(default_factory=Tally)

    @property
    def scored(self) -> int:
        return self.cluster["scored"] + self.closing.scored

    @property
    def quarantined(self) -> int:
        return self.cluster["quarantined"] + self.closing.quarantined


@dataclass
class RayScoreResult:
    runs: dict[str, RunOutcome]
    shards: int  # pending shards handed to the cluster
    tasks: int  # Ray tasks they were split into
    seconds: float  # the job on the cluster (connection and closing pass apart)


def resolve_address(address: str | None) -> str:
    """The cluster's GCS address (host:port) from --address or RAY_ADDRESS, checked to
    answer, or a TandemError saying how to start a cluster."""
    address = address or os.environ.get("RAY_ADDRESS") or ""
    if not address:
        raise TandemError(
            f"tandem score --ray needs a Ray cluster and none was given: {START_HINT}"
        )
    if address.startswith(("http://", "https://")):
        raise TandemError(
            f"{address} is a Ray dashboard address (what `ray job submit` takes); "
            "--ray needs the cluster's GCS address, host:port (port 6379 unless the head "
            "was started with another --port)"
        )
    if address == "auto" or address.startswith("ray://"):
        return address
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TandemError(f"Ray address {address!r} is not host:port (e.g. 127.0.0.1:6379)")
    # ray.init retries an address nobody answers at for minutes; ask once, quickly.
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as error:
        raise TandemError(
            f"no Ray cluster answers at {address} ({error.strerror or error}): {START_HINT}"
        ) from error
    return address


def connect(address: str) -> None:
    try:
        import ray
    except ImportError as error:
        raise TandemError(
            f"tandem score --ray needs Ray Data: pip install 'tandem-eval[ray-scorer]' ({error})"
        ) from error
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise TandemError(f"cannot join the Ray cluster at {address}: {error}") from error


def task_resources() -> dict[str, float]:
    """What each scoring task asks Ray for: one CPU and, said explicitly so that no
    default of any Ray version can put scoring on a GPU, no GPU. Retries are Ray Data's
    own: a task whose worker or node died is run again (its default for map tasks); a
    Python exception is not retried, since the scorer turns a bad shard into a quarantine
    and an exception is a failed write, which stops the job."""
    return {"num_cpus": 1.0, "num_gpus": 0.0}


def score_on_ray(
    store: Store,
    *,
    address: str | None = None,
    run_id: str | None = None,
    irt_params: str | None = None,
    confirm_unsafe_code: bool = False,
    shards_per_task: int = SHARDS_PER_TASK,
    progress: bool = False,
) -> RayScoreResult:
    """Score every pending shard of the store (or of one run) on a Ray cluster, then
    write the summaries; see the module docstring."""
    resolved = resolve_address(address)
    if run_id:
        store.run_record(run_id)  # clear error for an unknown run
    job = f"ray-{secrets.token_hex(4)}"
    config = DaemonConfig(
        once=True,
        interval=0.2,  # as tandem score: the backoff of a read that may pass
        only_run=run_id,
        irt_params=irt_params,
        confirm_unsafe_code=confirm_unsafe_code,
        job=job,
    )
    planner = Daemon(store, config)
    work = planner.plan()
    runs = {rid: RunOutcome() for rid in planner.runs}
    items = [
        {"run_id": ref.run_id, "task": ref.task, "start": ref.start, "end": ref.end}
        for _, refs in work
        for ref in refs
    ]
    tasks, seconds = 0, 0.0
    if items:
        connect(resolved)
        started = time.perf_counter()
        outcomes, tasks = _run_job(store, config, items, shards_per_task, progress)
        for row in outcomes:
            runs.setdefault(row["run_id"], RunOutcome()).cluster[row["outcome"]] += 1
        seconds = time.perf_counter() - started
    # The closing pass, by the planning daemon itself (its summaries' cache is warm):
    # every summary.json, and anything the job left pending.
    planner.run()
    for rid, tally in planner.runs.items():
        runs.setdefault(rid, RunOutcome()).closing = tally
    return RayScoreResult(runs=runs, shards=len(items), tasks=tasks, seconds=seconds)


def _run_job(
    store: Store,
    config: DaemonConfig,
    items: list[dict[str, Any]],
    shards_per_task: int,
    progress: bool,
) -> tuple[list[dict[str, Any]], int]:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = False
    blocks = max(1, -(-len(items) // shards_per_task))
    resources = task_resources()
    fn: Any = score_batch  # Ray's annotation does not cover fn_kwargs
    dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        fn,
        batch_size=None,  # one block, ``shards_per_task`` shards, per task
        batch_format="pyarrow",
        fn_kwargs={
            "store_uri": store.uri if not store.local else store.root,
            "config": config,
            "delay": float(os.environ.get(TEST_DELAY_ENV) or 0.0),
        },
        num_cpus=resources["num_cpus"],
        num_gpus=resources["num_gpus"],
    )
    try:
        rows = dataset.take_all()
    except Exception as error:  # noqa: BLE001 - Ray wraps the task's error; unwrap it
        cause = _tandem_cause(error)
        if cause is not None:
            raise TandemError(str(cause)) from error
        raise
    return rows, blocks


def _tandem_cause(error: BaseException) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TandemError):
            return current
        current = current.__cause__ or current.__context__
    return None


def score_batch(batch: Any, store_uri: str, config: DaemonConfig, delay: float = 0.0) -> Any:
    """One Ray task: score each shard of the batch through ``Daemon.process`` (see the
    module docstring); one row per shard out, with its outcome."""
    import pyarrow as pa

    daemon = Daemon(Store(store_uri), config)
    out: dict[str, list[Any]] = {"run_id": [], "task": [], "name": [], "outcome": []}
    for row in batch.to_pylist():
        ref = ShardRef(row["run_id"], row["task"], int(row["start"]), int(row["end"]))
        if delay:
            time.sleep(delay)
        outcome = daemon.score(ref)
        for key, value in (
            ("run_id", ref.run_id),
            ("task", ref.task),
            ("name", ref.name),
            ("outcome", outcome),
        ):
            out[key].append(value)
    return pa.table(out)
