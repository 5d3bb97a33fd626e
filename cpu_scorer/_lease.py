"""Expiring leases on shards, so several scorer daemons rarely score the same shard twice.

A lease is ``runs/<id>/claims/<task>/<shard>.json`` holding its owner, host, pid and
expiry (unix seconds). It is created with ``Store.create_exclusive``; whoever creates it
holds it. Leases only avoid duplicated work: scoring is idempotent (a score shard is a
pure function of its generation shard), so a lease lost, stolen or ignored costs CPU
time and never correctness. That is why the takeover of a stale lease below may, in a
rare race, let two daemons score one shard: both write the same bytes.

A lease is stale when it has expired, when its holder ran on this host and that process
is gone (a daemon killed with SIGKILL is detected at once, not after the expiry), or when
it cannot be parsed (a holder killed while writing it) and is older than a lease period.
A batch job (``tandem score --ray``) names its leases after the job (``reclaim``): its
engine runs a shard again only when the earlier attempt is gone (its worker or node
died), so a lease of the same job is that attempt's and is taken over at once, on any
host, instead of after the expiry.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow.fs as pafs

from shared.errors import TandemError
from shared.store import CLAIM_SUFFIX, CLAIMS, ShardRef, Store

HOST = socket.gethostname()


def new_owner() -> str:
    """A name unique to this daemon process (host, pid and a random part)."""
    return f"{HOST}:{os.getpid()}:{secrets.token_hex(4)}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


@dataclass
class Leases:
    """Claim and release shard leases in one store on behalf of one owner."""

    store: Store
    owner: str
    seconds: float
    clock: Callable[[], float] = time.time
    # Leases whose owner starts with this are an earlier attempt of the same batch job.
    reclaim: str = ""

    def path(self, ref: ShardRef) -> str:
        return self.store.shard_path(CLAIMS, ref, CLAIM_SUFFIX)

    def _payload(self) -> bytes:
        now = self.clock()
        record = {
            "owner": self.owner,
            "host": HOST,
            "pid": os.getpid(),
            "claimed_at": round(now, 3),
            "expires": round(now + self.seconds, 3),
        }
        return json.dumps(record, sort_keys=True).encode()

    def claim(self, ref: ShardRef) -> bool:
        """Take the lease on ``ref``; False if someone else holds a live one."""
        path = self.path(ref)
        if self.store.create_exclusive(path, self._payload()):
            return True
        try:
            seen = self.store.read_bytes(path)
        except (TandemError, OSError):  # released between our two calls: try once more
            return self.store.create_exclusive(path, self._payload())
        if not self.is_stale(path, seen):
            return False
        return self._take_over(path, seen)

    def _take_over(self, path: str, seen: bytes) -> bool:
        # Move the stale lease to a private (dot-prefixed, so invisible) name first: of
        # several daemons trying at once only one move finds the file. Then check that
        # what was moved is the stale lease that was judged, not a fresh one another
        # daemon wrote in between; if it was fresh, put it back and give way.
        folder, name = path.rsplit("/", 1)
        aside = f"{folder}/.{name}.stale-{self.owner.replace(':', '_')}"
        try:
            self.store.move(path, aside)
        except OSError:
            return False
        try:
            moved = self.store.read_bytes(aside)
        except (TandemError, OSError):  # lost it: treat it as taken by someone else
            return False
        finally:
            self.store.delete(aside)
        if moved != seen:
            self.store.create_exclusive(path, moved)
            return False
        return self.store.create_exclusive(path, self._payload())

    def is_stale(self, path: str, data: bytes) -> bool:
        try:
            record = json.loads(data)
            expires = float(record["expires"])
            host, pid = str(record.get("host", "")), int(record.get("pid", -1))
        except (ValueError, KeyError, TypeError):
            # Written by a holder killed mid-write (create_exclusive is not atomic in
            # content): judge it by age instead.
            info = self.store.fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound or info.mtime is None:
                return True
            return info.mtime.timestamp() + self.seconds < self.clock()
        if expires < self.clock():
            return True
        if self.reclaim and str(record.get("owner", "")).startswith(self.reclaim):
            return True
        return host == HOST and pid != os.getpid() and pid > 0 and not _process_alive(pid)

    def release(self, ref: ShardRef) -> None:
        """Delete our lease on ``ref`` (not someone else's that replaced an expired one)."""
        path = self.path(ref)
        try:
            record = json.loads(self.store.read_bytes(path))
        except (TandemError, OSError, ValueError):  # absent or unreadable: not ours
            return
        if isinstance(record, dict) and record.get("owner") == self.owner:
            self.store.delete(path)
