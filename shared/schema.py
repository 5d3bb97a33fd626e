"""Versioned Arrow schemas: one per Parquet file kind in the run store.

Every file carries its schema name and version in the Parquet key-value metadata
(``tandem.schema``, ``tandem.schema_version``) plus provenance (config hash, git sha,
backend, model id/revision, created_at). Every row carries run_id, task, sample_id and
a nullable error. A change of meaning is a new version; ``read_shard`` upgrades old
versions so callers only ever see the current one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from shared.errors import TandemError

_ROW_KEYS = [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("task", pa.string(), nullable=False),
    pa.field("sample_id", pa.string(), nullable=False),
]
_ERROR = pa.field("error", pa.string(), nullable=True)

GENERATIONS = pa.schema(
    [
        *_ROW_KEYS,
        pa.field("prompt", pa.string()),
        # The exact text the model saw (chat template applied, or the raw prompt).
        pa.field("rendered_prompt", pa.string()),
        pa.field("response", pa.string()),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("generated_tokens", pa.int32()),
        # stop (a stop string), eos, length (max_new_tokens) or error.
        pa.field("finish_reason", pa.string()),
        # Tokens cut from the left of an over-long prompt (0 when it fitted).
        pa.field("truncated_tokens", pa.int32()),
        # Wall time of the batch this row was generated in, and that batch's size.
        pa.field("batch_seconds", pa.float64()),
        pa.field("batch_size", pa.int32()),
        # Task-specific fields the scorer needs (gold answers, instruction kwargs), JSON.
        pa.field("doc", pa.string()),
        _ERROR,
    ]
)

LOGLIKELIHOODS = pa.schema(
    [
        *_ROW_KEYS,
        pa.field("prompt", pa.string()),
        pa.field("rendered_prompt", pa.string()),
        # Continuations exactly as scored, leading space included (" A", " B", ...).
        pa.field("choices", pa.list_(pa.string())),
        pa.field("logprobs", pa.list_(pa.float64())),
        pa.field("is_greedy", pa.list_(pa.bool_())),
        pa.field("continuation_tokens", pa.list_(pa.int32())),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("gold", pa.int32(), nullable=True),
        # Wall time of the forward pass(es) that scored this row, and how many requests
        # (one per choice, over every sample) that pass held.
        pa.field("batch_seconds", pa.float64()),
        pa.field("batch_size", pa.int32()),
        pa.field("doc", pa.string()),
        _ERROR,
    ]
)

ROLLING = pa.schema(
    [
        *_ROW_KEYS,
        pa.field("text", pa.string()),
        # Sum of log-probs (natural log) over every token of the text.
        pa.field("logprob", pa.float64()),
        pa.field("tokens", pa.int32()),
        pa.field("words", pa.int32()),
        pa.field("bytes", pa.int32()),
        pa.field("batch_seconds", pa.float64()),
        pa.field("doc", pa.string()),
        _ERROR,
    ]
)

SCORES = pa.schema(
    [
        *_ROW_KEYS,
        # Per-sample metrics: acc/acc_norm for multiple choice, the four IFEval accuracies
        # (prompt-level as 0/1, instruction-level as pass fraction), log-prob for rolling.
        pa.field("metrics", pa.map_(pa.string(), pa.float64())),
        # IFEval: why a prompt failed, instruction by instruction.
        pa.field("instruction_id_list", pa.list_(pa.string())),
        pa.field("inst_level_strict", pa.list_(pa.bool_())),
        pa.field("inst_level_loose", pa.list_(pa.bool_())),
        # Multiple choice: the argmax choice index.
        pa.field("prediction", pa.int32(), nullable=True),
        pa.field("scorer_version", pa.string()),
        _ERROR,
        # v2: what the scorer saw besides the metrics, as JSON: the answer it extracted
        # and the target (generative tasks), a program's outcome (code tasks). Null when
        # there is nothing to say (and in v1 files).
        pa.field("details", pa.string(), nullable=True),
    ]
)


@dataclass(frozen=True)
class SchemaDef:
    name: str
    version: int
    schema: pa.Schema


SCHEMAS: dict[str, SchemaDef] = {
    "generations": SchemaDef("tandem.generations", 1, GENERATIONS),
    "loglikelihoods": SchemaDef("tandem.loglikelihoods", 1, LOGLIKELIHOODS),
    "rolling": SchemaDef("tandem.rolling", 1, ROLLING),
    "scores": SchemaDef("tandem.scores", 2, SCORES),
}
_BY_NAME = {d.name: key for key, d in SCHEMAS.items()}
# Columns a later version added, by kind and version: an older file reads with them null.
_ADDED: dict[str, dict[int, tuple[str, ...]]] = {"scores": {2: ("details",)}}

# Provenance keys every file carries (values may be "" when unknown, e.g. no git).
PROVENANCE_KEYS = ("config_hash", "git_sha", "backend", "model_id", "model_revision", "created_at")
# Keys some files carry beside them, each a JSON (or plain) string, absent in older files:
# ``shard``: a generation shard's own range name, so a copy under another name is caught;
# ``worker``: what the worker that wrote it resolved (shared.records.WorkerInfo);
# ``telemetry``: a score shard's summed model time and token counts (cpu_scorer.scorers);
# ``worker_telemetry``: what the worker measured while generating a shard: prefill and
# decode seconds, tokens/s, batch sizes, peak memory (shared.records.WorkerTelemetry).
# Metadata, not columns: they describe the shard, not a row, and adding a key changes no
# schema version.
EXTRA_KEYS = ("shard", "worker", "telemetry", "worker_telemetry")


def make_table(
    kind: str,
    rows: list[dict[str, Any]],
    provenance: dict[str, str],
    extra: dict[str, str] | None = None,
) -> pa.Table:
    """Build a table of schema ``kind`` from row dicts, stamping name, version, provenance
    (and any of EXTRA_KEYS given in ``extra``).

    Raises TandemError naming the missing or unexpected columns.
    """
    definition = SCHEMAS[kind]
    expected = set(definition.schema.names)
    for index, row in enumerate(rows):
        missing = expected - row.keys()
        unexpected = row.keys() - expected
        if missing or unexpected:
            raise TandemError(
                f"{definition.name} row {index}: missing columns {sorted(missing)}, "
                f"unexpected columns {sorted(unexpected)}"
            )
    table = pa.Table.from_pylist(rows, schema=definition.schema)
    meta = file_metadata(kind, provenance)
    for key, value in (extra or {}).items():
        if key not in EXTRA_KEYS:
            raise TandemError(f"unknown file metadata key {key!r}; allowed: {EXTRA_KEYS}")
        meta[f"tandem.{key}".encode()] = value.encode()
    return table.replace_schema_metadata(meta)


def extras_of(table_or_schema: pa.Table | pa.Schema) -> dict[str, str]:
    """The EXTRA_KEYS a file carries (absent ones left out)."""
    schema = table_or_schema.schema if isinstance(table_or_schema, pa.Table) else table_or_schema
    meta = schema.metadata or {}
    return {
        key: meta[f"tandem.{key}".encode()].decode()
        for key in EXTRA_KEYS
        if f"tandem.{key}".encode() in meta
    }


def file_metadata(kind: str, provenance: dict[str, str]) -> dict[bytes, bytes]:
    definition = SCHEMAS[kind]
    meta = {
        b"tandem.schema": definition.name.encode(),
        b"tandem.schema_version": str(definition.version).encode(),
    }
    for key in PROVENANCE_KEYS:
        meta[f"tandem.{key}".encode()] = str(provenance.get(key, "")).encode()
    return meta


def schema_of(table_or_schema: pa.Table | pa.Schema) -> tuple[str, int]:
    """(kind, version) of a table read from the store; TandemError if not a tandem file."""
    schema = table_or_schema.schema if isinstance(table_or_schema, pa.Table) else table_or_schema
    meta = schema.metadata or {}
    name = meta.get(b"tandem.schema", b"").decode()
    if name not in _BY_NAME:
        raise TandemError(
            f"not a tandem shard: schema name {name or '(none)'!r}; "
            f"expected one of {sorted(_BY_NAME)}"
        )
    try:
        version = int(meta.get(b"tandem.schema_version", b""))
    except ValueError as error:
        raise TandemError("tandem shard has no valid schema version") from error
    return _BY_NAME[name], version


def provenance_of(table: pa.Table) -> dict[str, str]:
    meta = table.schema.metadata or {}
    return {key: meta.get(f"tandem.{key}".encode(), b"").decode() for key in PROVENANCE_KEYS}


def upgrade(table: pa.Table) -> tuple[str, pa.Table]:
    """Check a table against its declared schema and bring it to the current version.

    Columns added by a later version are filled with nulls (scores v1 -> v2: ``details``);
    an unknown (newer) version is refused so an old scorer never misreads a file written
    by a newer worker.
    """
    kind, version = schema_of(table)
    definition = SCHEMAS[kind]
    if version > definition.version:
        raise TandemError(
            f"{definition.name} version {version} is newer than this tandem understands "
            f"({definition.version}); upgrade tandem"
        )
    for added_in, names in _ADDED.get(kind, {}).items():
        if version < added_in:
            for name in names:
                if name not in table.schema.names:
                    field = definition.schema.field(name)
                    table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    missing = [n for n in definition.schema.names if n not in table.schema.names]
    if missing:
        raise TandemError(f"{definition.name} v{version}: missing columns {missing}")
    metadata = table.schema.metadata
    try:
        table = table.select(definition.schema.names).cast(definition.schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise TandemError(f"{definition.name} v{version}: wrong column types: {error}") from error
    return kind, table.replace_schema_metadata(metadata)


def doc_json(doc: dict[str, Any]) -> str:
    """Canonical JSON for the ``doc`` column (sorted keys, so shards are deterministic)."""
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
