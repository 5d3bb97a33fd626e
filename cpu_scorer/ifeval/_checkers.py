"""The 25 IFEval checkers: pure functions ``check(text, args) -> bool``, and their registry.

Each checker decides what Google's reference (as ported in lm-evaluation-harness 0.4.13)
decides for the same text and arguments; the parity suite holds them to it. Where the
reference's rule is odd, the oddity is kept, because a score is only comparable if it is
computed the same way: keywords are regular expressions, a "bullet" is any line starting
with "-", a postscript marker may appear on any line.

A checker sees one text. Empty or whitespace-only texts never pass; the caller decides
that (see ``_evaluate``), so checkers need not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cpu_scorer.ifeval import _args as a
from cpu_scorer.ifeval import _langdetect, _text

# The reference's fixed patterns.
_DIVIDER = re.compile(r"\s?\*\*\*\s?")
_PLACEHOLDER = re.compile(r"\[.*?\]")
_STAR_BULLET = re.compile(r"^\s*\*[^\*].*$", re.MULTILINE)
_DASH_BULLET = re.compile(r"^\s*-.*$", re.MULTILINE)
_HIGHLIGHT = re.compile(r"\*[^\n\*]*\*")
_DOUBLE_HIGHLIGHT = re.compile(r"\*\*[^\n\*]*\*\*")
_TITLE = re.compile(r"<<[^\n]+>>")


def _holds(count: int, relation: str, threshold: int) -> bool:
    return count < threshold if relation == "less than" else count >= threshold


def _is_language(text: str, language: str) -> bool:
    found = _langdetect.detect(text)
    # langdetect finds no letters to go by in e.g. "123": the reference counts that as a pass.
    return True if found is None else found == language


# keywords


def keywords_existence(text: str, args: a.KeywordsArgs) -> bool:
    return all(a.compiled(keyword, re.IGNORECASE).search(text) for keyword in args.keywords)


def keyword_frequency(text: str, args: a.KeywordFrequencyArgs) -> bool:
    count = len(a.compiled(args.keyword, re.IGNORECASE).findall(text))
    return _holds(count, args.relation, args.frequency)


def forbidden_words(text: str, args: a.ForbiddenWordsArgs) -> bool:
    return not any(
        a.compiled(a.forbidden_pattern(word), re.IGNORECASE).search(text)
        for word in args.forbidden_words
    )


def letter_frequency(text: str, args: a.LetterFrequencyArgs) -> bool:
    # For a letter this is the reference's count. For any other character (the reference
    # draws a random letter instead) it counts that character: see docs/ifeval.md.
    count = text.lower().count(args.letter.lower())
    return _holds(count, args.let_relation, args.let_frequency)


# language


def response_language(text: str, args: a.LanguageArgs) -> bool:
    return _is_language(text, args.language)


# length constraints


def _decided_by_bound(most: int, relation: str, threshold: int) -> bool | None:
    """The verdict if a count known to be at most ``most`` already decides it, else None."""
    if most < threshold:
        return relation == "less than"
    return None


def number_sentences(text: str, args: a.SentencesArgs) -> bool:
    # Where an upper bound of the count decides, Punkt's tokenizer is not run.
    decided = _decided_by_bound(_text.most_sentences(text), args.relation, args.num_sentences)
    if decided is not None:
        return decided
    return _holds(_text.count_sentences(text), args.relation, args.num_sentences)


def number_paragraphs(text: str, args: a.ParagraphsArgs) -> bool:
    paragraphs = _DIVIDER.split(text)
    count = len(paragraphs)
    for index, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if index not in (0, len(paragraphs) - 1):
                return False  # an empty paragraph between two dividers
            count -= 1
    return count == args.num_paragraphs


def number_words(text: str, args: a.WordsArgs) -> bool:
    return _holds(_text.count_words(text), args.relation, args.num_words)


_FIRST_WORD_STOPS = frozenset(".,?!'\"")


def nth_paragraph_first_word(text: str, args: a.NthParagraphArgs) -> bool:
    paragraphs = text.split("\n\n")
    count = sum(1 for paragraph in paragraphs if paragraph.strip())
    if args.nth_paragraph > count:
        return False
    # The reference counts non-empty paragraphs but indexes all of them.
    paragraph = paragraphs[args.nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].lstrip("'").lstrip('"')
    first = []
    for char in word:
        if char in _FIRST_WORD_STOPS:
            break
        first.append(char.lower())  # char by char, as the reference: a final sigma stays σ
    return count == args.num_paragraphs and "".join(first) == args.first_word.lower()


# detectable content


def number_placeholders(text: str, args: a.PlaceholdersArgs) -> bool:
    return len(_PLACEHOLDER.findall(text)) >= args.num_placeholders


def postscript(text: str, args: a.PostscriptArgs) -> bool:
    pattern = a.postscript_pattern(args.postscript_marker)
    return a.compiled(pattern, re.MULTILINE).search(text.lower()) is not None


# detectable format


def number_bullet_lists(text: str, args: a.BulletsArgs) -> bool:
    stars = _STAR_BULLET.findall(text)
    dashes = _DASH_BULLET.findall(text)
    return len(stars) + len(dashes) == args.num_bullets


CONSTRAINED_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def constrained_response(text: str, args: a.NoArgs) -> bool:
    text = text.strip()
    return any(option in text for option in CONSTRAINED_RESPONSE_OPTIONS)


def number_highlighted_sections(text: str, args: a.HighlightsArgs) -> bool:
    # *x* and **x** are found by separate patterns (the first sees only the empty "**"
    # halves of a **x**), each counted if it holds more than blanks.
    single = _HIGHLIGHT.findall(text)
    double = _DOUBLE_HIGHLIGHT.findall(text)
    count = sum(1 for h in single if h.strip("*").strip())
    count += sum(1 for h in double if h.removeprefix("**").removesuffix("**").strip())
    return count >= args.num_highlights


def multiple_sections(text: str, args: a.SectionsArgs) -> bool:
    sections = a.compiled(a.section_pattern(args.section_spliter)).split(text)
    return len(sections) - 1 >= args.num_sections


def json_format(text: str, args: a.NoArgs) -> bool:
    text = (
        text.strip()
        .removeprefix("```json")
        .removeprefix("```Json")
        .removeprefix("```JSON")
        .removeprefix("```")
        .removesuffix("```")
        .strip()
    )
    try:
        json.loads(text)
    except ValueError:
        return False
    except RecursionError:  # nested deeper than Python parses; the reference crashes here
        return False
    return True


def title(text: str, args: a.NoArgs) -> bool:
    titles = _TITLE.findall(text)
    return any(t.lstrip("<").rstrip(">").strip() for t in titles)


# combination


def two_responses(text: str, args: a.NoArgs) -> bool:
    parts = text.split("******")
    responses = []
    for index, part in enumerate(parts):
        if part.strip():
            responses.append(part)
        elif index not in (0, len(parts) - 1):
            return False
    return len(responses) == 2 and responses[0].strip() != responses[1].strip()


def repeat_prompt(text: str, args: a.RepeatPromptArgs) -> bool:
    return text.strip().lower().startswith(args.prompt_to_repeat.strip().lower())


# start / end


def end_checker(text: str, args: a.EndPhraseArgs) -> bool:
    return text.strip().strip('"').lower().endswith(args.end_phrase.lower())


def quotation(text: str, args: a.NoArgs) -> bool:
    text = text.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


# change case


def capital_word_frequency(text: str, args: a.CapitalWordsArgs) -> bool:
    # Every upper-case token holds an upper-case character of its own (tokens are disjoint
    # pieces of the text), so there are at most that many; where this decides, skip nltk.
    most = sum(map(str.isupper, text))
    decided = _decided_by_bound(most, args.capital_relation, args.capital_frequency)
    if decided is not None:
        return decided
    count = _text.count_capital_words(text)
    return _holds(count, args.capital_relation, args.capital_frequency)


def english_capital(text: str, args: a.NoArgs) -> bool:
    return text.isupper() and _is_language(text, "en")


def english_lowercase(text: str, args: a.NoArgs) -> bool:
    return text.islower() and _is_language(text, "en")


# punctuation


def no_comma(text: str, args: a.NoArgs) -> bool:
    return "," not in text


@dataclass(frozen=True)
class Instruction:
    """One instruction type: its arguments' model and its checker.

    ``detects_language(text)`` says whether ``check`` will ask langdetect about ``text``,
    so a batch can detect all those texts together first (see ``_evaluate``).
    """

    args: type[a.Args]
    check: Callable[[str, Any], bool]
    detects_language: Callable[[str], bool] | None = None


def _always(text: str) -> bool:
    return True


INSTRUCTIONS: dict[str, Instruction] = {
    "keywords:existence": Instruction(a.KeywordsArgs, keywords_existence),
    "keywords:frequency": Instruction(a.KeywordFrequencyArgs, keyword_frequency),
    "keywords:forbidden_words": Instruction(a.ForbiddenWordsArgs, forbidden_words),
    "keywords:letter_frequency": Instruction(a.LetterFrequencyArgs, letter_frequency),
    "language:response_language": Instruction(a.LanguageArgs, response_language, _always),
    "length_constraints:number_sentences": Instruction(a.SentencesArgs, number_sentences),
    "length_constraints:number_paragraphs": Instruction(a.ParagraphsArgs, number_paragraphs),
    "length_constraints:number_words": Instruction(a.WordsArgs, number_words),
    "length_constraints:nth_paragraph_first_word": Instruction(
        a.NthParagraphArgs, nth_paragraph_first_word
    ),
    "detectable_content:number_placeholders": Instruction(a.PlaceholdersArgs, number_placeholders),
    "detectable_content:postscript": Instruction(a.PostscriptArgs, postscript),
    "detectable_format:number_bullet_lists": Instruction(a.BulletsArgs, number_bullet_lists),
    "detectable_format:constrained_response": Instruction(a.NoArgs, constrained_response),
    "detectable_format:number_highlighted_sections": Instruction(
        a.HighlightsArgs, number_highlighted_sections
    ),
    "detectable_format:multiple_sections": Instruction(a.SectionsArgs, multiple_sections),
    "detectable_format:json_format": Instruction(a.NoArgs, json_format),
    "detectable_format:title": Instruction(a.NoArgs, title),
    "combination:two_responses": Instruction(a.NoArgs, two_responses),
    "combination:repeat_prompt": Instruction(a.RepeatPromptArgs, repeat_prompt),
    "startend:end_checker": Instruction(a.EndPhraseArgs, end_checker),
    "startend:quotation": Instruction(a.NoArgs, quotation),
    "change_case:capital_word_frequency": Instruction(a.CapitalWordsArgs, capital_word_frequency),
    "change_case:english_capital": Instruction(a.NoArgs, english_capital, str.isupper),
    "change_case:english_lowercase": Instruction(a.NoArgs, english_lowercase, str.islower),
    "punctuation:no_comma": Instruction(a.NoArgs, no_comma),
}
