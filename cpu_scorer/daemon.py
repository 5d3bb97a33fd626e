"""The scorer daemon: watch a store, claim each new generation shard, score it, publish.

``tandem scorer --store URI`` polls the store every ``interval`` seconds (listing is the
one operation every pyarrow filesystem has, local, NFS and object stores alike), and
for each pending generation shard (``shared.store.TaskState.pending``):

1. claims it with an expiring lease (``cpu_scorer._lease``),
2. checks again that it is still pending (another daemon may have just finished it),
3. scores it through the one pipeline (``cpu_scorer.scoring``) and publishes the score
   shard atomically, or quarantines a bad shard,
4. releases the lease,

and refreshes ``summary.json`` of each run whose shards changed. ``tandem score`` is this
daemon's run-once mode (``once``): the same code, retries and quarantine rules, exiting
when nothing is left pending.

**Untrusted input.** Everything in the store is read as untrusted: a run whose run.json
cannot be used, a folder under generations/ that is not a task, a shard that is not
what its place says (see ``cpu_scorer.scoring``) is recorded with a reason and set
aside, and every other shard and run is scored as before. Nothing read can stop the
loop; only a failed *write* in run-once mode (disk full) ends it, with one line.

**Why nothing is lost.** The store is the only state. A score shard appears whole or
not at all (atomic publish), so a daemon killed at any moment leaves its shard pending,
and the next daemon scores it again from scratch, writing the same bytes. The other
leftovers of a kill are repaired on start and then every minute (``sweep``): the lease
of a dead holder on this host is taken over at once (elsewhere it expires), an
interrupted quarantine is completed, summaries are checked against their shards (a
damaged score shard is moved aside and scored again), and temp files older than a lease
period are removed.

**Many daemons.** Leases keep them off each other's shards; nothing depends on leases
for correctness. A summary written from an older listing by a slower daemon is caught
by its shard counts and rewritten.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from dataclasses import dataclass

import pyarrow as pa

from cpu_scorer._lease import Leases, new_owner
from cpu_scorer._rows import NeedsConfirmation, ScoreOptions
from cpu_scorer.aggregations import AggregateOptions
from cpu_scorer.scoring import (
    QUARANTINE_ERRORS,
    finish_quarantine,
    publish_scores,
    quarantine,
    score_generation,
    set_aside_scores,
)
from cpu_scorer.summary import SummaryBuilder
from shared.errors import TandemError, WriteError
from shared.records import RunRecord
from shared.store import (
    CLAIM_SUFFIX,
    CLAIMS,
    ERROR_SUFFIX,
    GENERATIONS,
    QUARANTINE,
    RUN_RECORD,
    SCORES,
    FileStamp,
    RunState,
    ShardRef,
    Store,
    parse_shard_name,
)

log = logging.getLogger("tandem.scorer")

Counts = dict[str, tuple[int, int, int]]
# Reading a store can fail for reasons that pass (a network hiccup) or that are the
# data's; neither may stop the loop.
_READ_ERRORS = (TandemError, OSError, pa.ArrowException)


@dataclass(frozen=True)
class DaemonConfig:
    """How the daemon polls and claims. ``once``: exit when nothing is left pending."""

    interval: float = 1.0
    lease: float = 300.0
    once: bool = False
    irt_params: str | None = None
    # While working through a backlog, refresh a run's summary at most this often.
    summary_every: float = 2.0
    # Full check (summaries against shards, stale leases, temp files) this often.
    sweep_every: float = 60.0
    # A plain OSError while reading may be a network hiccup: retry before quarantining.
    read_attempts: int = 3
    # Only this run (``tandem score --run``); None: every run in the store.
    only_run: str | None = None
    # A progress bar over the pending shards on stderr (``tandem score``).
    progress: bool = False
    # Code tasks' programs may run (in the sandbox): --confirm-run-unsafe-code.
    confirm_unsafe_code: bool = False
    # The batch job this scorer works for (``tandem score --ray``), if any: its leases
    # carry the job's name, and one left by an earlier attempt of the job is taken over.
    job: str | None = None


@dataclass
class Tally:
    scored: int = 0
    quarantined: int = 0
    skipped: int = 0
    failed: int = 0
    summaries: int = 0
    set_aside: int = 0
    # Shards of code tasks left unscored: the user did not allow their programs to run.
    unconfirmed: int = 0

    def line(self) -> str:
        return (
            f"scored {self.scored}, quarantined {self.quarantined}, skipped {self.skipped} "
            f"(done by another scorer), failed {self.failed}, summaries {self.summaries}"
            + (f", damaged score shards re-scored {self.set_aside}" if self.set_aside else "")
            + (
                f", {self.unconfirmed} code shard(s) left unscored (needs "
                "--confirm-run-unsafe-code)"
                if self.unconfirmed
                else ""
            )
        )


class Daemon:
    """One scorer daemon over one store. ``run()`` returns when ``stop`` is set (or,
    with ``once``, when nothing is pending)."""

    def __init__(self, store: Store, config: DaemonConfig, stop: threading.Event | None = None):
        self.store = store
        self.config = config
        self.stop = stop or threading.Event()
        prefix = f"{config.job}/" if config.job else ""
        self.owner = prefix + new_owner()
        self.leases = Leases(store, self.owner, config.lease, reclaim=prefix)
        self.summaries = SummaryBuilder(
            store, AggregateOptions(irt_params=config.irt_params), on_damaged=self._damaged
        )
        self.options = ScoreOptions(confirm_unsafe_code=config.confirm_unsafe_code)
        self.tally = Tally()
        # Per run, what happened to its shards (``tandem score`` prints these).
        self.runs: dict[str, Tally] = {}
        # Runs whose summary.json matched these counts when last checked.
        self._fresh: dict[str, Counts] = {}
        # Runs complete and fresh at the last check: skipped until the next sweep.
        self._complete: set[str] = set()
        # Shards that failed for a reason that may pass: attempts and next retry time.
        self._retry: dict[ShardRef, tuple[int, float]] = {}
        # Shards the scorer itself keeps failing on: left pending for a fixed scorer.
        self._given_up: set[ShardRef] = set()
        # Runs that could not be read this many polls in a row (once mode gives up).
        self._run_failures: dict[str, int] = {}
        # Problems already reported, so a bad file is logged once, not every poll.
        self._reported: set[tuple[str, str]] = set()
        self._records: dict[str, tuple[FileStamp | None, RunRecord]] = {}
        self._damaged_seen = False
        self._last_sweep = -float("inf")

    # ---- main loop -------------------------------------------------------------------
    def run(self) -> Tally:
        log.info(
            "scorer %s watching %s (interval %.2fs, lease %.0fs)",
            self.owner,
            redact(self.store.uri),
            self.config.interval,
            self.config.lease,
        )
        while not self.stop.is_set():
            if time.monotonic() - self._last_sweep >= self.config.sweep_every:
                self.sweep()
            left = self.poll()
            if self.config.once and left == 0:
                break
            self.stop.wait(self.config.interval)
        log.info("scorer %s stopping: %s", self.owner, self.tally.line())
        return self.tally

    def poll(self) -> int:
        """Work through every run once; returns how many shards are still pending."""
        left = 0
        for run_id in self._runs():
            if self.stop.is_set():
                return left + 1
            try:
                left += self._poll_run(run_id)
                self._run_failures.pop(run_id, None)
            except _READ_ERRORS as error:
                # A store hiccup while listing or writing: retried next poll; in once
                # mode a run that keeps failing is given up so the command ends.
                if self.config.once and isinstance(error, WriteError):
                    raise
                failures = self._run_failures.get(run_id, 0) + 1
                self._run_failures[run_id] = failures
                log.error("run %s: %s", run_id, error)
                if not (self.config.once and failures >= self.config.read_attempts):
                    left += 1
        return left

    def _runs(self) -> list[str]:
        if self.config.only_run:
            return [self.config.only_run]
        try:
            runs = self.store.list_runs()
        except OSError as error:
            log.error("cannot list runs in %s: %s", redact(self.store.uri), error)
            return []
        return [r for r in runs if r not in self._complete]

    def _record(self, run_id: str) -> RunRecord | None:
        """The run's record, or None (reported once, with why) when it cannot be used.
        Cached under the file's stamp: run.json is written once, read once."""
        path = self.store.run_path(run_id, RUN_RECORD)
        problem = self.store.problem_path(run_id, RUN_RECORD)
        stamp = self.store.stamp(path)
        cached = self._records.get(run_id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            record = self.store.run_record(run_id)
        except TandemError as error:
            self._report(run_id, RUN_RECORD, RUN_RECORD, error)
            return None
        self._records[run_id] = (stamp, record)
        if ("record", run_id) not in self._reported and self.store.exists(problem):
            # The record was repaired: its old problem report no longer holds.
            self.store.delete(problem)
        self._reported.add(("record", run_id))
        return record

    def _report(self, run_id: str, name: str, path: str, error: BaseException) -> None:
        """Record a problem of the run itself (quarantine/_run/<name>.error.json) once."""
        if (run_id, name) in self._reported:
            return
        self._reported.add((run_id, name))
        log.warning("run %s: set aside %s: %s", run_id, path, error)
        record = {"run_id": run_id, "path": path, "error": f"{type(error).__name__}: {error}"}
        try:
            self.store.publish_json(self.store.problem_path(run_id, name), record)
        except (TandemError, OSError) as write_error:
            log.error("run %s: cannot record the problem: %s", run_id, write_error)

    def _tally(self, run_id: str) -> Tally:
        return self.runs.setdefault(run_id, Tally())

    def _poll_run(self, run_id: str) -> int:
        self._tally(run_id)
        record = self._record(run_id)
        if record is None:
            return 0
        state = self._scan(run_id, record)
        pending = [r for r in state.pending if r not in self._given_up]
        last_summary = time.monotonic()
        changed = False
        bar = self._progress(run_id, len(pending))
        try:
            for ref in pending:
                if self.stop.is_set():
                    break
                if not self._due(ref):
                    continue
                if self.process(ref, record) in ("scored", "quarantined"):
                    changed = True
                if bar is not None:
                    bar.update(1)
                if changed and time.monotonic() - last_summary >= self.config.summary_every:
                    self.refresh_summary(record)
                    last_summary, changed = time.monotonic(), False
        finally:
            if bar is not None:
                bar.close()
        if changed or pending:
            state = self._scan(run_id, record)
        self._ensure_summary(record, state)
        return len([r for r in state.pending if r not in self._given_up])

    def _progress(self, run_id: str, total: int):  # type: ignore[no-untyped-def]
        if not self.config.progress or not total:
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=f"score {run_id}", unit="shard", file=sys.stderr)

    # ---- as the parts of a batch job (tandem score --ray) -------------------------------
    def plan(self) -> list[tuple[RunRecord, list[ShardRef]]]:
        """What run-once mode's first poll would score, per run, scoring nothing: the same
        repairs first (``sweep``), the same reports of a bad run.json, folder or file, the
        same interrupted quarantines completed. A batch job's input."""
        self.sweep()
        work = []
        for run_id in self._runs():
            self._tally(run_id)
            try:
                record = self._record(run_id)
                if record is None:
                    continue
                state = self._scan(run_id, record)
            except _READ_ERRORS as error:
                if isinstance(error, WriteError):
                    raise
                log.error("run %s: %s", run_id, error)
                continue
            work.append((record, [r for r in state.pending if r not in self._given_up]))
        return work

    def score(self, ref: ShardRef) -> str:
        """``process`` one shard handed out by a batch job, waiting out the backoff of a
        read error that may pass (or a scorer failure) here rather than leaving the shard
        to a next poll, which a job's task does not have. Returns the last outcome.

        A store error while reading run.json, claiming or checking the shard (a network
        hiccup) is what ``poll`` survives by retrying the run next poll: here it is
        retried with the same backoff, then the shard is left pending ("failed") for the
        job's closing pass. Only a failed write (``WriteError``, disk full) is raised, as
        in run-once mode, since it would fail every shard."""
        while True:
            try:
                record = self._record(ref.run_id)
                if record is None:
                    return "failed"  # its run.json went bad since the plan; reported
                outcome = self.process(ref, record)
            except _READ_ERRORS as error:
                if isinstance(error, WriteError):
                    raise
                log.error("%s: %s", ref, error)
                if not self._retry_later(ref, error):
                    self._retry.pop(ref, None)
                    return "failed"
                outcome = "retry"
            if outcome not in ("retry", "failed") or ref in self._given_up:
                return outcome
            if self.stop.wait(max(0.0, self._retry[ref][1] - time.monotonic())):
                return outcome

    def _due(self, ref: ShardRef) -> bool:
        if ref in self._given_up:
            return False
        return time.monotonic() >= self._retry.get(ref, (0, 0.0))[1]

    # ---- listing ---------------------------------------------------------------------
    def _scan(self, run_id: str, record: RunRecord) -> RunState:
        """List a run's shards; report folders that are not tasks; complete
        quarantines a kill interrupted."""
        state = self.store.run_state(run_id, extra_tasks=tuple(record.tasks))
        for name in state.bad_folders:
            self._report(
                run_id,
                f"folder-{name.encode().hex()[:40]}",
                f"{GENERATIONS}/{name}",
                TandemError(f"{name!r} is not a task name; nothing in it is scored"),
            )
        for task_state in state.tasks.values():
            for name in task_state.strays:
                self._report(
                    run_id,
                    f"stray-{f'{task_state.task}/{name}'.encode().hex()[:60]}",
                    f"{GENERATIONS}/{task_state.task}/{name}",
                    TandemError(
                        f"{name!r} is not a shard name (<start>-<end>.parquet); not scored"
                    ),
                )
            for ref in task_state.interrupted:
                try:
                    if finish_quarantine(self.store, ref):
                        log.info("completed the quarantine of %s", ref)
                except _READ_ERRORS as error:
                    log.warning("could not complete the quarantine of %s: %s", ref, error)
        return state

    def scan(self, run_id: str) -> RunState:
        """The run's shards by state (a public view of ``_scan``)."""
        return self._scan(run_id, self.store.run_record(run_id))

    # ---- one shard -------------------------------------------------------------------
    def process(self, ref: ShardRef, record: RunRecord) -> str:
        """Claim, score and publish one shard. Returns what happened: scored,
        quarantined, skipped (already done), busy (leased by another), retry, failed."""
        if not self.leases.claim(ref):
            return "busy"
        try:
            if self._done(ref):
                self.tally.skipped += 1
                self._tally(ref.run_id).skipped += 1
                return "skipped"
            outcome = self._score(ref, record)
            for tally in (self.tally, self._tally(ref.run_id)):
                if outcome == "scored":
                    tally.scored += 1
                elif outcome == "quarantined":
                    tally.quarantined += 1
            return outcome
        finally:
            self.leases.release(ref)

    def _done(self, ref: ShardRef) -> bool:
        return (
            self.store.exists(self.store.shard_path(SCORES, ref))
            or self.store.exists(self.store.shard_path(QUARANTINE, ref, ERROR_SUFFIX))
            or not self.store.exists(self.store.shard_path(GENERATIONS, ref))
        )

    def _score(self, ref: ShardRef, record: RunRecord) -> str:
        source = self.store.shard_path(GENERATIONS, ref)
        started = time.perf_counter()
        try:
            table = self.store.read_table(source)
        except FileNotFoundError:
            return "skipped"  # quarantined by another scorer meanwhile
        except OSError as error:
            if isinstance(error, pa.ArrowException) or not self._retry_later(ref, error):
                return self._quarantine(ref, error)
            return "retry"
        except QUARANTINE_ERRORS as error:
            return self._quarantine(ref, error)
        try:
            scores = score_generation(table, ref, record, self.options)
        except NeedsConfirmation as error:
            # Not the shard's fault: it stays pending, skipped until a scorer is told
            # it may run programs. Said once per task.
            self._given_up.add(ref)
            self.tally.unconfirmed += 1
            self._tally(ref.run_id).unconfirmed += 1
            if ("unsafe", ref.task) not in self._reported:
                self._reported.add(("unsafe", ref.task))
                log.warning("%s", error)
            return "unconfirmed"
        except QUARANTINE_ERRORS as error:
            return self._quarantine(ref, error)
        except Exception as error:  # noqa: BLE001 - a scorer bug, not a bad shard
            # Not the shard's fault as far as we know: keep it pending (never quarantine
            # good data for a bug), log loudly, back off, keep serving every other shard.
            log.exception("scoring %s failed", source)
            self.tally.failed += 1
            self._tally(ref.run_id).failed += 1
            if not self._retry_later(ref, error):
                log.error("giving up on %s until this scorer restarts", source)
                self._given_up.add(ref)
            return "failed"
        try:
            publish_scores(self.store, ref, scores)
        except (TandemError, OSError) as error:
            return self._write_failed(ref, error)
        self._retry.pop(ref, None)
        log.info(
            "scored %s (%d rows) in %.0f ms",
            source,
            scores.num_rows,
            (time.perf_counter() - started) * 1000,
        )
        return "scored"

    def _write_failed(self, ref: ShardRef, error: BaseException) -> str:
        """A write that failed (disk full, read-only): run-once mode stops with the
        error; the daemon backs off and tries again later."""
        if self.config.once:
            raise error if isinstance(error, TandemError) else WriteError(str(error))
        log.error("%s: %s", ref, error)
        if not self._retry_later(ref, error):
            self._retry[ref] = (0, time.monotonic() + 300.0)
        return "retry"

    def _retry_later(self, ref: ShardRef, error: BaseException) -> bool:
        """Schedule another attempt; False when the attempts are used up."""
        attempts = self._retry.get(ref, (0, 0.0))[0] + 1
        if attempts >= self.config.read_attempts:
            return False
        delay = min(300.0, self.config.interval * 2**attempts)
        self._retry[ref] = (attempts, time.monotonic() + delay)
        log.warning("%s failed (%s); attempt %d, retrying in %.1fs", ref, error, attempts, delay)
        return True

    def _quarantine(self, ref: ShardRef, error: BaseException) -> str:
        self._retry.pop(ref, None)
        try:
            quarantine(self.store, ref, error)
        except FileNotFoundError:
            return "skipped"  # another scorer moved it first
        except (TandemError, OSError) as write_error:
            return self._write_failed(ref, write_error)
        log.warning("quarantined %s: %s", self.store.shard_path(GENERATIONS, ref), error)
        return "quarantined"

    def _damaged(self, ref: ShardRef, error: BaseException) -> None:
        """A score shard the summary could not read: move it aside, so its generation
        shard is pending again and scored anew."""
        try:
            name = set_aside_scores(self.store, ref, error)
        except FileNotFoundError:
            return
        except (TandemError, OSError) as move_error:
            log.error("cannot set aside the damaged score shard of %s: %s", ref, move_error)
            return
        log.warning("damaged score shard of %s (%s) moved aside as %s", ref, error, name)
        self._damaged_seen = True
        self.tally.set_aside += 1
        self._complete.discard(ref.run_id)
        self._fresh.pop(ref.run_id, None)

    # ---- summaries -------------------------------------------------------------------
    def refresh_summary(self, record: RunRecord, state: RunState | None = None) -> None:
        """Rebuild and publish a run's summary from its shards. A damaged score shard
        found while building is moved aside and the run listed again."""
        for _ in range(3):
            self._damaged_seen = False
            state = state or self.store.run_state(record.run_id, extra_tasks=tuple(record.tasks))
            summary = self.summaries.build(record, state)
            if not self._damaged_seen:
                break
            state = None
        self.store.publish_summary(summary)
        self.tally.summaries += 1
        self._tally(record.run_id).summaries += 1
        self._remember(record.run_id, summary.counts(), summary)

    def _remember(self, run_id: str, counts: Counts, summary: object) -> None:
        self._fresh[run_id] = counts
        tasks = getattr(summary, "tasks", {})
        # Complete: every sample scored and no shard waiting (a bad extra shard can be
        # pending in a run whose samples are all scored). Skipped until the next sweep.
        if tasks and all(
            entry.complete and counts[task][0] == counts[task][1] for task, entry in tasks.items()
        ):
            self._complete.add(run_id)

    def _ensure_summary(self, record: RunRecord, state: RunState) -> None:
        """Recompute summary.json unless it was computed from exactly these shards."""
        counts = state.counts()
        if _same_counts(self._fresh.get(record.run_id), counts):
            return
        try:
            current = self.store.summary(record.run_id)
        except TandemError:
            current = None
        if current is not None and _same_counts(current.counts(), counts):
            self._remember(record.run_id, counts, current)
            return
        self.refresh_summary(record, state)

    # ---- repairs ---------------------------------------------------------------------
    def sweep(self) -> None:
        """Check every run's summary against its shards (rebuilding from the shards that
        changed, which finds damaged score shards), drop leases of finished shards and
        remove stale temp files."""
        self._last_sweep = time.monotonic()
        self._fresh.clear()
        self._complete.clear()
        for run_id in self._runs():
            try:
                self._sweep_run(run_id)
            except _READ_ERRORS as error:
                if self.config.once and isinstance(error, WriteError):
                    raise
                log.warning("sweeping run %s: %s", run_id, error)

    def _sweep_run(self, run_id: str) -> None:
        for task in self.store.list_tasks(run_id, CLAIMS):
            for name in self.store.list_names(self.store.run_path(run_id, CLAIMS, task)):
                stem = name[: -len(CLAIM_SUFFIX)]
                if not parse_shard_name(stem):
                    continue
                ref = ShardRef(run_id, task, *parse_shard_name(stem))  # type: ignore[misc]
                path = self.leases.path(ref)
                finished = self.store.exists(
                    self.store.shard_path(SCORES, ref)
                ) or self.store.exists(self.store.shard_path(QUARANTINE, ref, ERROR_SUFFIX))
                try:
                    data = self.store.read_bytes(path)
                except TandemError:
                    continue
                if finished and self.leases.is_stale(path, data):
                    self.store.delete(path)
        for path in self.store.sweep_temp_files(run_id, older_than=self.config.lease):
            log.info("removed stale temp file %s", path)
        record = self._record(run_id)
        if record is None:
            return
        state = self._scan(run_id, record)
        if state.pending:
            return  # the poll scores them and refreshes the summary after
        summary = self.summaries.build(record, state)
        if self._damaged_seen:
            return  # its shard is pending again; the poll rescores and refreshes
        try:
            current = self.store.summary(run_id)
        except TandemError:
            current = None
        if current is None or current.as_json() != summary.as_json():
            self.store.publish_summary(summary)
            self.tally.summaries += 1
            self._tally(run_id).summaries += 1
        self._remember(run_id, summary.counts(), summary)


def redact(uri: str) -> str:
    """A store URI fit for logs: credentials in it (s3://KEY:SECRET@bucket) hidden."""
    uri = re.sub(r"(://)[^/@]*@", r"\1***@", uri)
    return re.sub(r"((?:secret|access|session)_?(?:key|token)=)[^&]*", r"\1***", uri)


def _same_counts(summary: Counts | None, listed: Counts) -> bool:
    if summary is None:
        return False
    zero = (0, 0, 0)
    return all(summary.get(t, zero) == listed.get(t, zero) for t in set(summary) | set(listed))


def watch(store: Store, config: DaemonConfig) -> Tally:
    """``tandem scorer``: run until SIGTERM/SIGINT (or, with ``once``, until done)."""
    import os
    import signal

    logging.basicConfig(
        level=os.environ.get("TANDEM_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        # Finish the shard in hand (scoring one takes well under a second), release its
        # lease, and exit 0: systemd's stop and a Ctrl-C are normal ends.
        log.info("received %s: finishing the current shard", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    tally = Daemon(store, config, stop).run()
    print(f"scorer: {tally.line()}", flush=True)
    return tally
