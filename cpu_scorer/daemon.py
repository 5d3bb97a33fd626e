"""The scorer daemon: watch a store, claim each new generation shard, score it, publish.

``tandem scorer --store URI`` polls the store every ``--interval`` seconds (listing is
the one operation every pyarrow filesystem has, local, NFS and object stores alike),
and for each generation shard with neither a score shard nor a quarantine record:

1. claims it with an expiring lease (``cpu_scorer._lease``),
2. checks again that it is still unscored (another daemon may have just finished it),
3. scores it and publishes the score shard atomically, or quarantines a bad shard,
4. releases the lease,

and refreshes ``summary.json`` of each run whose shards changed.

**Why nothing is lost.** The store is the only state. A score shard appears whole or
not at all (atomic publish), so a daemon killed at any moment leaves its shard pending,
and the next daemon scores it again from scratch, writing the same bytes (a score shard
is a pure function of its generation shard). The other leftovers of a kill are repaired
on start and then every minute: the lease of a dead holder on this host is taken over at
once (elsewhere it expires), an interrupted quarantine is completed, a summary whose shard
counts differ from the store's is recomputed, and temp files older than a lease period are
removed (a temp file is an unfinished write, never data).

**Many daemons.** Leases keep them off each other's shards; nothing depends on leases
for correctness. A summary written from an older listing by a slower daemon is caught
by the same count check and rewritten.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from cpu_scorer._lease import Leases, new_owner
from cpu_scorer.scoring import (
    QUARANTINE_ERRORS,
    SummaryOptions,
    compute_summary,
    quarantine,
    score_table,
)
from shared.errors import TandemError
from shared.store import ShardRef, Store

log = logging.getLogger("tandem.scorer")

# Per task: (generation shards, score shards, quarantine records), as summary.json counts.
Counts = dict[str, tuple[int, int, int]]


@dataclass(frozen=True)
class DaemonConfig:
    """How the daemon polls and claims. ``once``: exit when nothing is left pending."""

    interval: float = 1.0
    lease: float = 300.0
    once: bool = False
    irt_params: str | None = None
    # While working through a backlog, refresh a run's summary at most this often.
    summary_every: float = 2.0
    # Full rescan (completed runs, stale leases, temp files) this often.
    sweep_every: float = 60.0
    # A plain OSError while reading may be a network hiccup: retry before quarantining.
    read_attempts: int = 3


@dataclass
class RunScan:
    """What one listing of a run found."""

    pending: list[ShardRef] = field(default_factory=list)
    counts: Counts = field(default_factory=dict)


@dataclass
class Tally:
    scored: int = 0
    quarantined: int = 0
    skipped: int = 0
    failed: int = 0
    summaries: int = 0

    def line(self) -> str:
        return (
            f"scored {self.scored}, quarantined {self.quarantined}, skipped {self.skipped} "
            f"(done by another scorer), failed {self.failed}, summaries {self.summaries}"
        )


class Daemon:
    """One scorer daemon over one store. ``run()`` returns when ``stop`` is set (or,
    with ``once``, when nothing is pending)."""

    def __init__(self, store: Store, config: DaemonConfig, stop: threading.Event | None = None):
        self.store = store
        self.config = config
        self.stop = stop or threading.Event()
        self.owner = new_owner()
        self.leases = Leases(store, self.owner, config.lease)
        self.options = SummaryOptions(irt_params=config.irt_params)
        self.tally = Tally()
        # Runs whose summary.json matched these counts when last checked.
        self._fresh: dict[str, Counts] = {}
        # Runs complete and fresh at the last check: skipped until the next sweep.
        self._complete: set[str] = set()
        # Shards that failed for a reason that may pass: attempts and next retry time.
        self._retry: dict[ShardRef, tuple[int, float]] = {}
        # Shards the scorer itself keeps failing on: left pending for a fixed scorer.
        self._given_up: set[ShardRef] = set()
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
            except (TandemError, OSError, pa.ArrowException) as error:
                # One broken run (unreadable run.json, a store hiccup) must not stop others.
                log.error("run %s: %s", run_id, error)
                left += 1
        return left

    def _runs(self) -> list[str]:
        try:
            runs = self.store.list_runs()
        except OSError as error:
            log.error("cannot list runs in %s: %s", redact(self.store.uri), error)
            return []
        return [r for r in runs if r not in self._complete]

    def _poll_run(self, run_id: str) -> int:
        scan = self.scan(run_id)
        last_summary = time.monotonic()
        changed = False
        for ref in scan.pending:
            if self.stop.is_set():
                break
            if not self._due(ref):
                continue
            if self.process(ref) in ("scored", "quarantined"):
                changed = True
            if changed and time.monotonic() - last_summary >= self.config.summary_every:
                self.refresh_summary(run_id)
                last_summary, changed = time.monotonic(), False
        if changed or scan.pending:
            scan = self.scan(run_id)
        self._ensure_summary(run_id, scan.counts)
        return len([r for r in scan.pending if r not in self._given_up])

    def _due(self, ref: ShardRef) -> bool:
        if ref in self._given_up:
            return False
        return time.monotonic() >= self._retry.get(ref, (0, 0.0))[1]

    # ---- listing ---------------------------------------------------------------------
    def scan(self, run_id: str) -> RunScan:
        """List a run's shards; also completes quarantines a kill interrupted."""
        scan = RunScan()
        for task in self.store.list_tasks(run_id, "generations"):
            generated = self.store.list_shards(run_id, "generations", task)
            scored = {r.name for r in self.store.list_shards(run_id, "scores", task)}
            records = [
                n
                for n in self.store.list_names(self.store.run_path(run_id, "quarantine", task))
                if n.endswith(".error.json")
            ]
            quarantined = {n[: -len(".error.json")] for n in records}
            for ref in generated:
                if ref.name in quarantined:
                    self._finish_quarantine(ref)
                elif ref.name not in scored:
                    scan.pending.append(ref)
            still_generated = len([r for r in generated if r.name not in quarantined])
            scan.counts[task] = (still_generated, len(scored), len(records))
        return scan

    def _finish_quarantine(self, ref: ShardRef) -> None:
        # The error record is written before the shard is moved, so a kill in between
        # leaves a recorded shard still under generations/: move it now.
        source = self.store.shard_path("generations", ref)
        target = self.store.shard_path("quarantine", ref)
        try:
            if not self.store.exists(target):
                self.store.move(source, target)
                log.info("completed the quarantine of %s", source)
            elif self.store.read_bytes(target) == self.store.read_bytes(source):
                # An object-store move is copy + delete; a kill between left two copies.
                self.store.delete(source)
        except (TandemError, OSError) as error:
            log.warning("could not complete the quarantine of %s: %s", source, error)

    # ---- one shard -------------------------------------------------------------------
    def process(self, ref: ShardRef) -> str:
        """Claim, score and publish one shard. Returns what happened: scored,
        quarantined, skipped (already done), busy (leased by another), retry, failed."""
        if not self.leases.claim(ref):
            return "busy"
        try:
            if self._done(ref):
                self.tally.skipped += 1
                return "skipped"
            outcome = self._score(ref)
            if outcome == "scored":
                self.tally.scored += 1
            elif outcome == "quarantined":
                self.tally.quarantined += 1
            return outcome
        finally:
            self.leases.release(ref)

    def _done(self, ref: ShardRef) -> bool:
        return (
            self.store.exists(self.store.shard_path("scores", ref))
            or self.store.exists(self.store.shard_path("quarantine", ref, ".error.json"))
            or not self.store.exists(self.store.shard_path("generations", ref))
        )

    def _score(self, ref: ShardRef) -> str:
        source = self.store.shard_path("generations", ref)
        started = time.perf_counter()
        try:
            table = self.store.read_table(source)
            scores = score_table(table)
        except FileNotFoundError:
            return "skipped"  # quarantined by another scorer meanwhile
        except OSError as error:
            if isinstance(error, pa.ArrowException) or not self._retry_later(ref, error):
                return self._quarantine(ref, error)
            return "retry"
        except QUARANTINE_ERRORS as error:
            return self._quarantine(ref, error)
        except Exception as error:  # noqa: BLE001 - a scorer bug, not a bad shard
            # Not the shard's fault as far as we know: keep it pending (never quarantine
            # good data for a bug), log loudly, back off, keep serving every other shard.
            log.exception("scoring %s failed", source)
            self.tally.failed += 1
            if not self._retry_later(ref, error):
                log.error("giving up on %s until this scorer restarts", source)
                self._given_up.add(ref)
            return "failed"
        self.store.publish_table(self.store.shard_path("scores", ref), scores)
        self._retry.pop(ref, None)
        log.info(
            "scored %s (%d rows) in %.0f ms",
            source,
            scores.num_rows,
            (time.perf_counter() - started) * 1000,
        )
        return "scored"

    def _retry_later(self, ref: ShardRef, error: BaseException) -> bool:
        """Schedule another attempt; False when the attempts are used up."""
        attempts = self._retry.get(ref, (0, 0.0))[0] + 1
        if attempts >= self.config.read_attempts:
            return False
        delay = min(300.0, self.config.interval * 2**attempts)
        self._retry[ref] = (attempts, time.monotonic() + delay)
        log.warning(
            "%s/%s/%s failed (%s); attempt %d, retrying in %.1fs",
            ref.run_id,
            ref.task,
            ref.name,
            error,
            attempts,
            delay,
        )
        return True

    def _quarantine(self, ref: ShardRef, error: BaseException) -> str:
        self._retry.pop(ref, None)
        try:
            quarantine(self.store, ref, error)
        except FileNotFoundError:
            return "skipped"  # another scorer moved it first
        log.warning("quarantined %s: %s", self.store.shard_path("generations", ref), error)
        return "quarantined"

    # ---- summaries -------------------------------------------------------------------
    def refresh_summary(self, run_id: str) -> dict[str, Any]:
        summary = compute_summary(self.store, run_id, self.options)
        self.store.publish_json(self.store.run_path(run_id, "summary.json"), summary)
        self.tally.summaries += 1
        self._remember(run_id, summary)
        return summary

    def _remember(self, run_id: str, summary: dict[str, Any]) -> None:
        counts = summary_counts(summary)
        self._fresh[run_id] = counts
        # Complete: every sample scored and no shard waiting (a bad extra shard can be
        # pending in a run whose samples are all scored). Skipped until the next sweep.
        tasks = summary.get("tasks", {})
        if tasks and all(
            entry.get("complete") and counts[task][0] == counts[task][1]
            for task, entry in tasks.items()
        ):
            self._complete.add(run_id)

    def _ensure_summary(self, run_id: str, counts: Counts) -> None:
        """Recompute summary.json unless it was computed from exactly these shards."""
        if _same_counts(self._fresh.get(run_id), counts):
            return
        try:
            current = self.store.read_json(self.store.run_path(run_id, "summary.json"))
        except TandemError:
            current = None
        if isinstance(current, dict) and _same_counts(summary_counts(current), counts):
            self._remember(run_id, current)
            return
        self.refresh_summary(run_id)

    # ---- repairs ---------------------------------------------------------------------
    def sweep(self) -> None:
        """Forget cached freshness (another daemon may have written an older summary
        and died), drop leases of finished shards, remove stale temp files."""
        self._last_sweep = time.monotonic()
        self._fresh.clear()
        self._complete.clear()
        try:
            runs = self.store.list_runs()
        except OSError as error:
            log.error("cannot list runs in %s: %s", redact(self.store.uri), error)
            return
        for run_id in runs:
            try:
                self._sweep_run(run_id)
            except (TandemError, OSError) as error:
                log.warning("sweeping run %s: %s", run_id, error)

    def _sweep_run(self, run_id: str) -> None:
        for task in self.store.list_tasks(run_id, "claims"):
            for name in self.store.list_names(self.store.run_path(run_id, "claims", task)):
                path = self.store.run_path(run_id, "claims", task, name)
                stem = name[: -len(".json")]
                finished = self.store.exists(
                    self.store.run_path(run_id, "scores", task, stem + ".parquet")
                ) or self.store.exists(
                    self.store.run_path(run_id, "quarantine", task, stem + ".error.json")
                )
                try:
                    data = self.store.read_bytes(path)
                except TandemError:
                    continue
                if finished and self.leases.is_stale(path, data):
                    self.store.delete(path)
        if self.store.local:
            self._sweep_temp_files(run_id)

    def _sweep_temp_files(self, run_id: str) -> None:
        # Only local stores have temp files (object-store PUTs are all-or-nothing). A
        # write takes milliseconds; one older than a lease period was cut off by a kill.
        cutoff = time.time() - self.config.lease
        root = self.store.run_path(run_id)
        for folder, _dirs, files in os.walk(root):
            for name in files:
                if not name.startswith(".") or ".tmp-" not in name and ".stale-" not in name:
                    continue
                path = os.path.join(folder, name)
                try:
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        log.info("removed stale temp file %s", path)
                except FileNotFoundError:
                    continue


def redact(uri: str) -> str:
    """A store URI fit for logs: credentials in it (s3://KEY:SECRET@bucket) hidden."""
    uri = re.sub(r"(://)[^/@]*@", r"\1***@", uri)
    return re.sub(r"((?:secret|access|session)_?(?:key|token)=)[^&]*", r"\1***", uri)


def summary_counts(summary: dict[str, Any]) -> Counts:
    counts: Counts = {}
    for task, entry in summary.get("tasks", {}).items():
        shards = entry.get("shards", {})
        counts[task] = (shards.get("generated"), shards.get("scored"), shards.get("quarantined"))
    return counts


def _same_counts(summary: Counts | None, listed: Counts) -> bool:
    if summary is None:
        return False
    zero = (0, 0, 0)
    return all(summary.get(t, zero) == listed.get(t, zero) for t in set(summary) | set(listed))


# ---- CLI -----------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """``tandem scorer``: run until SIGTERM/SIGINT (or, with --once, until done)."""
    logging.basicConfig(
        level=os.environ.get("TANDEM_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.interval <= 0 or args.lease <= 0:
        raise TandemError("--interval and --lease must be positive numbers of seconds")
    config = DaemonConfig(
        interval=args.interval, lease=args.lease, once=args.once, irt_params=args.irt_params
    )
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        # Finish the shard in hand (scoring one takes well under a second), release its
        # lease, and exit 0: systemd's stop and a Ctrl-C are normal ends.
        log.info("received %s: finishing the current shard", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    tally = Daemon(Store(args.store), config, stop).run()
    print(f"scorer: {tally.line()}", flush=True)
    return 0
