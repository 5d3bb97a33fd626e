"""The typed, frozen arguments of each IFEval instruction, validated before any checking.

The reference builds each checker with ``{k: v for k, v in kwargs.items() if v}``, so a 0
or "" silently becomes "missing" and the checker draws a random value instead. Here a
value is a value: 0 is a count like any other, "" is checked like any other string, and
a missing or unusable argument is an error naming the instruction and the field. Only
``None`` means absent, because that is how the Hugging Face copy of the dataset stores
the arguments an instruction does not take.

Each instruction's arguments are a small frozen class whose ``FIELDS`` name a check per
field. A check takes the given value and returns the value to keep (a list of keywords
becomes a tuple, a marker is stripped) or raises ``ValueError`` saying what is wrong; the
messages are the ones the pydantic models these classes replace gave (pydantic alone
took ~0.15 s to import and build them, in every ``tandem ifeval``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

Relation = Literal["less than", "at least"]
RELATIONS: tuple[str, ...] = ("less than", "at least")


class FrozenArgsError(AttributeError, ValueError):
    """Raised on an attempt to change an argument (an ``AttributeError``, as for a frozen
    dataclass, and a ``ValueError``, as pydantic's frozen models raised)."""


class ArgsError(ValueError):
    """Arguments that do not fit an instruction: ``problems`` says each thing wrong, one
    phrase per field ("missing kwarg 'x'", "kwarg 'x' = 5: ...")."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# ---- checks of one value: return the value to keep, or raise ValueError ------------------
class _BadItems(ValueError):
    """Items of a list that are not what it holds: (item, message) each."""

    def __init__(self, items: list[tuple[Any, str]]) -> None:
        super().__init__("; ".join(message for _, message in items))
        self.items = items


def _count(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("must be a whole number, not a boolean")
        # Arrow and pandas turn an integer column with nulls into floats: 3.0 means 3.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise ValueError("Input should be a valid integer")
        if value < minimum:
            raise ValueError(f"Input should be greater than or equal to {minimum}")
        return value

    return check


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("Input should be a valid string")
    return value


def _relation(value: Any) -> str:
    if not (isinstance(value, str) and value in RELATIONS):
        raise ValueError("Input should be 'less than' or 'at least'")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        value = tuple(value)
    if not isinstance(value, tuple):
        raise ValueError("Input should be a valid tuple")
    bad = [(item, "Input should be a valid string") for item in value if not isinstance(item, str)]
    if bad:
        raise _BadItems(bad)
    return value


@functools.lru_cache(maxsize=4096)
def compiled(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """``re.compile``, cached: a dataset has hundreds of distinct keyword patterns, more
    than ``re``'s own cache keeps, and each is used for every response to its prompt."""
    return re.compile(pattern, flags)


def _regex(pattern: str) -> str:
    try:
        compiled(pattern)
    except re.error as error:
        raise ValueError(
            f"is used as a regular expression (as the reference does) and does not "
            f"compile: {error}; escape special characters such as + ( [ with a backslash"
        ) from None
    return pattern


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


def _stripped(value: str) -> str:
    return value.strip()


def _keywords(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if not value.strip():
            raise ValueError("lists an empty keyword, which would match everywhere")
        _regex(value)
    return values


def forbidden_pattern(word: str) -> str:
    """The reference's pattern for a forbidden word: the word as a regex, as a whole word."""
    return r"\b" + word + r"\b"


def _forbidden_patterns(words: tuple[str, ...]) -> tuple[str, ...]:
    for word in words:
        _regex(forbidden_pattern(word))
    return words


def postscript_pattern(marker: str) -> str:
    """The reference's pattern for a postscript marker, matched on the lower-cased text."""
    if marker == "P.P.S":
        return r"\s*p\.\s?p\.\s?s.*$"
    if marker == "P.S.":
        return r"\s*p\.\s?s\..*$"
    return r"\s*" + marker.lower() + r".*$"


def _postscript_compiles(marker: str) -> str:
    _regex(postscript_pattern(marker))
    return marker


def section_pattern(spliter: str) -> str:
    """The reference's pattern that starts a section: the splitter word, then a number."""
    return r"\s?" + spliter + r"\s?\d+\s?"


def _section_compiles(spliter: str) -> str:
    _regex(section_pattern(spliter))
    return spliter


def _letter(value: str) -> str:
    if len(value) != 1:
        raise ValueError(
            "must be exactly one character; a letter is counted case-insensitively and any "
            "other character (such as '#') literally"
        )
    return value


def _language(value: str) -> str:
    from cpu_scorer.ifeval._langdetect import languages

    allowed = languages()
    if value not in allowed:
        from shared.errors import did_you_mean

        raise ValueError(
            f"is not a language langdetect can detect{did_you_mean(value.lower(), allowed)}; "
            f"allowed: {', '.join(allowed)}"
        )
    return value


# A field's checks, applied in order, each to what the one before returned.
Check = tuple[Callable[[Any], Any], ...]
COUNT: Check = (_count(0),)
POSITIVE: Check = (_count(1),)
RELATION: Check = (_relation,)
TEXT: Check = (_string,)
KEYWORDS: Check = (_strings, _keywords)
# The reference strips these before use; an empty one has no meaning.
MARKER: Check = (_string, _stripped, _not_blank)
PHRASE: Check = (_string, _stripped)


# ---- the argument classes ---------------------------------------------------------------
class Args:
    """Base of every instruction's arguments: immutable, no unknown fields, no coercion
    beyond the documented ones (3.0 is 3; a list of keywords is a tuple; markers are
    stripped). Build one with :meth:`validate`."""

    FIELDS: ClassVar[dict[str, Check]] = {}
    __slots__ = ()

    def __init__(self, **values: Any) -> None:
        for name in self.FIELDS:
            object.__setattr__(self, name, values[name])

    @classmethod
    def validate(cls, given: Mapping[str, Any]) -> Args:
        """``given`` checked field by field; ``ArgsError`` lists every problem found."""
        problems: list[str] = []
        values: dict[str, Any] = {}
        for name, checks in cls.FIELDS.items():
            if name not in given:
                problems.append(f"missing kwarg {name!r}")
                continue
            value = original = given[name]
            try:
                for check in checks:
                    value = check(value)
            except _BadItems as bad:
                problems += [f"kwarg {name!r} = {item!r}: {why}" for item, why in bad.items]
                continue
            except ValueError as error:
                hint = ""
                if checks[0] is _relation and isinstance(original, str):
                    from shared.errors import did_you_mean

                    hint = did_you_mean(original, RELATIONS)
                problems.append(f"kwarg {name!r} = {original!r}: {error}{hint}")
                continue
            values[name] = value
        for name in given:
            if name not in cls.FIELDS:
                from shared.errors import did_you_mean

                hint = did_you_mean(name, cls.FIELDS) if isinstance(name, str) else ""
                problems.append(f"unknown kwarg {name!r}{hint}")
        if problems:
            raise ArgsError(problems)
        args = cls(**values)
        try:
            args.check()
        except ValueError as error:
            raise ArgsError([f"kwargs = {dict(given)!r}: {error}"]) from None
        return args

    def check(self) -> None:
        """A rule across fields, run once every field is valid; raise ValueError."""

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenArgsError(f"{type(self).__name__} is frozen: {name} cannot be changed")

    def __delattr__(self, name: str) -> None:
        raise FrozenArgsError(f"{type(self).__name__} is frozen: {name} cannot be deleted")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.FIELDS)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled for worker processes; unpickling must not go through __setattr__.
        return (_restore, (type(self), self._values()))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS)
        return f"{type(self).__name__}({fields})"


def _restore(cls: type[Args], values: tuple[Any, ...]) -> Args:
    return cls(**dict(zip(cls.FIELDS, values, strict=True)))


class NoArgs(Args):
    __slots__ = ()


class KeywordsArgs(Args):
    FIELDS = {"keywords": KEYWORDS}
    __slots__ = tuple(FIELDS)
    keywords: tuple[str, ...]


class KeywordFrequencyArgs(Args):
    FIELDS = {"keyword": (*MARKER, _regex), "frequency": COUNT, "relation": RELATION}
    __slots__ = tuple(FIELDS)
    keyword: str
    frequency: int
    relation: Relation


class ForbiddenWordsArgs(Args):
    FIELDS = {"forbidden_words": (*KEYWORDS, _forbidden_patterns)}
    __slots__ = tuple(FIELDS)
    forbidden_words: tuple[str, ...]


class LetterFrequencyArgs(Args):
    FIELDS = {"letter": (_string, _letter), "let_frequency": COUNT, "let_relation": RELATION}
    __slots__ = tuple(FIELDS)
    letter: str
    let_frequency: int
    let_relation: Relation


class LanguageArgs(Args):
    FIELDS = {"language": (_string, _language)}
    __slots__ = tuple(FIELDS)
    language: str


class SentencesArgs(Args):
    FIELDS = {"num_sentences": COUNT, "relation": RELATION}
    __slots__ = tuple(FIELDS)
    num_sentences: int
    relation: Relation


class ParagraphsArgs(Args):
    FIELDS = {"num_paragraphs": COUNT}
    __slots__ = tuple(FIELDS)
    num_paragraphs: int


class WordsArgs(Args):
    FIELDS = {"num_words": COUNT, "relation": RELATION}
    __slots__ = tuple(FIELDS)
    num_words: int
    relation: Relation


class NthParagraphArgs(Args):
    FIELDS = {"num_paragraphs": POSITIVE, "nth_paragraph": POSITIVE, "first_word": TEXT}
    __slots__ = tuple(FIELDS)
    num_paragraphs: int
    nth_paragraph: int
    first_word: str

    def check(self) -> None:
        if self.nth_paragraph > self.num_paragraphs:
            raise ValueError(
                f"nth_paragraph {self.nth_paragraph} is after the last of "
                f"num_paragraphs {self.num_paragraphs}"
            )


class PlaceholdersArgs(Args):
    FIELDS = {"num_placeholders": COUNT}
    __slots__ = tuple(FIELDS)
    num_placeholders: int


class PostscriptArgs(Args):
    FIELDS = {"postscript_marker": (*MARKER, _postscript_compiles)}
    __slots__ = tuple(FIELDS)
    postscript_marker: str


class BulletsArgs(Args):
    FIELDS = {"num_bullets": COUNT}
    __slots__ = tuple(FIELDS)
    num_bullets: int


class HighlightsArgs(Args):
    FIELDS = {"num_highlights": COUNT}
    __slots__ = tuple(FIELDS)
    num_highlights: int


class SectionsArgs(Args):
    # sic: the dataset's spelling
    FIELDS = {"section_spliter": (*MARKER, _section_compiles), "num_sections": COUNT}
    __slots__ = tuple(FIELDS)
    section_spliter: str
    num_sections: int


class RepeatPromptArgs(Args):
    FIELDS = {"prompt_to_repeat": TEXT}
    __slots__ = tuple(FIELDS)
    prompt_to_repeat: str


class EndPhraseArgs(Args):
    FIELDS = {"end_phrase": PHRASE}
    __slots__ = tuple(FIELDS)
    end_phrase: str


class CapitalWordsArgs(Args):
    FIELDS = {"capital_frequency": COUNT, "capital_relation": RELATION}
    __slots__ = tuple(FIELDS)
    capital_frequency: int
    capital_relation: Relation
