"""langdetect's profiles as one sparse matrix, built once and kept in a cache file.

Building the matrix means parsing langdetect's 55 JSON profiles (2.3 MB) and computing
~184,000 probabilities: ~0.2-0.3 s, in every process that detects a language. The result
depends only on those files and on how this module builds it, so it is written once to
``<cache root>/langdetect/`` (see ``shared.cache``: ``$TANDEM_CACHE``, else
``$XDG_CACHE_HOME/tandem``, else ``~/.cache/tandem``) and read back in ~0.05 s.

The file's name carries its key: the format version below, the interpreter's cache tag
(marshal's format may change between Python versions), langdetect's version and a
sha256 of the profile files' names and contents. Another langdetect, edited profiles or
a new format therefore never match an old file: it is ignored and a new one is built
beside it. The file holds a sha256 of its payload, checked before the payload is
trusted; a file that fails any check (truncated, flipped bytes, another key inside,
arrays whose shapes disagree) is rebuilt and replaced. It is written to a temp file and
renamed (``shared.atomic``), so racing processes each write a whole, identical file.
Where the cache cannot be written, the model is built in memory and one warning says so.

The payload is ``marshal`` data (no pickle: loading it runs no code) of plain values:
the language codes, the n-grams in row order and the three arrays' raw bytes.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# Bump when what is stored, or how it is computed, changes.
FORMAT = 1
_MAGIC = b"tandem langdetect model\n"
_DIGEST = 32  # sha256 of the payload, right after the magic


@dataclass(frozen=True)
class Model:
    """langdetect's word -> language probabilities, as a CSR matrix over n-gram rows."""

    langs: tuple[str, ...]
    row_of: dict[str, int]  # 1- to 3-gram -> row of the sparse matrix below
    indptr: np.ndarray  # CSR over rows: language indices and probabilities
    lang_index: np.ndarray
    prob: np.ndarray


def load(profiles: str | os.PathLike[str], cache_dir: Path | None) -> Model:
    """The model of the profiles in ``profiles``: from ``cache_dir`` when a valid file for
    them is there, else built (and written there, if possible). ``None``: no cache."""
    names = _profile_names(profiles)
    if cache_dir is None:
        return build(profiles, names)
    key = cache_key(profiles, names)
    path = cache_dir / f"langdetect-{key[:24]}.bin"
    model = read(path, key)
    if model is None:
        model = build(profiles, names)
        write(path, key, model)
    return model


def cache_key(profiles: str | os.PathLike[str], names: list[str]) -> str:
    """What the cached model depends on, hashed: see the module docstring."""
    digest = hashlib.sha256(
        f"format {FORMAT}\n{sys.implementation.cache_tag}\n"
        f"langdetect {langdetect_version()}\n".encode()
    )
    for name in names:
        with open(os.path.join(profiles, name), "rb") as f:
            content = f.read()
        digest.update(f"{name}\n{len(content)}\n".encode())
        digest.update(content)
    return digest.hexdigest()


def langdetect_version() -> str:
    """The installed langdetect's version, from its dist-info folder's name when it sits
    beside the package (importing ``importlib.metadata`` costs more than the rest of a
    cache hit), else from ``importlib.metadata``."""
    import importlib.util

    spec = importlib.util.find_spec("langdetect")
    if spec is not None and spec.origin:
        site = os.path.dirname(os.path.dirname(spec.origin))
        found = [
            name[len("langdetect-") : -len(".dist-info")]
            for name in os.listdir(site)
            if name.startswith("langdetect-") and name.endswith(".dist-info")
        ]
        if len(found) == 1:
            return found[0]
    from importlib.metadata import version

    return version("langdetect")


def _profile_names(profiles: str | os.PathLike[str]) -> list[str]:
    # langdetect's order (os.listdir) decides its sums, so the build keeps it.
    return [
        name
        for name in os.listdir(profiles)
        if not name.startswith(".") and os.path.isfile(os.path.join(profiles, name))
    ]


def build(profiles: str | os.PathLike[str], names: list[str]) -> Model:
    """The model from the JSON profiles, each probability as langdetect computes it."""
    import numpy as np

    langs: list[str] = []
    row_of: dict[str, int] = {}
    rows, langs_of, probs = [], [], []
    # One profile at a time, so the parsed JSON (far bigger than what is kept) never piles up.
    for name in names:
        with open(os.path.join(profiles, name), encoding="utf-8") as f:
            profile = json.load(f)
        freq = profile["freq"]
        # Only 1- to 3-grams can ever be looked up (langdetect's profiles hold no others).
        own = [g for g in freq if 1 <= len(g) <= 3]
        counts = np.fromiter(map(freq.__getitem__, own), np.float64, len(own))
        lengths = np.fromiter(map(len, own), np.int64, len(own))
        n_words = np.asarray(profile["n_words"], dtype=np.float64)
        probs.append(counts / n_words[lengths - 1])  # == 1.0 * count / n_words[len - 1]
        rows.append(
            np.fromiter((row_of.setdefault(g, len(row_of)) for g in own), np.int32, len(own))
        )
        langs_of.append(np.full(len(own), len(langs), np.int8))
        langs.append(profile["name"])
    row = np.concatenate(rows)
    order = np.argsort(row, kind="stable")
    indptr = np.zeros(len(row_of) + 1, np.int64)
    np.cumsum(np.bincount(row, minlength=len(row_of)), out=indptr[1:])
    return Model(
        langs=tuple(langs),
        row_of=row_of,
        indptr=indptr,
        lang_index=np.concatenate(langs_of)[order],
        prob=np.concatenate(probs)[order],
    )


def read(path: Path, key: str) -> Model | None:
    """The model in ``path`` if it is a whole, valid file for ``key``; else None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head = len(_MAGIC) + _DIGEST
    if data[: len(_MAGIC)] != _MAGIC or len(data) <= head:
        return None
    payload = memoryview(data)[head:]
    if hashlib.sha256(payload).digest() != data[len(_MAGIC) : head]:
        return None
    try:
        stored = marshal.loads(payload)
        return _from_stored(stored, key)
    except (EOFError, ValueError, TypeError, KeyError):
        return None


def _from_stored(stored: Any, key: str) -> Model | None:
    import numpy as np

    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    langs, grams = stored["langs"], stored["grams"]
    indptr = np.frombuffer(stored["indptr"], np.int64)
    lang_index = np.frombuffer(stored["lang_index"], np.int8)
    prob = np.frombuffer(stored["prob"], np.float64)
    consistent = (
        isinstance(langs, tuple)
        and isinstance(grams, tuple)
        and len(indptr) == len(grams) + 1
        and len(lang_index) == len(prob) == int(indptr[-1])
        and (len(prob) == 0 or 0 <= int(lang_index.min()) <= int(lang_index.max()) < len(langs))
    )
    if not consistent:
        return None
    # np.frombuffer over bytes: read-only arrays, as the model must stay.
    return Model(
        langs=langs,
        row_of=dict(zip(grams, range(len(grams)), strict=True)),
        indptr=indptr,
        lang_index=lang_index,
        prob=prob,
    )


def write(path: Path, key: str, model: Model) -> bool:
    """Store ``model`` for ``key`` at ``path`` atomically; on failure, warn once and go on."""
    from shared import atomic
    from shared.errors import TandemError

    payload = marshal.dumps(
        {
            "key": key,
            "langs": model.langs,
            "grams": tuple(model.row_of),  # insertion order is row order
            "indptr": model.indptr.tobytes(),
            "lang_index": model.lang_index.tobytes(),
            "prob": model.prob.tobytes(),
        }
    )
    try:
        atomic.write_file(path, _MAGIC + hashlib.sha256(payload).digest() + payload)
    except TandemError as error:
        import logging

        logging.getLogger(__name__).warning(
            "tandem: langdetect's profiles are not cached (%s); they are built again in "
            "every process (~0.3 s). Set TANDEM_CACHE to a writable folder to cache them.",
            error,
        )
        return False
    return True
