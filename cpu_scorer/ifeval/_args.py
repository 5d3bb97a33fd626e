"""The typed, frozen arguments of each IFEval instruction, validated before any checking.

The reference builds each checker with ``{k: v for k, v in kwargs.items() if v}``, so a 0
or "" silently becomes "missing" and the checker draws a random value instead. Here a
value is a value: 0 is a count like any other, "" is checked like any other string, and
a missing or unusable argument is an error naming the instruction and the field. Only
``None`` means absent, because that is how the Hugging Face copy of the dataset stores
the arguments an instruction does not take.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

Relation = Literal["less than", "at least"]
RELATIONS: tuple[str, ...] = ("less than", "at least")


def _whole_number(value: Any) -> Any:
    # Arrow and pandas turn an integer column with nulls into floats: 3.0 means 3.
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not a boolean")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


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


def postscript_pattern(marker: str) -> str:
    """The reference's pattern for a postscript marker, matched on the lower-cased text."""
    if marker == "P.P.S":
        return r"\s*p\.\s?p\.\s?s.*$"
    if marker == "P.S.":
        return r"\s*p\.\s?s\..*$"
    return r"\s*" + marker.lower() + r".*$"


def section_pattern(spliter: str) -> str:
    """The reference's pattern that starts a section: the splitter word, then a number."""
    return r"\s?" + spliter + r"\s?\d+\s?"


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


Count = Annotated[int, BeforeValidator(_whole_number), Field(ge=0, strict=True)]
Positive = Annotated[int, BeforeValidator(_whole_number), Field(ge=1, strict=True)]
Keywords = Annotated[tuple[str, ...], BeforeValidator(_to_tuple), AfterValidator(_keywords)]
# The reference strips these before use; an empty one has no meaning.
Marker = Annotated[str, AfterValidator(_stripped), AfterValidator(_not_blank)]
Phrase = Annotated[str, AfterValidator(_stripped)]


class Args(BaseModel):
    """Base of every instruction's arguments: immutable, no unknown fields, no coercion."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class NoArgs(Args):
    pass


class KeywordsArgs(Args):
    keywords: Keywords


class KeywordFrequencyArgs(Args):
    keyword: Annotated[Marker, AfterValidator(_regex)]
    frequency: Count
    relation: Relation


class ForbiddenWordsArgs(Args):
    forbidden_words: Keywords

    @field_validator("forbidden_words")
    @classmethod
    def _patterns_compile(cls, words: tuple[str, ...]) -> tuple[str, ...]:
        for word in words:
            _regex(forbidden_pattern(word))
        return words


class LetterFrequencyArgs(Args):
    letter: Annotated[str, AfterValidator(_letter)]
    let_frequency: Count
    let_relation: Relation


class LanguageArgs(Args):
    language: Annotated[str, AfterValidator(_language)]


class SentencesArgs(Args):
    num_sentences: Count
    relation: Relation


class ParagraphsArgs(Args):
    num_paragraphs: Count


class WordsArgs(Args):
    num_words: Count
    relation: Relation


class NthParagraphArgs(Args):
    num_paragraphs: Positive
    nth_paragraph: Positive
    first_word: str

    @model_validator(mode="after")
    def _nth_within(self) -> NthParagraphArgs:
        if self.nth_paragraph > self.num_paragraphs:
            raise ValueError(
                f"nth_paragraph {self.nth_paragraph} is after the last of "
                f"num_paragraphs {self.num_paragraphs}"
            )
        return self


class PlaceholdersArgs(Args):
    num_placeholders: Count


class PostscriptArgs(Args):
    postscript_marker: Marker

    @field_validator("postscript_marker")
    @classmethod
    def _pattern_compiles(cls, marker: str) -> str:
        _regex(postscript_pattern(marker))
        return marker


class BulletsArgs(Args):
    num_bullets: Count


class HighlightsArgs(Args):
    num_highlights: Count


class SectionsArgs(Args):
    section_spliter: Marker  # sic: the dataset's spelling
    num_sections: Count

    @field_validator("section_spliter")
    @classmethod
    def _pattern_compiles(cls, spliter: str) -> str:
        _regex(section_pattern(spliter))
        return spliter


class RepeatPromptArgs(Args):
    prompt_to_repeat: str


class EndPhraseArgs(Args):
    end_phrase: Phrase


class CapitalWordsArgs(Args):
    capital_frequency: Count
    capital_relation: Relation
