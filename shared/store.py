"""The run store: immutable Parquet shards under ``<store>/runs/<run_id>/``.

Layout::

    runs/<run_id>/run.json                              spec + environment, written once
    runs/<run_id>/generations/<task>/<shard>.parquet    written by workers
    runs/<run_id>/scores/<task>/<shard>.parquet         written by scorers
    runs/<run_id>/quarantine/<task>/<shard>.parquet     a shard the scorer could not read
    runs/<run_id>/quarantine/<task>/<shard>.error.json  ... and why
    runs/<run_id>/claims/<task>/<shard>.json            scorer leases (expire)
    runs/<run_id>/summary.json                          aggregates, rewritten as scores land

**Atomic publish, in one place.** Every write goes through ``Store.publish_bytes``.
On a local or NFS path it writes ``.<name>.tmp-<random>`` in the target folder,
fsyncs the file, renames it over the final name (atomic within one filesystem) and
fsyncs the folder, so a crash leaves either the old state or the whole new file,
never a partial one. On object stores (s3://, gs://) a single PUT is all-or-nothing,
so it writes the final name directly. Readers ignore names starting with ``.``.

Shard names are the sample range they hold, ``<start>-<end>`` zero-padded, so a
restarted job can list what exists and do only the missing ranges.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shared.errors import TandemError
from shared.spec import RUN_ID_PATTERN

SHARD_PATTERN = re.compile(r"^(\d{7})-(\d{7})$")
TASK_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True, order=True)
class ShardRef:
    """One shard of one task: samples [start, end) in the task's canonical order."""

    run_id: str
    task: str
    start: int
    end: int

    @property
    def name(self) -> str:
        return shard_name(self.start, self.end)


def shard_name(start: int, end: int) -> str:
    return f"{start:07d}-{end:07d}"


def shard_ranges(total: int, shard_size: int) -> list[tuple[int, int]]:
    """Deterministic shard boundaries: shard k holds [k*S, min((k+1)*S, total))."""
    return [(start, min(start + shard_size, total)) for start in range(0, total, shard_size)]


def check_run_id(run_id: str) -> str:
    """Refuse run ids that could escape the store (``..``, slashes, etc.)."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id) or ".." in run_id:
        raise TandemError(
            f"invalid run id {run_id!r}: letters, digits, '.', '_' and '-' only, "
            "starting with a letter or digit"
        )
    return run_id


def check_task(task: str) -> str:
    if not isinstance(task, str) or not TASK_PATTERN.match(task) or ".." in task:
        raise TandemError(f"invalid task name {task!r}")
    return task


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

    # ---- paths -------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def run_path(self, run_id: str, *parts: str) -> str:
        return self.path("runs", check_run_id(run_id), *parts)

    def shard_path(self, kind: str, ref: ShardRef, suffix: str = ".parquet") -> str:
        return self.run_path(ref.run_id, kind, check_task(ref.task), ref.name + suffix)

    # ---- low-level I/O -----------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def read_bytes(self, path: str) -> bytes:
        try:
            with self.fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError as error:
            raise TandemError(f"not found in store: {path}") from error

    def publish_bytes(self, path: str, data: bytes) -> None:
        """Atomically make ``path`` hold exactly ``data`` (see module docstring)."""
        folder, name = path.rsplit("/", 1)
        if self.local:
            os.makedirs(folder, exist_ok=True)
            tmp = f"{folder}/.{name}.tmp-{secrets.token_hex(6)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            _fsync_dir(folder)
        else:
            self.fs.create_dir(folder, recursive=True)
            with self.fs.open_output_stream(path) as stream:
                stream.write(data)

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` only if absent; True if this call created it.

        Local paths use O_EXCL (atomic on local filesystems and NFSv3+). Object stores
        have no conditional PUT in pyarrow, so this is check-then-write there: good
        enough for leases, which only avoid duplicate work and never decide correctness.
        """
        folder = path.rsplit("/", 1)[0]
        if self.local:
            os.makedirs(folder, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            return True
        if self.exists(path):
            return False
        self.publish_bytes(path, data)
        return True

    def delete(self, path: str) -> None:
        """Delete a file. Only leases are ever deleted; data moves to quarantine instead."""
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def move(self, src: str, dst: str) -> None:
        self.fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
        self.fs.move(src, dst)

    def list_names(self, folder: str) -> list[str]:
        """Visible (not dot-prefixed) file names directly in ``folder``; [] if absent."""
        selector = pafs.FileSelector(folder, allow_not_found=True, recursive=False)
        names = [
            info.base_name
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and not info.base_name.startswith(".")
        ]
        return sorted(names)

    def list_dirs(self, folder: str) -> list[str]:
        selector = pafs.FileSelector(folder, allow_not_found=True, recursive=False)
        return sorted(
            info.base_name
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.Directory and not info.base_name.startswith(".")
        )

    # ---- JSON and tables ---------------------------------------------------------------
    def publish_json(self, path: str, payload: Any) -> None:
        text = json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        self.publish_bytes(path, text.encode("utf-8"))

    def read_json(self, path: str) -> Any:
        data = self.read_bytes(path)
        try:
            return json.loads(data)
        except json.JSONDecodeError as error:
            raise TandemError(f"{path}: not valid JSON: {error}") from error

    def publish_table(self, path: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        # No dictionary/statistics surprises: plain zstd so identical tables give identical
        # bytes (scorers racing on one shard must write the same file).
        pq.write_table(table, buffer, compression="zstd", write_statistics=True)
        self.publish_bytes(path, buffer.getvalue())

    def read_table(self, path: str) -> pa.Table:
        with self.fs.open_input_file(path) as handle:
            return pq.read_table(handle)

    # ---- runs --------------------------------------------------------------------------
    def list_runs(self) -> list[str]:
        runs = []
        for name in self.list_dirs(self.path("runs")):
            if RUN_ID_PATTERN.match(name) and self.exists(self.run_path(name, "run.json")):
                runs.append(name)
        return runs

    def read_run(self, run_id: str) -> dict[str, Any]:
        path = self.run_path(run_id, "run.json")
        if not self.exists(path):
            raise TandemError(f"no run {run_id!r} in store {self.uri}")
        return self.read_json(path)

    def start_run(self, run_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """Write run.json once. A rerun with the same spec hash reuses the run (resume);
        a different spec under the same run id is refused so results never mix."""
        path = self.run_path(run_id, "run.json")
        if self.exists(path):
            existing = self.read_json(path)
            if existing.get("spec_hash") != record.get("spec_hash"):
                raise TandemError(
                    f"run {run_id!r} already exists in {self.uri} with a different spec "
                    f"(spec hash {existing.get('spec_hash')} vs {record.get('spec_hash')}); "
                    "choose another run_id or keep the spec unchanged to resume"
                )
            return existing
        self.publish_json(path, record)
        return record

    def list_tasks(self, run_id: str, kind: str) -> list[str]:
        return self.list_dirs(self.run_path(run_id, kind))

    def list_shards(self, run_id: str, kind: str, task: str) -> list[ShardRef]:
        """Published shards of one task, in order; ignores temp files and strays."""
        refs = []
        folder = self.run_path(run_id, kind, check_task(task))
        for name in self.list_names(folder):
            if not name.endswith(".parquet"):
                continue
            match = SHARD_PATTERN.match(name[: -len(".parquet")])
            if match:
                refs.append(ShardRef(run_id, task, int(match[1]), int(match[2])))
        return sorted(refs)

    def missing_shards(self, run_id: str, task: str, total: int, shard_size: int) -> list[ShardRef]:
        """Shards of [0, total) not yet published under generations/."""
        done = {(r.start, r.end) for r in self.list_shards(run_id, "generations", task)}
        return [
            ShardRef(run_id, task, start, end)
            for start, end in shard_ranges(total, shard_size)
            if (start, end) not in done
        ]


def _fsync_dir(folder: str) -> None:
    # Makes the rename itself durable; not supported on every platform/filesystem.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
