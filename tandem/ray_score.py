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

**Node loss.** Ray Data runs a task again when its worker or node dies (at most
``TASK_RETRIES`` times: a shard that kills its worker every time, out of memory, must
not keep the job running for ever; the job then stops naming the task's shards), and
recomputes a finished task whose output lived on the lost node. A task judged dead may
even still be running. The store is the only state: a shard whose score shard is already
published is skipped (no duplicate, and scoring writes identical bytes anyway), a shard
cut off mid-write left only a hidden temp file (swept later) and is scored again, and
the lease the dead attempt left carries the job's name, so the retry takes it over at
once (``cpu_scorer._lease``). Since a rerun reports "skipped" for what its first attempt
scored, the counts printed come from the store after the job, not from the tasks.

**Store hiccups.** A task retries a store error on a shard with the daemon's backoff
(``Daemon.score``), then leaves the shard to the closing pass; only a failed write stops
the job. A node that cannot see the store (a shared path not mounted there) stops the
job with an error naming the node, rather than scoring nothing.

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
from shared.store import ERROR_SUFFIX, QUARANTINE, RUN_RECORD, SCORES, ShardRef, Store

log = logging.getLogger("tandem.scorer")

# Shards per Ray task: enough to amortise a task's overhead (a few ms) over shards that
# score in tens of ms, few enough that a lost node costs little work and the job spreads
# over every node.
SHARDS_PER_TASK = 8
# How often Ray runs a task again whose worker or node died (Ray Data's own default is
# without end): enough for a node or two lost during a job.
TASK_RETRIES = 3
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
    """What happened to one run's shards. ``cluster``: the job's shards by their state in
    the store once the job ended (scored, quarantined, pending), which stays right when Ray
    reran a task; ``tasks``: what the tasks reported (see ``Daemon.process``; "failed": a
    shard left to the closing pass); ``closing``: the closing pass (the daemon's tally)."""

    cluster: Counter[str] = field(default_factory=Counter)
    tasks: Counter[str] = field(default_factory=Counter)
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
    default of any Ray version can put scoring on a GPU, no GPU."""
    return {"num_cpus": 1.0, "num_gpus": 0.0}


def task_options() -> dict[str, Any]:
    """Everything ``map_batches`` is given for the scoring tasks (Ray remote args): the
    resources, and ``max_retries``: a task whose worker or node died is run again at most
    ``TASK_RETRIES`` times (Ray Data's default, -1, is without end). A Python exception
    is not retried: the scorer turns a bad shard into a quarantine and retries a store
    hiccup itself, so an exception is a failed write, which stops the job."""
    return {**task_resources(), "max_retries": TASK_RETRIES}


def _state(store: Store, item: dict[str, Any]) -> str:
    """A shard's state in the store: scored, quarantined or pending."""
    ref = ShardRef(item["run_id"], item["task"], int(item["start"]), int(item["end"]))
    if store.exists(store.shard_path(SCORES, ref)):
        return "scored"
    if store.exists(store.shard_path(QUARANTINE, ref, ERROR_SUFFIX)):
        return "quarantined"
    return "pending"


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
    items: list[dict[str, Any]] = [
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
            runs.setdefault(row["run_id"], RunOutcome()).tasks[row["outcome"]] += 1
        for item in items:
            runs.setdefault(item["run_id"], RunOutcome()).cluster[_state(store, item)] += 1
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
        **task_options(),
    )
    done: list[dict[str, Any]] = []
    try:
        # Row by row, so that when the job stops the shards already reported are known.
        for row in dataset.iter_rows():
            done.append(dict(row))
    except Exception as error:  # noqa: BLE001 - Ray wraps the task's error; unwrap it
        cause = _tandem_cause(error)
        if cause is not None:
            raise TandemError(str(cause)) from error
        raise TandemError(_lost_message(store, items, done, error)) from error
    return done, blocks


def _lost_message(
    store: Store, items: list[dict[str, Any]], done: list[dict[str, Any]], error: BaseException
) -> str:
    """The job stopped on an error of Ray's (a task whose worker died ``TASK_RETRIES``
    + 1 times, a shard that runs it out of memory): which shards were left unscored."""
    reported = {(r["run_id"], r["task"], r["name"]) for r in done}
    left = []
    for item in items:
        ref = ShardRef(item["run_id"], item["task"], int(item["start"]), int(item["end"]))
        if (ref.run_id, ref.task, ref.name) in reported or _state(store, item) != "pending":
            continue
        left.append(f"{ref.run_id}/{ref.task}/{ref.name}")
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    shown = ", ".join(left[:20]) + (f" and {len(left) - 20} more" if len(left) > 20 else "")
    return (
        f"the Ray job stopped ({type(error).__name__}: {reason}); a task is run at most "
        f"{TASK_RETRIES + 1} times when its worker dies (a shard that runs it out of "
        f"memory does so every time). {len(left)} shard(s) left unscored, the lost task's "
        f"among them: {shown or 'none'}. No summary was written: rerun `tandem score --ray` "
        "for them, or `tandem score` to score them here"
    )


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

    store = Store(store_uri)
    rows = batch.to_pylist()
    _check_sees_store(store, {row["run_id"] for row in rows}, config)
    daemon = Daemon(store, config)
    out: dict[str, list[Any]] = {"run_id": [], "task": [], "name": [], "outcome": []}
    for row in rows:
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


def _check_sees_store(store: Store, run_ids: set[str], config: DaemonConfig) -> None:
    """Refuse to score on a node that does not see the driver's store: a local path not
    mounted there would make every shard "no run" and write a problem report into a
    store made up on the node's own disk. A store error that may pass (OSError) is tried
    again with the daemon's backoff first, as the daemon does."""
    node = socket.gethostname()
    hint = (
        "every node must reach the store at the same URI (mount the shared path on every "
        "node, or use an object store)"
    )
    for attempt in range(1, config.read_attempts + 1):
        try:
            store.check(writable=True)
            missing = [
                run_id
                for run_id in sorted(run_ids)
                if not store.exists(store.run_path(run_id, RUN_RECORD))
            ]
            break
        except (TandemError, OSError) as error:
            passing = isinstance(error, OSError) or isinstance(error.__cause__, OSError)
            if not passing or attempt == config.read_attempts:
                raise TandemError(f"on node {node}: {error}; {hint}") from error
            log.warning("on node %s: %s; attempt %d, retrying", node, error, attempt)
            time.sleep(min(300.0, config.interval * 2**attempt))
    if missing:
        raise TandemError(
            f"on node {node}: store {store.uri} has no run {', '.join(missing)} "
            f"({RUN_RECORD} not found), which the driver planned; {hint}"
        )
