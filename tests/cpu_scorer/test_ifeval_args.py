"""IFEval arguments: a value is a value (0, ""), None is absent, mistakes are clear errors."""

from __future__ import annotations

import pytest

from cpu_scorer.ifeval import INSTRUCTIONS, aggregate, evaluate, evaluate_many
from cpu_scorer.ifeval._evaluate import Verdict, parse_args
from shared.errors import TandemError


def error_of(instruction_id: str, kwargs: dict) -> str:
    with pytest.raises(TandemError) as caught:
        evaluate("p", "text", [instruction_id], [kwargs])
    return str(caught.value)


def test_registry_is_keyed_by_the_dataset_ids() -> None:
    assert len(INSTRUCTIONS) == 25
    assert "detectable_format:multiple_sections" in INSTRUCTIONS


def test_unknown_instruction_suggests_the_closest() -> None:
    message = error_of("punctuation:no_commas", {})
    assert "'punctuation:no_commas'" in message
    assert "did you mean 'punctuation:no_comma'" in message


@pytest.mark.parametrize(
    ("instruction_id", "kwargs", "expected"),
    [
        (
            "keywords:frequency",
            {"keyword": "a", "frequency": 1, "relations": "at least"},
            ["unknown kwarg 'relations'", "did you mean 'relation'", "missing kwarg 'relation'"],
        ),
        (
            "keywords:frequency",
            {"keyword": "a", "frequency": 1, "relation": "at_least"},
            [
                "kwarg 'relation' = 'at_least'",
                "'less than' or 'at least'",
                "did you mean 'at least'",
            ],
        ),
        (
            "length_constraints:number_words",
            {"num_words": -1, "relation": "less than"},
            ["kwarg 'num_words' = -1", "greater than or equal to 0"],
        ),
        (
            "length_constraints:number_words",
            {"num_words": True, "relation": "less than"},
            ["not a boolean"],
        ),
        (
            "length_constraints:number_words",
            {"num_words": "5", "relation": "less than"},
            ["kwarg 'num_words' = '5'"],
        ),
        (
            "detectable_format:multiple_sections",
            {"num_sections": 2},
            ["missing kwarg 'section_spliter'", "kwargs it takes: section_spliter, num_sections"],
        ),
        (
            "detectable_format:multiple_sections",
            {"section_spliter": "", "num_sections": 2},
            ["kwarg 'section_spliter' = ''", "must not be empty"],
        ),
        (
            "keywords:letter_frequency",
            {"letter": "ab", "let_frequency": 1, "let_relation": "less than"},
            ["exactly one character"],
        ),
        (
            "keywords:letter_frequency",
            {"letter": "", "let_frequency": 1, "let_relation": "less than"},
            ["exactly one character"],
        ),
        ("keywords:existence", {"keywords": ["f(x"]}, ["regular expression", "does not compile"]),
        ("keywords:forbidden_words", {"forbidden_words": ["ok", ""]}, ["empty keyword"]),
        (
            "language:response_language",
            {"language": "EN"},
            ["not a language langdetect can detect", "did you mean 'en'"],
        ),
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "a"},
            ["nth_paragraph 3 is after the last of num_paragraphs 2"],
        ),
        (
            "punctuation:no_comma",
            {"anything": 1},
            ["unknown kwarg 'anything'", "kwargs it takes: none"],
        ),
    ],
)
def test_bad_kwargs_name_instruction_field_and_what_is_allowed(instruction_id, kwargs, expected):
    message = error_of(instruction_id, kwargs)
    assert message.startswith(instruction_id + ":")
    for part in expected:
        assert part in message


def test_zero_is_a_value_not_missing() -> None:
    # The reference drops falsy kwargs and draws a random threshold instead.
    at_least_zero = evaluate(
        "p", "no brackets", ["detectable_content:number_placeholders"], [{"num_placeholders": 0}]
    )
    less_than_zero = evaluate(
        "p",
        "words",
        ["length_constraints:number_words"],
        [{"num_words": 0, "relation": "less than"}],
    )
    assert at_least_zero.strict == (True,)
    assert less_than_zero.strict == (False,)


def test_empty_string_is_a_value() -> None:
    verdict = evaluate("p", "anything", ["startend:end_checker"], [{"end_phrase": ""}])
    assert verdict.strict == (True,)  # every text ends with ""


def test_none_means_absent_as_in_the_hugging_face_copy() -> None:
    kwargs = {"num_highlights": 1, "keywords": None, "language": None}
    verdict = evaluate("p", "*a*", ["detectable_format:number_highlighted_sections"], [kwargs])
    assert verdict.strict == (True,)


def test_a_boolean_is_not_a_count_even_after_a_one() -> None:
    evaluate("p", "x", ["detectable_format:number_bullet_lists"], [{"num_bullets": 1}])
    with pytest.raises(TandemError, match="not a boolean"):
        evaluate("p", "x", ["detectable_format:number_bullet_lists"], [{"num_bullets": True}])


@pytest.mark.parametrize(("ids", "kwargs"), [("punctuation:no_comma", [{}]), (["x"], None)])
def test_ids_and_kwargs_must_be_lists(ids, kwargs) -> None:
    with pytest.raises(TandemError, match="must be a list"):
        evaluate("p", "text", ids, kwargs)


def test_whole_floats_are_counts() -> None:
    _, args = parse_args("detectable_format:number_bullet_lists", {"num_bullets": 3.0})
    assert args.num_bullets == 3 and isinstance(args.num_bullets, int)
    with pytest.raises(TandemError):
        parse_args("detectable_format:number_bullet_lists", {"num_bullets": 2.5})


def test_args_are_frozen() -> None:
    _, args = parse_args("detectable_format:number_bullet_lists", {"num_bullets": 3})
    with pytest.raises(ValueError):
        args.num_bullets = 4


def test_reference_strips_markers_and_phrases() -> None:
    _, args = parse_args("startend:end_checker", {"end_phrase": "  Bye.  "})
    assert args.end_phrase == "Bye."
    verdict = evaluate(
        "p",
        "Section 1 a Section 2 b",
        ["detectable_format:multiple_sections"],
        [{"section_spliter": " Section ", "num_sections": 2}],
    )
    assert verdict.strict == (True,)


def test_ids_and_kwargs_must_align() -> None:
    with pytest.raises(TandemError, match="same length"):
        evaluate("p", "text", ["punctuation:no_comma", "startend:quotation"], [{}])


def test_evaluate_many_names_the_bad_item() -> None:
    items = [
        ("p", "ok", ["punctuation:no_comma"], [{}]),
        ("p", "ok", ["punctuation:no_coma"], [{}]),
    ]
    with pytest.raises(TandemError, match=r"^item 1: .*did you mean 'punctuation:no_comma'"):
        evaluate_many(items)


def test_nothing_to_judge() -> None:
    assert evaluate_many([]) == []


def test_aggregate_pools_instructions_over_prompts() -> None:
    verdicts = [
        Verdict(strict=(True, False), loose=(True, True)),
        Verdict(strict=(True,), loose=(True,)),
    ]
    assert aggregate(verdicts) == {
        "prompt_level_strict_acc": 0.5,
        "inst_level_strict_acc": 2 / 3,
        "prompt_level_loose_acc": 1.0,
        "inst_level_loose_acc": 1.0,
    }
    with pytest.raises(TandemError, match="no instructions"):
        aggregate([])


def test_a_relation_that_is_not_text_is_a_clear_error() -> None:
    message = error_of("length_constraints:number_words", {"num_words": 5, "relation": 0})
    assert "kwarg 'relation' = 0: Input should be 'less than' or 'at least'" in message


def test_several_bad_items_are_each_named() -> None:
    message = error_of("keywords:existence", {"keywords": ["ok", 2, None]})
    assert "kwarg 'keywords' = 2: Input should be a valid string" in message
    assert "kwarg 'keywords' = None: Input should be a valid string" in message


def test_args_survive_pickling_for_worker_processes() -> None:
    import pickle

    for instruction_id, kwargs in [
        ("keywords:existence", {"keywords": ["a", "b"]}),
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "so"},
        ),
        ("punctuation:no_comma", {}),
    ]:
        instruction, args = parse_args(instruction_id, kwargs)
        copy = pickle.loads(pickle.dumps((instruction, args)))
        assert copy == (instruction, args) and repr(copy[1]) == repr(args)


def test_a_kwarg_name_that_is_not_text_is_a_clear_error() -> None:
    message = error_of("punctuation:no_comma", {1: "x"})
    assert "unknown kwarg 1" in message
