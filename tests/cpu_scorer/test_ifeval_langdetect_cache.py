"""langdetect's profiles cached in ready-to-load form: a hit is the same model, bit for
bit, with the same detections on the parity responses; another langdetect version, edited
profiles or a damaged file mean a rebuild; an unwritable cache only costs the rebuild."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from cpu_scorer.ifeval import _langdetect
from cpu_scorer.ifeval import _langdetect_model as lm

PARITY = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ifeval" / "parity"


@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    """A private copy of langdetect's profiles, free to edit."""
    from langdetect.detector_factory import PROFILES_DIRECTORY

    copy = tmp_path / "profiles"
    shutil.copytree(PROFILES_DIRECTORY, copy)
    return copy


def same(a: lm.Model, b: lm.Model) -> bool:
    return (
        a.langs == b.langs
        and list(a.row_of.items()) == list(b.row_of.items())
        and all(
            x.dtype == y.dtype and x.tobytes() == y.tobytes()
            for x, y in ((a.indptr, b.indptr), (a.lang_index, b.lang_index), (a.prob, b.prob))
        )
    )


def fresh(profiles: Path) -> lm.Model:
    return lm.load(profiles, None)


def cached_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("langdetect-*.bin"))


def test_a_hit_is_the_built_model_bit_for_bit(profiles: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    built = lm.load(profiles, cache)  # a miss: builds and writes
    [path] = cached_files(cache)
    key = lm.cache_key(profiles, lm._profile_names(profiles))
    hit = lm.read(path, key)
    assert hit is not None
    assert same(hit, built) and same(lm.load(profiles, cache), fresh(profiles))
    assert not hit.prob.flags.writeable  # the model stays immutable


@pytest.mark.skipif(not (PARITY / "responses.jsonl").exists(), reason="no parity set")
def test_a_hit_detects_as_a_fresh_build_on_the_parity_responses(
    profiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(PARITY / "responses.jsonl", encoding="utf-8") as f:
        texts = [json.loads(line)["response"] for line in f]
    cache = tmp_path / "cache"
    lm.load(profiles, cache)
    answers = []
    for model in (lm.load(profiles, cache), fresh(profiles)):
        monkeypatch.setattr(_langdetect, "_model", lambda model=model: model)
        _langdetect._memo.clear()
        _langdetect._word_rows.clear()
        answers.append(_langdetect.detect_many(texts))
    _langdetect._memo.clear()
    _langdetect._word_rows.clear()
    assert answers[0] == answers[1]
    assert len(set(answers[0])) > 5  # many languages, not one answer for everything


def test_edited_profiles_are_rebuilt(profiles: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    lm.load(profiles, cache)
    path = profiles / "en"
    profile = json.loads(path.read_text(encoding="utf-8"))
    profile["freq"]["the"] += 1000
    path.write_text(json.dumps(profile), encoding="utf-8")

    rebuilt = lm.load(profiles, cache)
    assert len(cached_files(cache)) == 2  # the old file is not used for the new profiles
    assert same(rebuilt, fresh(profiles))
    assert same(lm.load(profiles, cache), rebuilt)


@pytest.mark.parametrize("change", ["version", "format"])
def test_another_langdetect_or_format_is_rebuilt(
    change: str, profiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    lm.load(profiles, cache)
    expected = fresh(profiles)
    if change == "version":
        monkeypatch.setattr(lm, "langdetect_version", lambda: "1.0.10")
    else:
        monkeypatch.setattr(lm, "FORMAT", lm.FORMAT + 1)
    calls = []
    build = lm.build
    monkeypatch.setattr(lm, "build", lambda *a: calls.append(a) or build(*a))
    assert same(lm.load(profiles, cache), expected)
    assert len(calls) == 1 and len(cached_files(cache)) == 2


def test_the_version_is_langdetects() -> None:
    from importlib.metadata import version

    assert lm.langdetect_version() == version("langdetect") == "1.0.9"


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :]


@pytest.mark.parametrize(
    "damage",
    [
        _truncate,
        _flip,
        lambda data: b"",
        lambda data: b"not a model at all",
        lambda data: data[:40],  # the magic and part of the digest
    ],
    ids=["truncated", "flipped-byte", "empty", "garbage", "header-only"],
)
def test_a_damaged_file_is_rebuilt_and_replaced(damage, profiles: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    lm.load(profiles, cache)
    [path] = cached_files(cache)
    path.write_bytes(damage(path.read_bytes()))
    key = lm.cache_key(profiles, lm._profile_names(profiles))
    assert lm.read(path, key) is None

    assert same(lm.load(profiles, cache), fresh(profiles))
    assert cached_files(cache) == [path]
    assert lm.read(path, key) is not None  # replaced by a whole file


def test_a_file_holding_another_key_is_not_used(profiles: Path, tmp_path: Path) -> None:
    # A whole, checksummed file whose inner key is not the one its name stands for.
    model = fresh(profiles)
    path = tmp_path / "cache" / "x.bin"
    assert lm.write(path, "another key", model)
    assert lm.read(path, "another key") is not None
    assert lm.read(path, lm.cache_key(profiles, lm._profile_names(profiles))) is None


def test_an_unwritable_cache_builds_in_memory_with_one_warning(
    profiles: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder would have to be inside this file")
    with caplog.at_level(logging.WARNING):
        model = lm.load(profiles, blocker / "langdetect")
    assert same(model, fresh(profiles))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "TANDEM_CACHE" in warnings[0].getMessage()
    assert blocker.is_file()


def test_the_scorer_reads_the_cache_named_by_tandem_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "elsewhere"))
    _langdetect._model.cache_clear()
    try:
        model = _langdetect._model()
    finally:
        _langdetect._model.cache_clear()
    assert len(cached_files(tmp_path / "elsewhere" / "langdetect")) == 1
    assert model.langs and len(model.row_of) > 80_000


def test_tandem_ifeval_with_an_unwritable_cache_scores_and_warns_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    prompt = "Answer in English."
    row = {
        "key": 1,
        "prompt": prompt,
        "instruction_id_list": ["language:response_language"],
        "kwargs": [{"language": "en"}],
    }
    (tmp_path / "in.jsonl").write_text(json.dumps(row) + "\n")
    answers = [{"prompt": prompt, "response": "This is plainly an English sentence."}] * 600
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    command = [sys.executable, "-m", "tandem", "ifeval", "--input-data", str(tmp_path / "in.jsonl")]
    command += ["--responses", str(tmp_path / "r.jsonl"), "--output", str(tmp_path / "v.jsonl")]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TANDEM_CACHE": str(blocker / "c")}
    result = subprocess.run(
        [*command, "--workers", "2"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    verdicts = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert len(verdicts) == 600 and all(v["inst_level_strict_acc"] == [True] for v in verdicts)
    warnings = [line for line in result.stderr.splitlines() if "not cached" in line]
    assert len(warnings) == 1, result.stderr
    assert "Traceback" not in result.stderr
