"""The one JSONL reader: every task loader and ``tandem ifeval`` read through it.

Errors name the file and the line (or, for bytes that are not UTF-8, the byte offset),
say what is wrong and what is allowed. Field types are checked strictly: JSON ``true``
is a boolean, never the integer 1 (Python's ``isinstance(True, int)`` would say it is).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.errors import TandemError

# What a field may hold, by the name used in messages. bool is excluded from the numbers.
_KINDS: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "an object",
}


def decode_utf8(data: bytes, source: str | os.PathLike[str], offset: int = 0) -> str:
    """``data`` as text, or a TandemError naming the file and the first bad byte's offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        where = offset + error.start
        raise TandemError(
            f"{source}: not UTF-8 text: byte {where} (0x{data[error.start]:02x}) cannot be "
            "decoded; save the file as UTF-8"
        ) from error


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as error:
        raise TandemError(f"cannot read {path}: {error.strerror or error}") from error
    with handle:
        offset = 0
        for number, raw in enumerate(handle, start=1):
            line = decode_utf8(raw, path, offset)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                raise TandemError(f"{path}:{number}: not valid JSON: {error.msg}") from error
            if not isinstance(obj, dict):
                raise TandemError(
                    f"{path}:{number}: expected a JSON object per line, got {type_name(obj)}"
                )
            yield number, obj


def type_name(value: Any) -> str:
    """How a JSON value's type is called in messages ("int", "str", "list", "null")."""
    return "null" if value is None else type(value).__name__


def is_kind(value: Any, kind: type) -> bool:
    """Strict JSON typing: a bool is not an int, an int is a float (JSON has one number)."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def require_fields(
    source: str | os.PathLike[str], number: int, obj: dict[str, Any], fields: dict[str, type]
) -> None:
    """Every named field present and of its kind; TandemError naming file, line, field."""
    for name, kind in fields.items():
        if name not in obj:
            raise TandemError(f"{source}:{number}: missing field {name!r}")
        if not is_kind(obj[name], kind):
            raise TandemError(
                f"{source}:{number}: field {name!r} must be {_KINDS.get(kind, kind.__name__)}, "
                f"got {type_name(obj[name])}"
            )


def read_json(path: str | os.PathLike[str]) -> Any:
    """A whole JSON file (TruthfulQA's mc_task.json, MBPP's sanitized set)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TandemError(f"cannot read {path}: {error.strerror or error}") from error
    try:
        return json.loads(decode_utf8(data, path))
    except json.JSONDecodeError as error:
        raise TandemError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from error
