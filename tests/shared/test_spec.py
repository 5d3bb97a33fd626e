from __future__ import annotations

import pytest

from shared.errors import TandemError
from shared.spec import RunSpec, load_spec, parse_spec


def write(tmp_path, text: str):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_good_spec_loads_with_defaults(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            'model = "org/model"\nprecision = "nf4"\ntasks = ["ifeval", "tinymmlu"]\n'
            "limit = { ifeval = 100 }\n[generation]\nmax_new_tokens = 64\nbatch_size = 8\n",
        )
    )
    assert spec.tasks == ("ifeval", "tinymmlu")
    assert spec.limit == {"ifeval": 100}
    assert spec.generation.max_new_tokens == 64
    assert spec.generation.batch_size == 8
    assert spec.backend == "hf" and spec.chat_template == "auto"


def test_unknown_key_names_file_field_and_allowed(tmp_path):
    path = write(tmp_path, 'tasks = ["ifeval"]\nprecison = "fp32"\n')
    with pytest.raises(TandemError) as error:
        load_spec(path)
    message = str(error.value)
    assert str(path) in message
    assert "precison" in message and "did you mean 'precision'" in message
    assert "allowed:" in message and "tasks" in message


def test_unknown_task_suggests_closest():
    with pytest.raises(TandemError) as error:
        parse_spec({"tasks": ["ifevl"]})
    assert "did you mean 'ifeval'" in str(error.value)
    assert "tinymmlu" in str(error.value)


def test_unknown_precision_lists_allowed():
    with pytest.raises(TandemError) as error:
        parse_spec({"tasks": ["ifeval"], "precision": "int3"})
    message = str(error.value)
    assert "precision" in message and "'nf4'" in message and "int3" in message


def test_unknown_generation_key():
    with pytest.raises(TandemError) as error:
        parse_spec({"tasks": ["ifeval"], "generation": {"max_tokens": 5}})
    assert "generation.max_tokens" in str(error.value)
    assert "max_new_tokens" in str(error.value)


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"tasks": []}, "tasks"),
        ({"tasks": ["ifeval"], "limit": {"tinymmlu": 3}}, "not in tasks"),
        ({"tasks": ["ifeval"], "limit": {"ifeval": 0}}, "at least 1"),
        ({"tasks": ["ifeval"], "run_id": "../escape"}, "run_id"),
        ({"tasks": ["ifeval"], "generation": {"batch_size": 0}}, "batch_size"),
        ({"tasks": ["ifeval"], "generation": {"stop": [""]}}, "stop"),
        ({"tasks": ["ifeval", "ifeval"]}, "twice"),
        ({"tasks": ["ifeval"], "backend": "tgi"}, "backend"),
    ],
)
def test_bad_specs_are_refused(data, needle):
    with pytest.raises(TandemError) as error:
        parse_spec(data)
    assert needle in str(error.value)


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path, "tasks = [\n")
    with pytest.raises(TandemError, match="not valid TOML"):
        load_spec(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(TandemError, match="cannot read run spec"):
        load_spec(tmp_path / "nope.toml")


def test_spec_hash_ignores_run_id_but_not_settings():
    a = RunSpec(tasks=("ifeval",), run_id="a")
    b = RunSpec(tasks=("ifeval",), run_id="b")
    c = RunSpec(tasks=("ifeval",), precision="bf16")
    assert a.spec_hash() == b.spec_hash() != c.spec_hash()
    assert (
        RunSpec(tasks=("ifeval",)).resolved_run_id() == RunSpec(tasks=("ifeval",)).resolved_run_id()
    )
