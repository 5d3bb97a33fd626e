"""Strict and loose verdicts for one response or a batch, and the four IFEval metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cpu_scorer.ifeval import _langdetect
from cpu_scorer.ifeval._args import Args, ArgsError
from cpu_scorer.ifeval._checkers import INSTRUCTIONS, Instruction
from shared.errors import TandemError, unknown_name

METRICS = (
    "prompt_level_strict_acc",
    "inst_level_strict_acc",
    "prompt_level_loose_acc",
    "inst_level_loose_acc",
)


@dataclass(frozen=True)
class Verdict:
    """Per-instruction results for one response, aligned with its instruction ids."""

    strict: tuple[bool, ...]
    loose: tuple[bool, ...]

    @property
    def prompt_strict(self) -> bool:
        return all(self.strict)

    @property
    def prompt_loose(self) -> bool:
        return all(self.loose)


@dataclass(frozen=True)
class Task:
    """A response with its validated instructions, ready to judge."""

    response: str
    checks: tuple[tuple[Instruction, Args], ...]


_parsed: dict[tuple[Any, ...], tuple[Instruction, Args]] = {}
_PARSED_LIMIT = 8192


def parse_args(instruction_id: str, kwargs: Mapping[str, Any]) -> tuple[Instruction, Args]:
    """The instruction for an id and its validated arguments; TandemError if either is bad.

    Results are reused: a dataset has a few hundred distinct instructions, each judged
    for many responses, and arguments are immutable.
    """
    try:
        # The type is part of the key: True == 1 and 3.0 == 3, but only some are valid.
        key = (
            instruction_id,
            *sorted(
                (k, type(v).__name__, tuple(v) if isinstance(v, list) else v)
                for k, v in kwargs.items()
            ),
        )
        found = _parsed.get(key)
    except (AttributeError, TypeError):  # not a mapping, or unhashable values: no reuse
        key, found = None, None
    if found is None:
        found = _parse_args(instruction_id, kwargs)
        if key is not None:
            if len(_parsed) >= _PARSED_LIMIT:
                _parsed.clear()
            _parsed[key] = found
    return found


def _parse_args(instruction_id: str, kwargs: Mapping[str, Any]) -> tuple[Instruction, Args]:
    instruction = INSTRUCTIONS.get(instruction_id)
    if instruction is None:
        raise unknown_name("IFEval instruction id", instruction_id, INSTRUCTIONS)
    if not isinstance(kwargs, Mapping):
        raise TandemError(
            f"{instruction_id}: kwargs must be an object, got {type(kwargs).__name__}"
        )
    given = {key: value for key, value in kwargs.items() if value is not None}
    try:
        return instruction, instruction.args.validate(given)
    except ArgsError as error:
        takes = ", ".join(instruction.args.FIELDS) or "none"
        raise TandemError(
            f"{instruction_id}: {'; '.join(error.problems)} (kwargs it takes: {takes})"
        ) from error


def prepare(response: str, instruction_id_list: Sequence[str], kwargs: Sequence[Any]) -> Task:
    """Validate one item's instructions; TandemError names the instruction and field."""
    if not isinstance(response, str):
        raise TandemError(f"response must be a string, got {type(response).__name__}")
    for name, value in (("instruction_id_list", instruction_id_list), ("kwargs", kwargs)):
        if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__"):
            raise TandemError(f"{name} must be a list, got {type(value).__name__}")
    if len(instruction_id_list) != len(kwargs):
        raise TandemError(
            f"instruction_id_list and kwargs must be lists of the same length, got "
            f"{len(instruction_id_list)} ids and {len(kwargs)} kwargs"
        )
    pairs = zip(instruction_id_list, kwargs, strict=True)
    return Task(response, tuple(parse_args(i, k) for i, k in pairs))


def loose_variants(response: str) -> tuple[str, ...]:
    """The 8 texts the loose evaluation tries, in the reference's order.

    The response; without its first line; without its last line; without both (those
    three stripped); and each of the four with every ``*`` removed.
    """
    lines = response.split("\n")
    first = "\n".join(lines[1:]).strip()
    last = "\n".join(lines[:-1]).strip()
    both = "\n".join(lines[1:-1]).strip()
    texts = (response, first, last, both)
    return texts + tuple(text.replace("*", "") for text in texts)


def _other_variants(response: str) -> tuple[str, ...]:
    return tuple(t for t in dict.fromkeys(loose_variants(response)) if t != response)


def _passes(instruction: Instruction, args: Args, text: str) -> bool:
    return bool(text.strip()) and instruction.check(text, args)


def _detect_for(pairs: list[tuple[Instruction, str]]) -> None:
    """Detect, in one batch, the language of every text these checks will ask about."""
    texts = [
        text
        for instruction, text in pairs
        if instruction.detects_language and text.strip() and instruction.detects_language(text)
    ]
    if texts:
        _langdetect.detect_many(texts)


def judge(tasks: Sequence[Task]) -> list[Verdict]:
    """Verdicts for tasks, in order.

    Loose passes wherever strict does (the response is the first variant), so the other
    variants are only tried for instructions that fail strict. Checkers are pure, so a
    variant that repeats another is tried once. Language detection, the expensive part,
    runs first for the whole batch: once for the responses, once for the variants still
    needed.
    """
    _detect_for([(ins, task.response) for task in tasks for ins, _ in task.checks])
    passed = [
        tuple(_passes(ins, args, task.response) for ins, args in task.checks) for task in tasks
    ]
    # For each task: the other variants, if any of its instructions failed strict.
    others = [
        _other_variants(t.response) if not all(s) else ()
        for t, s in zip(tasks, passed, strict=True)
    ]
    _detect_for(
        [
            (ins, text)
            for task, verdicts, texts in zip(tasks, passed, others, strict=True)
            for (ins, _), ok in zip(task.checks, verdicts, strict=True)
            if not ok
            for text in texts
        ]
    )
    return [
        Verdict(
            verdicts,
            tuple(
                ok or any(_passes(ins, args, text) for text in texts)
                for (ins, args), ok in zip(task.checks, verdicts, strict=True)
            ),
        )
        for task, verdicts, texts in zip(tasks, passed, others, strict=True)
    ]


def aggregate(verdicts: Sequence[Verdict]) -> dict[str, float]:
    """The four IFEval metrics; instruction-level ones pool all instructions of all prompts."""
    strict = [ok for v in verdicts for ok in v.strict]
    loose = [ok for v in verdicts for ok in v.loose]
    if not strict:
        raise TandemError("cannot aggregate IFEval verdicts: there are no instructions to count")
    return {
        "prompt_level_strict_acc": sum(v.prompt_strict for v in verdicts) / len(verdicts),
        "inst_level_strict_acc": sum(strict) / len(strict),
        "prompt_level_loose_acc": sum(v.prompt_loose for v in verdicts) / len(verdicts),
        "inst_level_loose_acc": sum(loose) / len(loose),
    }
