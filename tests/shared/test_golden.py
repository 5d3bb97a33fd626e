"""Files written by earlier versions stay readable: golden Parquet per schema version."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from shared.schema import SCHEMAS, provenance_of, upgrade

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
make_golden = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_golden)

FILES = sorted(GOLDEN.glob("*-v*.parquet"))


def test_every_current_schema_has_a_golden_file():
    for kind, definition in SCHEMAS.items():
        assert (GOLDEN / f"{kind}-v{definition.version}.parquet").is_file(), kind


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_golden_file_reads_and_upgrades(path):
    kind, version = path.stem.rsplit("-v", 1)
    table = pq.read_table(path)
    got_kind, upgraded = upgrade(table)
    assert got_kind == kind
    assert upgraded.schema.equals(SCHEMAS[kind].schema, check_metadata=False)
    assert provenance_of(upgraded) == make_golden.PROVENANCE
    row = upgraded.to_pylist()[0]
    expected = make_golden.ROWS[kind]
    for key, value in expected.items():
        assert row[key] == value, key
    assert int(version) <= SCHEMAS[kind].version
