"""``tandem score`` is the daemon's run-once mode: the same retries and quarantine rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpu_scorer.scoring import score_store
from shared.store import Store


def test_tandem_score_retries_a_transient_read_error(
    store_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(str(store_copy))
    real = store.read_table
    failures = {"left": 1}

    def flaky(path: str, columns: list[str] | None = None):  # one hiccup, then fine
        if "generations" in path and failures["left"]:
            failures["left"] -= 1
            raise OSError("connection reset by peer")
        return real(path, columns)

    monkeypatch.setattr(store, "read_table", flaky)
    counts = score_store(store, progress=False)
    assert failures["left"] == 0
    assert sum(c["quarantined"] for c in counts.values()) == 0
    assert not list(store_copy.glob("runs/*/quarantine/*/*"))
    generated = {p.name for p in store_copy.glob("runs/*/generations/*/*.parquet")}
    assert generated == {p.name for p in store_copy.glob("runs/*/scores/*/*.parquet")}
