"""What a listing of a task's folders says about each of its shards.

"Which shards are pending" is answered here and nowhere else: the generation job, the
scorer daemon, ``tandem score``, the API's metrics and the summary all read a
``TaskState``. A state is one listing per folder kind, so it costs the same on a local
disk and on an object store, and it carries each file's size and modification time (its
*stamp*), so caches keyed by stamp notice a file that was replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.store._layout import ShardRef, parse_shard_name


@dataclass(frozen=True)
class FileStamp:
    """A file's identity as a listing sees it: a rewritten file gets a new stamp."""

    size: int
    mtime_ns: int


@dataclass(frozen=True)
class TaskState:
    """The shards of one task of one run, by state."""

    run_id: str
    task: str
    # Generation shards present under generations/, by name (quarantined ones included
    # until their move completes: see ``interrupted``).
    generated: dict[str, FileStamp] = field(default_factory=dict)
    scored: dict[str, FileStamp] = field(default_factory=dict)
    # Shards with a quarantine error record.
    quarantined: frozenset[str] = frozenset()
    # Score shards found damaged and moved aside (they are re-scored).
    damaged_scores: int = 0
    # Shards a scorer holds a lease on (only listed when asked for).
    leased: frozenset[str] = frozenset()
    # Files under generations/<task>/ whose names are not shard names.
    strays: tuple[str, ...] = ()

    def ref(self, name: str) -> ShardRef:
        start, end = parse_shard_name(name) or (0, 0)
        return ShardRef(self.run_id, self.task, start, end)

    @property
    def pending(self) -> list[ShardRef]:
        """Generation shards with neither a score shard nor a quarantine record."""
        return sorted(
            self.ref(name)
            for name in self.generated
            if name not in self.scored and name not in self.quarantined
        )

    @property
    def interrupted(self) -> list[ShardRef]:
        """Quarantined shards still under generations/ (a kill between record and move)."""
        return sorted(self.ref(name) for name in self.generated if name in self.quarantined)

    @property
    def live(self) -> list[ShardRef]:
        """Generation shards that count: present and not quarantined."""
        return sorted(self.ref(name) for name in self.generated if name not in self.quarantined)

    @property
    def scored_refs(self) -> list[ShardRef]:
        return sorted(self.ref(name) for name in self.scored)

    @property
    def counts(self) -> tuple[int, int, int]:
        """(generated, scored, quarantined), as summary.json records them."""
        return (len(self.live), len(self.scored), len(self.quarantined))


@dataclass(frozen=True)
class RunState:
    """Every task of a run, plus folder names under generations/ that are not tasks."""

    run_id: str
    tasks: dict[str, TaskState] = field(default_factory=dict)
    bad_folders: tuple[str, ...] = ()

    @property
    def pending(self) -> list[ShardRef]:
        return [ref for state in self.tasks.values() for ref in state.pending]

    def counts(self) -> dict[str, tuple[int, int, int]]:
        return {task: state.counts for task, state in self.tasks.items()}
