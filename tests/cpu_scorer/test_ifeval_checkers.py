"""Every IFEval checker, table-driven: cases that pass and cases that fail, strict verdicts.

Expected values are the reference's (lm-evaluation-harness 0.4.13) for the same text and
arguments, including its odd corners: keywords are regular expressions, a "-" line is a
bullet, "CAN'T" is two upper-case words ("CA", "N'T").
"""

from __future__ import annotations

import pytest

from cpu_scorer.ifeval import INSTRUCTIONS, evaluate

LESS, AT_LEAST = "less than", "at least"

# (instruction id, kwargs, response, expected strict verdict)
CASES = [
    # keywords
    ("keywords:existence", {"keywords": ["cat", "dog"]}, "A Cat met a DOG.", True),
    ("keywords:existence", {"keywords": ["cat", "dog"]}, "A cat met a bird.", False),
    ("keywords:existence", {"keywords": ["c.t"]}, "I saw a cut.", True),  # a regex
    ("keywords:existence", {"keywords": ["naïve"]}, "Un NAÏVE garçon.", True),
    (
        "keywords:frequency",
        {"keyword": "the", "frequency": 3, "relation": AT_LEAST},
        "The the THE",
        True,
    ),
    (
        "keywords:frequency",
        {"keyword": "the", "frequency": 3, "relation": AT_LEAST},
        "the the",
        False,
    ),
    ("keywords:frequency", {"keyword": "war", "frequency": 2, "relation": LESS}, "war", True),
    (
        "keywords:frequency",
        {"keyword": "war", "frequency": 2, "relation": LESS},
        "war, warm",
        False,
    ),
    (
        "keywords:frequency",
        {"keyword": " peace ", "frequency": 1, "relation": AT_LEAST},
        "peace.",
        True,
    ),
    (
        "keywords:frequency",
        {"keyword": "x", "frequency": 0, "relation": AT_LEAST},
        "no match",
        True,
    ),
    ("keywords:frequency", {"keyword": "x", "frequency": 0, "relation": LESS}, "no match", False),
    ("keywords:forbidden_words", {"forbidden_words": ["bad", "sad"]}, "A badge is fine.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["bad", "sad"]}, "That is BAD.", False),
    ("keywords:forbidden_words", {"forbidden_words": ["sad"]}, "so sad-looking", False),
    (
        "keywords:letter_frequency",
        {"letter": "a", "let_frequency": 3, "let_relation": AT_LEAST},
        "AaA",
        True,
    ),
    (
        "keywords:letter_frequency",
        {"letter": "a", "let_frequency": 3, "let_relation": AT_LEAST},
        "ab",
        False,
    ),
    (
        "keywords:letter_frequency",
        {"letter": "Z", "let_frequency": 2, "let_relation": LESS},
        "zoo",
        True,
    ),
    (
        "keywords:letter_frequency",
        {"letter": "z", "let_frequency": 2, "let_relation": LESS},
        "Zzz",
        False,
    ),
    # tandem's rule where the reference draws a random letter: count the character
    (
        "keywords:letter_frequency",
        {"letter": "#", "let_frequency": 2, "let_relation": AT_LEAST},
        "#a #b",
        True,
    ),
    (
        "keywords:letter_frequency",
        {"letter": "!", "let_frequency": 2, "let_relation": AT_LEAST},
        "Hi!",
        False,
    ),
    (
        "keywords:letter_frequency",
        {"letter": "q", "let_frequency": 0, "let_relation": LESS},
        "queue",
        False,
    ),
    # language
    (
        "language:response_language",
        {"language": "de"},
        "Das ist ein kurzer deutscher Satz über das Wetter.",
        True,
    ),
    (
        "language:response_language",
        {"language": "de"},
        "This is a short English sentence about the weather.",
        False,
    ),
    ("language:response_language", {"language": "hi"}, "यह हिंदी में लिखा गया एक छोटा वाक्य है।", True),
    (
        "language:response_language",
        {"language": "ru"},
        "123 456 !!!",
        True,
    ),  # no letters: the reference passes it
    # length constraints
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": LESS},
        "One. Two.",
        True,
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 2, "relation": LESS},
        "One. Two.",
        False,
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 2, "relation": AT_LEAST},
        "Dr. Smith came. He sat.",
        True,
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": AT_LEAST},
        "Dr. Smith came. He sat.",
        False,
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 1, "relation": AT_LEAST},
        "no period at all",
        True,
    ),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\nSecond.", True),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 2},
        "***\nFirst.\n***\nSecond.\n***",
        True,
    ),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "First.\n***\nSecond.", False),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 2},
        "A\n***\n***\nB",
        False,
    ),  # empty middle
    (
        "length_constraints:number_words",
        {"num_words": 3, "relation": AT_LEAST},
        "one two, three!",
        True,
    ),
    ("length_constraints:number_words", {"num_words": 3, "relation": AT_LEAST}, "one-two", False),
    (
        "length_constraints:number_words",
        {"num_words": 2, "relation": LESS},
        "नमस्ते",
        True,
    ),  # one \w+ run for nltk
    ("length_constraints:number_words", {"num_words": 0, "relation": LESS}, "word", False),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
        'First part.\n\n"Then," she said.',
        True,
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
        "First part.\n\nAfter that.",
        False,
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 3, "nth_paragraph": 1, "first_word": "first"},
        "First part.\n\nThen.",
        False,  # right word, wrong paragraph count
    ),
    # detectable content
    (
        "detectable_content:number_placeholders",
        {"num_placeholders": 2},
        "Dear [name], at [address].",
        True,
    ),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name].", False),
    ("detectable_content:number_placeholders", {"num_placeholders": 0}, "none here", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\np.s. see you", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi. PS see you", False),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP. P. S. more", True),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.S. more", False),
    ("detectable_content:postscript", {"postscript_marker": "Note:"}, "Body\nNOTE: extra", True),
    # detectable format
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two\nend", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "- one\n  - two", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n**bold** line", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 0}, "plain text", True),
    ("detectable_format:constrained_response", {}, "Well... My answer is yes.", True),
    ("detectable_format:constrained_response", {}, "My answer is: yes", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*a* and *b*", True),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "**bold** and *it*",
        True,
    ),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*a* and * *", False),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nx\nSection 2\ny",
        True,
    ),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "SECTION", "num_sections": 2},
        "SECTION 1\nx\nSECTION two",
        False,
    ),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": " Day ", "num_sections": 1},
        "Day 1: rest",
        True,
    ),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', True),
    ("detectable_format:json_format", {}, "{'a': 1}", False),
    ("detectable_format:json_format", {}, "[" * 100_000 + "]" * 100_000, False),  # too deep
    ("detectable_format:title", {}, "<<My Poem>>\nRoses", True),
    ("detectable_format:title", {}, "<< >> and <<\n>>", False),
    # combination
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", True),
    ("combination:two_responses", {}, "Same.\n******\nSame.", False),
    ("combination:two_responses", {}, "A\n******\n******\nB", False),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "  say HI. Hi!", True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "Hi! Say hi.", False),
    # start / end
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        'Done. "Any other QUESTIONS?"',
        True,
    ),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        "Any other questions? Yes.",
        False,
    ),
    ("startend:quotation", {}, '  "wrapped"  ', True),
    ("startend:quotation", {}, '"', False),
    # change case
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": AT_LEAST},
        "I LOVE NASA.",
        True,
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": AT_LEAST},
        "I love Nasa.",
        False,
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 3, "capital_relation": LESS},
        "CAN'T stop",
        True,
    ),  # CA N'T
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 0, "capital_relation": LESS},
        "all lower",
        False,
    ),
    (
        "change_case:english_capital",
        {},
        "THIS IS AN ENGLISH SENTENCE ABOUT THE WEATHER TODAY.",
        True,
    ),
    ("change_case:english_capital", {}, "This is an English sentence.", False),
    ("change_case:english_capital", {}, "DAS IST EIN DEUTSCHER SATZ ÜBER DAS WETTER HEUTE.", False),
    (
        "change_case:english_lowercase",
        {},
        "this is an english sentence about the weather today.",
        True,
    ),
    (
        "change_case:english_lowercase",
        {},
        "das ist ein deutscher satz über das wetter heute.",
        False,
    ),
    # punctuation
    ("punctuation:no_comma", {}, "No commas here.", True),
    ("punctuation:no_comma", {}, "One, two.", False),
]


@pytest.mark.parametrize(("instruction_id", "kwargs", "response", "expected"), CASES)
def test_checker(instruction_id: str, kwargs: dict, response: str, expected: bool) -> None:
    verdict = evaluate("prompt", response, [instruction_id], [kwargs])
    assert verdict.strict == (expected,)


def test_every_instruction_has_a_passing_and_a_failing_case() -> None:
    outcomes: dict[str, set[bool]] = {}
    for instruction_id, _kwargs, _response, expected in CASES:
        outcomes.setdefault(instruction_id, set()).add(expected)
    assert set(outcomes) == set(INSTRUCTIONS)
    assert all(seen == {True, False} for seen in outcomes.values()), outcomes


@pytest.mark.parametrize("response", ["", "   ", "\n\t\n"])
@pytest.mark.parametrize(
    ("instruction_id", "kwargs"),
    [
        ("punctuation:no_comma", {}),
        ("keywords:forbidden_words", {"forbidden_words": ["x"]}),
        ("length_constraints:number_words", {"num_words": 5, "relation": LESS}),
        ("detectable_content:number_placeholders", {"num_placeholders": 0}),
        ("language:response_language", {"language": "en"}),
    ],
)
def test_empty_or_whitespace_response_never_passes(instruction_id, kwargs, response) -> None:
    verdict = evaluate("prompt", response, [instruction_id], [kwargs])
    assert verdict.strict == (False,) and verdict.loose == (False,)


def test_loose_tries_the_eight_variants() -> None:
    response = "Sure, here it is:\n*My answer is yes.*\nHope that helps, friend"
    verdict = evaluate(
        "p",
        response,
        ["punctuation:no_comma", "startend:quotation", "detectable_format:title"],
        [{}, {}, {}],
    )
    # Without the first and last lines (which hold the commas) no comma is left.
    assert verdict.strict == (False, False, False)
    assert verdict.loose == (True, False, False)
    assert not verdict.prompt_loose


def test_loose_variant_without_asterisks() -> None:
    verdict = evaluate("p", '*"quoted"*', ["startend:quotation"], [{}])
    assert verdict.strict == (False,) and verdict.loose == (True,)


def test_loose_passes_wherever_strict_passes() -> None:
    verdict = evaluate("p", "fine", ["punctuation:no_comma"], [{}])
    assert verdict.strict == verdict.loose == (True,)
    assert verdict.prompt_strict and verdict.prompt_loose


def test_unicode_and_markdown() -> None:
    response = "# Título\n\n**Negrita** y *cursiva*, con emojis 🎉 y «comillas».\n\n- uno\n- dos"
    verdict = evaluate(
        "p",
        response,
        [
            "detectable_format:number_highlighted_sections",
            "detectable_format:number_bullet_lists",
            "language:response_language",
            "keywords:existence",
        ],
        [{"num_highlights": 2}, {"num_bullets": 2}, {"language": "es"}, {"keywords": ["título"]}],
    )
    assert verdict.strict == (True, True, True, True)


def test_very_long_response() -> None:
    sentence = "The quick brown fox jumps over the lazy dog. "
    response = sentence * 5000  # 225 000 characters, 45 000 words
    verdict = evaluate(
        "p",
        response,
        [
            "length_constraints:number_words",
            "length_constraints:number_sentences",
            "language:response_language",
            "change_case:capital_word_frequency",
        ],
        [
            {"num_words": 45_000, "relation": AT_LEAST},
            {"num_sentences": 5000, "relation": AT_LEAST},
            {"language": "en"},
            {"capital_frequency": 1, "capital_relation": LESS},
        ],
    )
    assert verdict.strict == (True, True, True, True)
