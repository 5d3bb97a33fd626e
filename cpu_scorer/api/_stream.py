"""Streaming a run's samples as Parquet or JSON lines, shard by shard."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from cpu_scorer import _queries


class _Chunks:
    """A write-only file whose contents are handed out as they are written, so a
    Parquet export streams row group by row group instead of building in memory."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def stream_parquet(batches: Iterator[pa.Table]) -> Iterator[bytes]:
    sink = _Chunks()
    with pq.ParquetWriter(
        pa.PythonFile(sink, mode="w"), _queries.EXPORT_SCHEMA, compression="zstd"
    ) as writer:
        for batch in batches:
            writer.write_table(batch)
            yield sink.take()
    yield sink.take()


def stream_jsonl(batches: Iterator[pa.Table]) -> Iterator[bytes]:
    for batch in batches:
        rows = batch.to_pylist()
        for row in rows:
            row["metrics"] = dict(row["metrics"]) if row["metrics"] is not None else None
        yield "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
