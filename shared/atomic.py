"""Atomic local writes, in one place: a reader sees the old state or the whole new one.

A file is written to ``.<name>.tmp-<random>`` in its target folder, fsynced, renamed over
the final name (atomic within one filesystem) and the folder is fsynced, so a crash at
any moment leaves either the old file or the complete new one, never a partial one.
Readers skip names that start with ``.``; a temp file left by a crash is swept later
(``Store.sweep_temp_files``). A folder built in the background (a dequantized model, a
merged adapter) is built in a hidden sibling and renamed into place the same way.

Object stores need none of this: a single PUT is all-or-nothing (see ``shared.store``).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.errors import WriteError

TEMP_MARK = ".tmp-"


def temp_name(name: str) -> str:
    """The hidden name a write of ``name`` goes through before the rename."""
    return f".{name}{TEMP_MARK}{secrets.token_hex(6)}"


def write_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Make ``path`` hold exactly ``data``, atomically (see the module docstring).

    A full disk or a read-only folder raises ``TandemError`` naming the path; nothing is
    left behind in either case.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    folder = folder or "."
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, temp_name(name))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as error:
        raise write_error(path, error) from error
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError):
            raise write_error(path, error) from error
        raise
    fsync_dir(folder)


def create_file(path: str | os.PathLike[str], data: bytes) -> bool:
    """Create ``path`` holding ``data`` only if it does not exist; True if this call made it.

    The content is written to a temp file first and then *linked* to the final name
    (``link`` fails if the name exists, on local filesystems and NFSv3+): the file
    appears complete or not at all, and of two racing callers exactly one wins.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    folder = folder or "."
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, temp_name(name))
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise write_error(path, error) from error
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in _NO_LINKS:
            raise write_error(path, error) from error
        return _create_in_place(path, data)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    fsync_dir(folder)
    return True


# Filesystems without hard links (some FUSE and SMB mounts) answer with one of these.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}


def _create_in_place(path: str, data: bytes) -> bool:
    # O_EXCL still lets only one caller create the name; the content is written after,
    # so a reader may see it short (lease readers judge an unparsable lease by age).
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    except OSError as error:
        raise write_error(path, error) from error
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return True


@contextmanager
def building_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a hidden sibling folder to fill; on success it is renamed to ``target``.

    If another process finished ``target`` first, its copy is kept and ours dropped;
    a crash leaves only a hidden folder, never a half-written ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable; not every platform/filesystem supports it."""
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


def write_error(path: str, error: OSError) -> WriteError:
    """A one-line user error for a failed write: disk full, read-only, no permission."""
    reasons = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the filesystem is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }
    reason = reasons.get(error.errno or 0, error.strerror or str(error))
    return WriteError(f"cannot write {path}: {reason}; nothing partial was left behind")
