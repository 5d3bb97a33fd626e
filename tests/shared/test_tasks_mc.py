"""Prompt rendering of the log-prob tasks against hand-checked examples.

Expected strings are written out by hand from lm-eval's templates (see
../shared/data/mc/PROTOCOLS.md), not produced by the code under test. Tests on the
real files skip when ../shared/data is absent; the rest build small files in tmp_path.
"""

from __future__ import annotations

import bz2
import json
import re
from pathlib import Path

import pytest

from shared.errors import TandemError
from shared.tasks import TASKS, load_samples
from shared.tasks.hellaswag import preprocess, process_raw
from shared.tasks.perplexity import count_words
from shared.tasks.winogrande import split_sentence

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not (DATA / "mc").is_dir(), reason=f"shared data folder {DATA / 'mc'} not present"
)

MC_TASKS = [
    "arc_easy",
    "arc_challenge",
    "piqa",
    "hellaswag",
    "winogrande",
    "boolq",
    "rte",
    "sst2",
    "mrpc",
]
# Official validation/test sizes (lm-eval's scored split).
SIZES = {
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "piqa": 1838,
    "hellaswag": 10042,
    "winogrande": 1267,
    "boolq": 3270,
    "rte": 277,
    "sst2": 872,
    "mrpc": 408,
}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _load(task: str, data_dir: Path, limit: int | None = None):
    return load_samples(TASKS[task], data_dir, limit)


def test_all_tasks_registered_as_log_prob_tasks():
    for name in MC_TASKS:
        assert TASKS[name].output == "multiple_choice"
        assert TASKS[name].chat_by_default is False
    assert TASKS["perplexity"].output == "rolling"


# --- the real files -------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("task", MC_TASKS)
def test_real_files_load_with_official_sizes_and_consistent_choices(task):
    samples = _load(task, DATA)
    assert len(samples) == SIZES[task]
    for sample in samples:
        texts = sample.doc["choice_texts"]
        assert len(texts) == len(sample.choices) >= 2
        # The scored continuation is the delimiter + the text acc_norm measures.
        assert list(sample.choices) == [" " + text for text in texts]
        assert 0 <= sample.gold < len(sample.choices)


@needs_data
def test_limit_is_a_fixed_prefix():
    full = _load("arc_easy", DATA)
    capped = _load("arc_easy", DATA, limit=5)
    assert [s.sample_id for s in capped] == [s.sample_id for s in full[:5]]


@needs_data
def test_tinymmlu_first_item_is_the_5_shot_prompt_scored_with_letters():
    sample = _load("tinymmlu", DATA, 1)[0]
    assert sample.prompt.startswith(
        "The following are multiple choice questions (with answers) about high school "
        "statistics.\n\nWhich of the following is a correct statement about correlation?\n"
    )
    assert sample.prompt.endswith(
        "between 80 and 90 days?\nA. 15.4%\nB. 17.8%\nC. 20.0%\nD. 82.1%\nAnswer:"
    )
    assert sample.prompt.count("\nAnswer:") == 6  # five shots and the question
    assert sample.choices == (" A", " B", " C", " D")
    assert sample.doc["choice_texts"] == ["A", "B", "C", "D"]
    assert sample.gold == 3


@needs_data
def test_arc_easy_first_test_item():
    sample = _load("arc_easy", DATA, 1)[0]
    assert sample.sample_id == "Mercury_417466"
    assert sample.prompt == (
        "Question: Which statement best explains why photosynthesis is the foundation "
        "of most food webs?\nAnswer:"
    )
    assert sample.choices == (
        " Sunlight is the source of energy for nearly all ecosystems.",
        " Most ecosystems are found on land instead of in water.",
        " Carbon dioxide is more available than other gases.",
        " The producers in all ecosystems are plants.",
    )
    assert sample.gold == 0


@needs_data
def test_arc_challenge_first_test_item():
    sample = _load("arc_challenge", DATA, 1)[0]
    assert sample.prompt == (
        "Question: An astronomer observes that a planet rotates faster after a meteorite "
        "impact. Which is the most likely effect of this increase in rotation?\nAnswer:"
    )
    assert sample.choices[2] == " Planetary days will become shorter."
    assert sample.gold == 2  # answerKey "C"


@needs_data
def test_arc_numeric_labels_map_to_positions():
    numeric = [s for s in _load("arc_easy", DATA) if s.doc["labels"][0] == "1"]
    assert numeric, "ARC-Easy test has items labelled 1-4"
    for sample in numeric:
        assert sample.doc["labels"][sample.gold] in {"1", "2", "3", "4", "5"}


@needs_data
def test_piqa_first_two_items():
    first, second = _load("piqa", DATA, 2)
    assert (
        first.prompt
        == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    )
    assert first.choices[0].startswith(" Provide the guinea pig with a cage full of a few inches")
    assert first.gold == 0
    # Choices are used verbatim: trailing and double spaces survive.
    assert second.prompt == "Question: dresser\nAnswer:"
    assert second.choices == (
        " replace drawer with bobby pin ",
        " finish, woodgrain with  bobby pin ",
    )
    assert second.gold == 1


@needs_data
def test_hellaswag_text_copy_first_item_and_its_known_difference():
    sample = _load("hellaswag", DATA, 1)[0]
    assert sample.doc["source_format"] == "text"
    # lm-eval's prompt is "...on a roof. He" (ctx_b.capitalize()); the text copy keeps "he".
    assert sample.prompt == "Roof shingle removal: A man is sitting on a roof. he"
    assert sample.choices == (
        " is using wrap to wrap a pair of skis.",
        " is ripping level tiles off.",
        " is holding a rubik's cube.",
        " starts pulling up roofing on a roof.",
    )
    assert sample.gold == 3


@needs_data
def test_hellaswag_text_copy_leftover_bracket_spans_are_removed():
    samples = _load("hellaswag", DATA)
    span = re.compile(r"\[.*?\]")
    assert not any(span.search(s.prompt) or any(span.search(c) for c in s.choices) for s in samples)
    # An unclosed "[" is not a span; lm-eval keeps it too (item 3691: 'tap the " [" button').
    assert any('" [" button' in c for c in samples[3691].choices)
    # Item 4041 ended with "See [find a good attorney | how to find a good attorney]."
    assert any(c.endswith(" See .") for c in samples[4041].choices)


@needs_data
def test_winogrande_first_item_partial_evaluation():
    sample = _load("winogrande", DATA, 1)[0]
    assert sample.contexts == (
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    )
    assert sample.choices == (" always got the easier cases.",) * 2
    assert sample.gold == 1  # answer "2"
    assert sample.doc["options"] == ["Sarah", "Maria"]


@needs_data
def test_boolq_first_item_string_label():
    sample = _load("boolq", DATA, 1)[0]
    assert sample.prompt.startswith("Ethanol fuel -- All biomass goes through")
    assert sample.prompt.endswith(
        "\nQuestion: does ethanol take more energy make that produces?\nAnswer:"
    )
    assert sample.choices == (" no", " yes")
    assert sample.gold == 0  # label "false"
    assert sample.sample_id == "0"


@needs_data
def test_rte_first_item():
    sample = _load("rte", DATA, 1)[0]
    assert sample.prompt == (
        "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at "
        "age 44, according to the Christopher Reeve Foundation.\nQuestion: Christopher "
        "Reeve had an accident. True or False?\nAnswer:"
    )
    assert sample.choices == (" True", " False")
    assert sample.gold == 1  # not_entailment


@needs_data
def test_sst2_first_item_keeps_trailing_space():
    sample = _load("sst2", DATA, 1)[0]
    assert sample.prompt == (
        "it 's a charming and often affecting journey . \n"
        "Question: Is this sentence positive or negative?\nAnswer:"
    )
    assert sample.choices == (" negative", " positive")
    assert sample.gold == 1


@needs_data
def test_mrpc_first_item_uses_glue_idx():
    sample = _load("mrpc", DATA, 1)[0]
    assert sample.sample_id == "9"
    assert sample.prompt == (
        "Sentence 1: He said the foodservice pie business doesn 't fit the company 's "
        'long-term growth strategy .\nSentence 2: " The foodservice pie business does not '
        "fit our long-term growth strategy .\nQuestion: Do both sentences mean the same "
        "thing?\nAnswer:"
    )
    assert sample.choices == (" no", " yes")
    assert sample.gold == 1


# --- small files made here ------------------------------------------------------------


def test_arc_from_a_local_file_with_numeric_labels(tmp_path):
    _write_jsonl(
        tmp_path / "arc_easy" / "ARC-Easy-test.jsonl",
        [
            {
                "id": "q1",
                "question": "Which is a liquid?",
                "choices": {"text": ["ice", "water", "steam"], "label": ["1", "2", "3"]},
                "answerKey": "2",
            }
        ],
    )
    (sample,) = _load("arc_easy", tmp_path)
    assert sample.prompt == "Question: Which is a liquid?\nAnswer:"
    assert sample.choices == (" ice", " water", " steam")
    assert sample.gold == 1
    assert sample.doc["choice_texts"] == ["ice", "water", "steam"]


def test_arc_answer_key_not_among_labels_names_the_row(tmp_path):
    path = _write_jsonl(
        tmp_path / "ARC-Easy-test.jsonl",
        [
            {
                "id": "q1",
                "question": "?",
                "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                "answerKey": "E",
            }
        ],
    )
    with pytest.raises(TandemError, match=rf"{path.name}:1: answerKey 'E'"):
        _load("arc_easy", tmp_path)


def test_missing_file_error_lists_where_it_looked(tmp_path):
    with pytest.raises(TandemError, match=r"task piqa: none of \['valid.jsonl'\]"):
        _load("piqa", tmp_path)


def test_piqa_labels_must_pair_with_rows(tmp_path):
    _write_jsonl(tmp_path / "valid.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b"}] * 2)
    (tmp_path / "valid-labels.lst").write_text("1\n", encoding="utf-8")
    with pytest.raises(TandemError, match="1 labels but .* 2 rows"):
        _load("piqa", tmp_path)


def test_hellaswag_preprocess_matches_lm_eval_rules():
    # strip, " [title]" -> ". ", drop [..] spans non-greedily, one pass of "  " -> " ".
    # " [title]" -> ". " leaves "tea.  Boil"; the double space then collapses.
    assert preprocess("  Making tea [title] Boil water.") == "Making tea. Boil water."
    assert preprocess("[substeps] Dry it off.") == " Dry it off."
    assert preprocess("a [header] b [step] c") == "a b c"
    assert preprocess("x   y") == "x  y"


def test_hellaswag_raw_rows_follow_lm_eval_process_docs():
    row = {
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "label": "3",
    }
    context, endings, gold = process_raw(row)
    assert context == "Roof shingle removal: A man is sitting on a roof. He"
    assert endings[3] == "starts pulling up roofing on a roof."
    assert gold == 3
    # capitalize() lower-cases the rest of ctx_b, as in lm-eval.
    context, _, _ = process_raw({**row, "ctx_b": "the Man in RED"})
    assert context.endswith("roof. The man in red")


def test_hellaswag_prefers_raw_jsonl_over_text_copy(tmp_path):
    folder = tmp_path / "hellaswag"
    _write_jsonl(
        folder / "hellaswag_val.jsonl",
        [
            {
                "activity_label": "Tea",
                "ctx_a": "A kettle boils.",
                "ctx_b": "she",
                "endings": ["pours.", "[substeps] waits.", "sings.", "runs."],
                "label": 0,
            }
        ],
    )
    (folder / "hellaswag_val_full.txt.bz2").write_bytes(bz2.compress(b"x\n0\na\nb\nc\nd\n"))
    (sample,) = _load("hellaswag", tmp_path)
    assert sample.doc["source_format"] == "raw"
    assert sample.prompt == "Tea: A kettle boils. She"
    assert sample.choices[1] == "  waits."  # lm-eval keeps the space left by [substeps]
    assert sample.doc["choice_texts"][1] == " waits."


def test_hellaswag_text_copy_must_be_six_line_blocks(tmp_path):
    (tmp_path / "hellaswag_val_full.txt").write_text("ctx\n1\na\nb\nc\n", encoding="utf-8")
    with pytest.raises(TandemError, match="not a multiple of 6"):
        _load("hellaswag", tmp_path)


def test_winogrande_split_on_first_blank():
    contexts, continuation = split_sentence("The _ fell on the _ floor.", ["cup", "plate"])
    assert contexts == ["The cup", "The plate"]
    assert continuation == "fell on the _ floor."


def test_winogrande_bad_answer_names_row(tmp_path):
    _write_jsonl(
        tmp_path / "winogrande_xl_validation.jsonl",
        [{"sentence": "A _ b.", "option1": "x", "option2": "y", "answer": ""}],
    )
    with pytest.raises(TandemError, match=r":1: answer must be '1' or '2'"):
        _load("winogrande", tmp_path)


@pytest.mark.parametrize(
    ("label", "gold"), [("true", 1), ("false", 0), (True, 1), (False, 0), (1, 1), (0, 0)]
)
def test_boolq_label_encodings(tmp_path, label, gold):
    _write_jsonl(
        tmp_path / "val.jsonl",
        [{"passage": "Tea -- Tea is a drink.", "question": "is tea a drink", "label": label}],
    )
    (sample,) = _load("boolq", tmp_path)
    assert sample.prompt == "Tea -- Tea is a drink.\nQuestion: is tea a drink?\nAnswer:"
    assert sample.gold == gold


def test_boolq_unknown_label_is_refused(tmp_path):
    _write_jsonl(tmp_path / "val.jsonl", [{"passage": "p", "question": "q", "label": "maybe"}])
    with pytest.raises(TandemError, match="label must be"):
        _load("boolq", tmp_path)


def test_glue_label_out_of_range(tmp_path):
    _write_jsonl(
        tmp_path / "glue_rte_validation.jsonl",
        [{"sentence1": "a", "sentence2": "b", "label": 2, "idx": 0}],
    )
    with pytest.raises(TandemError, match=r"gold answer must be an index in 0..1, got 2"):
        _load("rte", tmp_path)


# --- perplexity -------------------------------------------------------------------------


def test_perplexity_reads_txt_files_in_name_order(tmp_path):
    folder = tmp_path / "perplexity"
    folder.mkdir()
    (folder / "b.txt").write_text("Zwei Wörter\n", encoding="utf-8")
    (folder / "a.txt").write_text("one two  three", encoding="utf-8")
    (folder / "notes.md").write_text("ignored", encoding="utf-8")
    first, second = _load("perplexity", tmp_path)
    assert [first.sample_id, second.sample_id] == ["a.txt", "b.txt"]
    assert first.prompt == "one two  three"
    assert first.doc["words"] == 3
    assert first.doc["bytes"] == 14
    # "Zwei Wörter\n": the trailing newline makes an empty last piece (lm-eval counts it);
    # "ö" is two UTF-8 bytes.
    assert second.prompt == "Zwei Wörter\n"
    assert second.doc["words"] == 3
    assert second.doc["bytes"] == 13
    assert first.doc["window"] is None and first.doc["stride"] is None


def test_count_words_is_a_whitespace_split():
    assert count_words("a b\tc\n\nd") == 4
    assert count_words(" a") == 2


def test_perplexity_without_txt_files_says_where_to_put_them(tmp_path):
    with pytest.raises(TandemError, match=r"no \*.txt files in .*perplexity/"):
        _load("perplexity", tmp_path)


def test_perplexity_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(TandemError, match="empty.txt is empty"):
        _load("perplexity", tmp_path)
