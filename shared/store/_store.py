"""The Store: one run store at a local path or any ``pyarrow.fs`` URI.

**Atomic publish, in one place.** Every write goes through ``Store.publish_bytes``. On a
local or NFS path that is ``shared.atomic.write_file`` (temp file, fsync, rename, fsync
the folder). On object stores (s3://, gs://) a single PUT is all-or-nothing, so it writes
the final name directly. Readers ignore names starting with ``.``.
"""

from __future__ import annotations

import errno
import io
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shared import atomic
from shared.errors import TandemError
from shared.records import (
    JobRecord,
    ProfileRecord,
    RunRecord,
    Summary,
    SweepRecord,
    read_job,
    read_profile,
    read_run_record,
    read_summary,
    read_sweep,
)
from shared.store._layout import (
    CLAIM_SUFFIX,
    CLAIMS,
    ERROR_SUFFIX,
    GENERATIONS,
    JOBS,
    PROFILE,
    QUARANTINE,
    RUN_PROBLEMS,
    RUN_RECORD,
    RUNS,
    SCORES,
    SHARD_SUFFIX,
    SUMMARY,
    SWEEP_RECORD,
    SWEEPS,
    ShardRef,
    check_run_id,
    check_task,
    damaged_score_shard,
    is_run_id,
    is_task_name,
    parse_shard_name,
    shard_ranges,
)
from shared.store._state import FileStamp, RunState, TaskState

# An object store has no create-if-absent; contenders for one name wait this long after
# writing their claim before they compare claims (see ``create_exclusive``).
CLAIM_SETTLE_SECONDS = 1.0


class Store:
    """A run store at a local path or any pyarrow.fs URI (s3://bucket/prefix, gs://...)."""

    def __init__(self, uri: str | os.PathLike[str]):
        uri = os.fspath(uri)
        self.uri = uri
        if "://" in uri and not uri.startswith("file://"):
            try:
                self.fs, root = pafs.FileSystem.from_uri(uri)
            except (pa.ArrowInvalid, OSError) as error:
                raise TandemError(f"cannot open store {uri!r}: {error}") from error
            self.local = False
            self.root = root.rstrip("/")
        else:
            path = uri[len("file://") :] if uri.startswith("file://") else uri
            self.fs = pafs.LocalFileSystem()
            self.local = True
            self.root = str(Path(path).expanduser().resolve())

    # ---- the store itself ----------------------------------------------------------------
    def check(self, *, writable: bool, create: bool = False) -> None:
        """Fail with one clear line unless the store can be used: it exists (or, with
        ``create``, is made), is a folder, can be listed and, when ``writable``, written."""
        where = f"store {self.uri}"
        try:
            info = self.fs.get_file_info(self.root)
        except OSError as error:
            raise TandemError(f"{where} cannot be reached: {error}") from error
        if info.type == pafs.FileType.NotFound:
            if not create:
                raise TandemError(
                    f"{where} does not exist; check the path (a new store is created by "
                    "`tandem generate`)"
                )
            try:
                self.fs.create_dir(self.root, recursive=True)
            except OSError as error:
                raise TandemError(f"{where} cannot be created: {_reason(error)}") from error
        elif info.type != pafs.FileType.Directory:
            raise TandemError(f"{where} is a file, not a folder; point --store at a folder")
        try:
            self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False))
        except OSError as error:
            raise TandemError(f"{where} cannot be read: {_reason(error)}") from error
        if writable and self.local:
            probe = os.path.join(self.root, atomic.temp_name("write-check"))
            try:
                with open(probe, "xb"):
                    pass
                os.unlink(probe)
            except OSError as error:
                raise TandemError(f"{where} is not writable: {_reason(error)}") from error

    # ---- paths ---------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def run_path(self, run_id: str, *parts: str) -> str:
        return self.path(RUNS, check_run_id(run_id), *parts)

    def shard_path(self, kind: str, ref: ShardRef, suffix: str = SHARD_SUFFIX) -> str:
        return self.run_path(ref.run_id, kind, check_task(ref.task), ref.name + suffix)

    def relative(self, path: str) -> str:
        """``path`` as seen from the store root: for messages that must not reveal where
        the store lives on the server."""
        prefix = self.root + "/"
        return path[len(prefix) :] if path.startswith(prefix) else path

    # ---- low-level I/O -------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def stamp(self, path: str) -> FileStamp | None:
        """The file's size and mtime, or None when it is absent."""
        info = self.fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            return None
        return FileStamp(info.size or 0, info.mtime_ns or 0)

    def read_bytes(self, path: str) -> bytes:
        try:
            with self.fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError as error:
            raise TandemError(f"not found in store: {self.relative(path)}") from error

    def publish_bytes(self, path: str, data: bytes) -> None:
        """Atomically make ``path`` hold exactly ``data`` (see the module docstring)."""
        if self.local:
            atomic.write_file(path, data)
            return
        folder = path.rsplit("/", 1)[0]
        try:
            self.fs.create_dir(folder, recursive=True)
            with self.fs.open_output_stream(path) as stream:
                stream.write(data)
        except OSError as error:
            raise atomic.write_error(self.relative(path), error) from error

    def create_exclusive(self, path: str, data: bytes, *, settle: bool = False) -> bool:
        """Create ``path`` only if absent; True if this call created it.

        Local paths: ``shared.atomic.create_file`` (a hard link that fails if the name
        exists: atomic on local filesystems and NFSv3+). Object stores have no
        conditional PUT in pyarrow. Without ``settle`` this is check-then-write there:
        good enough for leases, which only avoid duplicate work. With ``settle`` (run
        records) each contender writes a claim beside the name, waits
        ``CLAIM_SETTLE_SECONDS``, lists the claims, and only the oldest claim's writer
        creates the file; two can both win only if one's claim became visible after the
        other's settle period (clock skew beyond a second).
        """
        if self.local:
            return atomic.create_file(path, data)
        if self.exists(path):
            return False
        if not settle:
            self.publish_bytes(path, data)
            return True
        folder, name = path.rsplit("/", 1)
        mine = f".{name}.claim-{time.time_ns():020d}-{secrets.token_hex(4)}"
        self.publish_bytes(f"{folder}/{mine}", b"")
        try:
            time.sleep(CLAIM_SETTLE_SECONDS)
            selector = pafs.FileSelector(folder, allow_not_found=True)
            claims = sorted(
                info.base_name
                for info in self.fs.get_file_info(selector)
                if info.base_name.startswith(f".{name}.claim-")
            )
            if claims[:1] != [mine] or self.exists(path):
                return False
            self.publish_bytes(path, data)
            return True
        finally:
            self.delete(f"{folder}/{mine}")

    def delete(self, path: str) -> None:
        """Delete a file. Only leases, claims and obsolete problem records are ever
        deleted; data moves to quarantine instead."""
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def move(self, src: str, dst: str) -> None:
        self.fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
        self.fs.move(src, dst)

    def _infos(self, folder: str) -> list[pafs.FileInfo]:
        """Visible entries of ``folder``. On a local store a symbolic link is skipped:
        whatever a store holds, nothing outside it is ever read through it."""
        selector = pafs.FileSelector(folder, allow_not_found=True, recursive=False)
        return [
            info
            for info in self.fs.get_file_info(selector)
            if not info.base_name.startswith(".") and not (self.local and os.path.islink(info.path))
        ]

    def list_names(self, folder: str) -> list[str]:
        """Visible (not dot-prefixed) file names directly in ``folder``; [] if absent."""
        return sorted(i.base_name for i in self._infos(folder) if i.type == pafs.FileType.File)

    def list_dirs(self, folder: str) -> list[str]:
        return sorted(i.base_name for i in self._infos(folder) if i.type == pafs.FileType.Directory)

    def _stamps(self, folder: str, suffix: str) -> dict[str, FileStamp]:
        """Stem -> stamp of the visible files in ``folder`` ending in ``suffix``."""
        return {
            info.base_name[: len(info.base_name) - len(suffix)]: FileStamp(
                info.size or 0, info.mtime_ns or 0
            )
            for info in self._infos(folder)
            if info.type == pafs.FileType.File and info.base_name.endswith(suffix)
        }

    # ---- JSON and tables -----------------------------------------------------------------
    def publish_json(self, path: str, payload: Any) -> None:
        text = json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        self.publish_bytes(path, text.encode("utf-8"))

    def read_json(self, path: str) -> Any:
        data = self.read_bytes(path)
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise TandemError(f"{self.relative(path)}: not valid JSON: {error}") from error

    def publish_table(self, path: str, table: pa.Table) -> None:
        self.publish_bytes(path, _parquet_bytes(table))

    def create_table(self, path: str, table: pa.Table) -> bool:
        """Publish ``table`` at ``path`` only if absent (``create_exclusive``); True if
        this call created it. For files that must never be replaced once published."""
        return self.create_exclusive(path, _parquet_bytes(table))

    def read_table(self, path: str, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open_input_file(path) as handle:
            return pq.read_table(handle, columns=columns)

    def read_schema(self, path: str) -> pa.Schema:
        """A Parquet file's schema and key-value metadata, without reading its rows."""
        with self.fs.open_input_file(path) as handle:
            return pq.read_schema(handle)

    # ---- runs ----------------------------------------------------------------------------
    def list_runs(self) -> list[str]:
        """Run ids with a run.json, in name order (folders that are not run ids skipped)."""
        return [
            name
            for name in self.list_dirs(self.path(RUNS))
            if is_run_id(name) and self.exists(self.run_path(name, RUN_RECORD))
        ]

    def run_record(self, run_id: str) -> RunRecord:
        """The run's record, upgraded to the current version; TandemError naming the file
        when it is missing or not a valid record."""
        path = self.run_path(run_id, RUN_RECORD)
        if not self.exists(path):
            raise TandemError(f"no run {run_id!r} in store {self.uri}")
        return read_run_record(self.read_bytes(path), self.relative(path))

    def read_run(self, run_id: str) -> dict[str, Any]:
        """``run_record`` as plain JSON (current version)."""
        return self.run_record(run_id).as_json()

    def start_run(self, run_id: str, record: RunRecord | dict[str, Any]) -> dict[str, Any]:
        """Create run.json exclusively. The same spec hash again resumes the run; a
        different spec under the same run id is refused, so results never mix, and of
        two specs racing for one new run id exactly one is accepted."""
        payload = record.as_json() if isinstance(record, RunRecord) else record
        path = self.run_path(run_id, RUN_RECORD)
        text = json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        if self.create_exclusive(path, text.encode("utf-8"), settle=True):
            return payload
        existing = self.read_json(path)
        self.check_same_spec(run_id, existing, payload.get("spec_hash"))
        return existing

    def check_same_spec(self, run_id: str, existing: Any, spec_hash: str | None) -> None:
        """Refuse to add to a run whose run.json holds another spec."""
        have = existing.get("spec_hash") if isinstance(existing, dict) else None
        if have != spec_hash:
            raise TandemError(
                f"run {run_id!r} already exists in {self.uri} with a different spec "
                f"(spec hash {have} vs {spec_hash}); choose another run_id or keep the "
                "spec unchanged to resume"
            )

    def summary(self, run_id: str) -> Summary | None:
        """The run's summary.json, upgraded; None when there is none yet. A damaged one
        raises TandemError naming it."""
        path = self.run_path(run_id, SUMMARY)
        if not self.exists(path):
            return None
        return read_summary(self.read_bytes(path), self.relative(path))

    def publish_summary(self, summary: Summary) -> None:
        self.publish_json(self.run_path(summary.run_id, SUMMARY), summary.as_json())

    def profile(self, run_id: str) -> ProfileRecord | None:
        """The run's profile.json (``tandem profile``); None when it was not profiled. A
        damaged one raises TandemError naming it."""
        path = self.run_path(run_id, PROFILE)
        if not self.exists(path):
            return None
        return read_profile(self.read_bytes(path), self.relative(path))

    def publish_profile(self, profile: ProfileRecord) -> None:
        self.publish_json(self.run_path(profile.run_id, PROFILE), profile.as_json())

    def publish_job(self, record: JobRecord) -> None:
        """Write a generation job's record (``jobs/<job_id>.json``)."""
        self.publish_json(self._job_path(record.run_id, record.job_id), record.as_json())

    def jobs(self, run_id: str) -> list[JobRecord]:
        """The run's job records, oldest first (job ids start with their UTC start time)."""
        folder = self.run_path(run_id, JOBS)
        names = sorted(n for n in self.list_names(folder) if n.endswith(".json"))
        return [
            read_job(self.read_bytes(f"{folder}/{name}"), self.relative(f"{folder}/{name}"))
            for name in names
        ]

    def _job_path(self, run_id: str, job_id: str) -> str:
        return self.run_path(run_id, JOBS, f"{check_run_id(job_id)}.json")

    # ---- sweeps --------------------------------------------------------------------------
    def sweep_path(self, name: str) -> str:
        return self.path(SWEEPS, check_run_id(name), SWEEP_RECORD)

    def sweep(self, name: str) -> SweepRecord | None:
        path = self.sweep_path(name)
        if not self.exists(path):
            return None
        return read_sweep(self.read_bytes(path), self.relative(path))

    def publish_sweep(self, record: SweepRecord) -> None:
        self.publish_json(self.sweep_path(record.name), record.as_json())

    def list_sweeps(self) -> list[str]:
        return [
            name
            for name in self.list_dirs(self.path(SWEEPS))
            if is_run_id(name) and self.exists(self.sweep_path(name))
        ]

    # ---- shards --------------------------------------------------------------------------
    def list_tasks(self, run_id: str, kind: str) -> list[str]:
        """Task folder names under ``kind`` that are valid task names."""
        return [n for n in self.list_dirs(self.run_path(run_id, kind)) if is_task_name(n)]

    def list_shards(self, run_id: str, kind: str, task: str) -> list[ShardRef]:
        """Published shards of one task, in order; ignores temp files and strays."""
        folder = self.run_path(run_id, kind, check_task(task))
        refs = []
        for stem in self._stamps(folder, SHARD_SUFFIX):
            bounds = parse_shard_name(stem)
            if bounds:
                refs.append(ShardRef(run_id, task, *bounds))
        return sorted(refs)

    def missing_shards(self, run_id: str, task: str, total: int, shard_size: int) -> list[ShardRef]:
        """Shards of [0, total) not yet published under generations/."""
        done = {(r.start, r.end) for r in self.list_shards(run_id, GENERATIONS, task)}
        return [
            ShardRef(run_id, task, start, end)
            for start, end in shard_ranges(total, shard_size)
            if (start, end) not in done
        ]

    def task_state(self, run_id: str, task: str, *, leases: bool = False) -> TaskState:
        """One listing of each of the task's folders (see ``shared.store._state``)."""
        check_task(task)
        generated: dict[str, FileStamp] = {}
        strays = []
        for stem, stamp in self._stamps(self.run_path(run_id, GENERATIONS, task), "").items():
            if stem.endswith(SHARD_SUFFIX) and parse_shard_name(stem[: -len(SHARD_SUFFIX)]):
                generated[stem[: -len(SHARD_SUFFIX)]] = stamp
            else:
                strays.append(stem)
        scored = {
            stem: stamp
            for stem, stamp in self._stamps(
                self.run_path(run_id, SCORES, task), SHARD_SUFFIX
            ).items()
            if parse_shard_name(stem)
        }
        records = self._stamps(self.run_path(run_id, QUARANTINE, task), ERROR_SUFFIX)
        quarantined = frozenset(stem for stem in records if parse_shard_name(stem))
        damaged = sum(1 for stem in records if damaged_score_shard(stem))
        leased: frozenset[str] = frozenset()
        if leases:
            claims = self._stamps(self.run_path(run_id, CLAIMS, task), CLAIM_SUFFIX)
            leased = frozenset(stem for stem in claims if parse_shard_name(stem))
        return TaskState(
            run_id=run_id,
            task=task,
            generated=generated,
            scored=scored,
            quarantined=quarantined,
            damaged_scores=damaged,
            leased=leased,
            strays=tuple(sorted(strays)),
        )

    def run_state(self, run_id: str, *, extra_tasks: tuple[str, ...] = ()) -> RunState:
        """Every task folder under generations/ (plus ``extra_tasks``, e.g. the tasks the
        run record announces), and the folder names there that are not task names."""
        folders = self.list_dirs(self.run_path(run_id, GENERATIONS))
        names = sorted({n for n in folders if is_task_name(n)} | set(extra_tasks))
        return RunState(
            run_id=run_id,
            tasks={task: self.task_state(run_id, task) for task in names},
            bad_folders=tuple(n for n in folders if not is_task_name(n)),
        )

    def problem_path(self, run_id: str, name: str) -> str:
        """Where a problem of the run itself is recorded (quarantine/_run/<name>.error.json)."""
        return self.run_path(run_id, QUARANTINE, RUN_PROBLEMS, name + ERROR_SUFFIX)

    # ---- repairs -------------------------------------------------------------------------
    def sweep_temp_files(self, run_id: str, older_than: float) -> list[str]:
        """Remove temp files (``.<name>.tmp-*``, stale lease moves) last modified more than
        ``older_than`` seconds ago: an unfinished write cut off by a kill, never data.
        Only local stores have them (object-store PUTs are all-or-nothing)."""
        if not self.local:
            return []
        removed = []
        cutoff = time.time() - older_than
        for folder, _dirs, files in os.walk(self.run_path(run_id)):
            for name in files:
                if not name.startswith(".") or (
                    atomic.TEMP_MARK not in name and ".stale-" not in name
                ):
                    continue
                path = os.path.join(folder, name)
                try:
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed.append(path)
                except FileNotFoundError:
                    continue
        return removed


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    # No dictionary/statistics surprises: plain zstd so identical tables give identical
    # bytes (scorers racing on one shard must write the same file).
    pq.write_table(table, buffer, compression="zstd", write_statistics=True)
    return buffer.getvalue()


def _reason(error: OSError) -> str:
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if error.errno == errno.ENOTDIR:
        return "a part of the path is a file"
    return error.strerror or str(error)
