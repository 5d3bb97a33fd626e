"""``tandem ifeval`` (``cpu_scorer.ifeval._command``): responses from any system, matched to
their prompts by exact text, one verdict line per response line, clear errors."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cpu_scorer.ifeval import _command
from shared.errors import TandemError

REPO = Path(__file__).resolve().parents[2]
INPUTS = [
    {
        "key": 1,
        "prompt": "Say hi without commas.",
        "instruction_id_list": ["punctuation:no_comma"],
        "kwargs": [{}],
    },
    {
        "key": 2,
        "prompt": "Wrap it in quotes.",
        "instruction_id_list": ["startend:quotation"],
        "kwargs": [{}],
    },
    {
        "key": 3,
        "prompt": "Unanswered.",
        "instruction_id_list": ["punctuation:no_comma"],
        "kwargs": [{}],
    },
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def args_for(tmp_path: Path, responses: list, inputs: list = INPUTS, **extra) -> argparse.Namespace:
    from tandem.cli import build_parser  # the CLI owns argv; the command takes its fields

    argv = [
        "--input-data",
        str(write_jsonl(tmp_path / "input_data.jsonl", inputs)),
        "--responses",
        str(write_jsonl(tmp_path / "responses.jsonl", responses)),
        "--output",
        str(tmp_path / "out" / "verdicts.jsonl"),
    ]
    for name, value in extra.items():
        argv += [f"--{name}", str(value)]
    parsed = build_parser().parse_args(["ifeval", *argv])
    fields = ("input_data", "responses", "output", "summary", "workers")
    return argparse.Namespace(**{name: getattr(parsed, name) for name in fields})


def test_one_line_per_response_in_order_with_other_fields_kept(tmp_path, capsys) -> None:
    responses = [
        {"prompt": "Wrap it in quotes.", "response": '"hi"', "model": "a"},
        {"prompt": "Say hi without commas.", "response": "hi, there", "model": "a"},
        {"prompt": "Say hi without commas.", "response": "hi there", "model": "b"},
    ]
    args = args_for(tmp_path, responses)
    assert _command.run(**vars(args)) == 0
    lines = [json.loads(line) for line in args.output.read_text().splitlines()]
    assert [(x["key"], x["model"]) for x in lines] == [(2, "a"), (1, "a"), (1, "b")]
    assert "response" not in lines[0]
    assert lines[0] == {
        "key": 2,
        "prompt": "Wrap it in quotes.",
        "model": "a",
        "instruction_id_list": ["startend:quotation"],
        "prompt_level_strict_acc": True,
        "inst_level_strict_acc": [True],
        "prompt_level_loose_acc": True,
        "inst_level_loose_acc": [True],
    }
    assert lines[1]["inst_level_strict_acc"] == [False]
    assert lines[2]["inst_level_strict_acc"] == [True]
    err = capsys.readouterr().err
    assert "1 of 3 input prompts have no response (keys: 3)" in err
    assert "prompt_level_strict_acc: 0.6667" in err
    assert "inst_level_loose_acc: 0.6667" in err


def test_summary_file(tmp_path) -> None:
    responses = [{"prompt": "Say hi without commas.", "response": "hi"}]
    args = args_for(tmp_path, responses, summary=tmp_path / "summary.json")
    assert _command.run(**vars(args)) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["prompt_level_strict_acc"] == 1.0
    assert summary["inst_level_loose_acc"] == 1.0
    assert summary["prompts_without_response"] == [2, 3]
    assert not list((tmp_path / "out").glob(".*"))  # no temp files left behind


@pytest.mark.parametrize(
    ("responses_text", "expected"),
    [
        (
            '{"prompt": "Say hi without commas.", "response": "hi"}\n'
            '{"prompt": "Say hi without commas. ", "response": "x"}\n',
            r"responses.jsonl:2: prompt not found in .*input_data.jsonl .*closest is key 1",
        ),
        (
            '{"prompt": "Say hi without commas.", "response": "hi"}\nnot json\n',
            r"responses.jsonl:2: not valid JSON",
        ),
        ('{"prompt": "Say hi without commas."}\n', r"responses.jsonl:1: missing field 'response'"),
        (
            '{"prompt": "Say hi without commas.", "response": 3}\n',
            r"responses.jsonl:1: field 'response' must be a string, got int",
        ),
        ('["a list"]\n', r"responses.jsonl:1: expected a JSON object per line"),
    ],
)
def test_bad_responses_name_file_and_line(tmp_path, responses_text, expected) -> None:
    args = args_for(tmp_path, [])
    args.responses.write_text(responses_text, encoding="utf-8")
    with pytest.raises(TandemError, match=expected):
        _command.run(**vars(args))
    assert not args.output.exists()


def test_bad_input_data_names_line_and_key(tmp_path) -> None:
    inputs = [
        *INPUTS,
        {
            "key": 4,
            "prompt": "Bad.",
            "instruction_id_list": ["keywords:frequency"],
            "kwargs": [{"keyword": "a", "frequency": 2}],
        },
    ]
    args = args_for(tmp_path, [], inputs=inputs)
    with pytest.raises(
        TandemError,
        match=r"input_data.jsonl:4 \(key 4\): keywords:frequency: missing kwarg 'relation'",
    ):
        _command.run(**vars(args))


def test_module_entry_point_exits_2_with_the_message(tmp_path) -> None:
    args = args_for(tmp_path, [{"prompt": "Nope", "response": "x"}])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cpu_scorer.ifeval",
            "--input-data",
            str(args.input_data),
            "--responses",
            str(args.responses),
            "--output",
            str(args.output),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert (
        result.stderr.startswith("error: ")
        and "responses.jsonl:1: prompt not found" in result.stderr
    )


def test_prints_rows_per_second_for_scoring_and_for_the_whole_command(tmp_path, capsys) -> None:
    responses = [{"prompt": "Say hi without commas.", "response": "hi there"}] * 3
    assert _command.run(**vars(args_for(tmp_path, responses))) == 0
    err = capsys.readouterr().err
    assert re.search(
        r"scored 3 responses in \d+\.\d\d s \((\d+|-) rows/s\); \d+\.\d\d s with reading, "
        r"checking and writing \((\d+|-) rows/s\)",
        err,
    ), err
