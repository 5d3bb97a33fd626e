"""tandem as an lm-evaluation-harness model (``tandem.lm_eval``, ``tandem lm-eval``).

Fast tests use the fake backend; the slow ones run the embedded model through lm-eval
on local task YAMLs over ../shared/data (no hub) and hold the plugin to tandem's own
runs and to lm-eval's ``--model hf``: the same per-choice log-likelihoods (1e-4), the
same acc / acc_norm, the same generated text.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
ARC = DATA / "mc" / "arc_easy" / "ARC-Easy-test.jsonl"
IFEVAL = DATA / "ifeval" / "input_data.jsonl"
HAS_LMEVAL = importlib.util.find_spec("lm_eval") is not None
HAS_LLAMACPP = importlib.util.find_spec("llama_cpp") is not None
needs_lmeval = pytest.mark.skipif(
    not HAS_LMEVAL, reason="lm-eval not installed: pip install 'tandem-eval[lmeval]'"
)
ARC_ITEMS = 100
IFEVAL_ITEMS = 6
MAX_NEW = 32

ARC_YAML = """\
task: arc_easy_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""

IFEVAL_YAML = """\
task: ifeval_local
dataset_path: json
dataset_kwargs:
  data_files:
    train: {path}
output_type: generate_until
test_split: train
doc_to_text: prompt
doc_to_target: ""
generation_kwargs:
  until: []
  do_sample: false
  temperature: 0.0
  max_gen_toks: {max_new}
metric_list:
  - metric: bypass
"""


def lm_eval_env(tmp_path: Path) -> dict[str, str]:
    """Offline, and lm-eval's dataset cache under tmp_path, not the user's home."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    if os.environ.get("TANDEM_THREADS"):
        # lm-eval's hf model takes torch's default threads; hold it to tandem's count
        # (on a busy 2-core machine 2 threads ran several times slower than 1).
        env.setdefault("OMP_NUM_THREADS", os.environ["TANDEM_THREADS"])
    return env


def write_task(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def run_tandem_lm_eval(tmp_path: Path, out: str, *args: str) -> tuple[dict, list[dict]]:
    """``tandem lm-eval ARGS --output_path ... --log_samples``: results and samples."""
    env = lm_eval_env(tmp_path)
    command = [sys.executable, "-m", "tandem", "lm-eval", *args]
    command += ["--output_path", str(tmp_path / out), "--log_samples"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    (results_file,) = glob.glob(str(tmp_path / out / "*" / "results_*.json"))
    (samples_file,) = glob.glob(str(tmp_path / out / "*" / "samples_*.jsonl"))
    samples = [json.loads(line) for line in Path(samples_file).read_text().splitlines()]
    return json.loads(Path(results_file).read_text()), sorted(samples, key=lambda s: s["doc_id"])


# ---- no model: the plugin's surface ------------------------------------------------------
def test_tandem_imports_no_lm_eval() -> None:
    # The extra is optional: the CLI and the tiers never import it on their own.
    code = (
        "import sys, tandem, tandem.cli, gpu_worker.backends; "
        "tandem.cli.build_parser(); print('lm_eval' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_entry_point_is_declared() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '[project.entry-points."lm_eval.models"]' in pyproject
    assert 'tandem = "tandem.lm_eval:TandemLM"' in pyproject


@needs_lmeval
def test_register_keeps_lm_evals_own_models() -> None:
    from lm_eval.api.registry import get_model

    from tandem.lm_eval import TandemLM, register

    register()
    register()  # idempotent
    assert get_model("tandem") is TandemLM
    assert get_model("hf").__name__ == "HFLM"


def _instance(kind: str, args: tuple, index: int):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=args, idx=index)


@needs_lmeval
def test_three_calls_one_result_per_request_in_order() -> None:
    from gpu_worker.backends.base import LoglikelihoodRequest
    from gpu_worker.backends.fake import FakeBackend
    from tandem.lm_eval import TandemLM

    lm = TandemLM(backend="fake", batch_size="auto:4", device="cuda:0")
    assert isinstance(lm.backend, FakeBackend)
    pairs = [("Question: 2+2?\nAnswer:", f" {n}") for n in range(5)] * 2
    got = lm.loglikelihood([_instance("loglikelihood", p, i) for i, p in enumerate(pairs)])
    want = lm.backend.loglikelihood([LoglikelihoodRequest(*p) for p in pairs])
    assert got == [(w.logprob, w.is_greedy) for w in want]
    texts = lm.generate_until(
        [
            _instance("generate_until", (f"prompt {i}", {"until": ["model"], "max_gen_toks": 8}), i)
            for i in range(4)
        ]
    )
    assert len(texts) == 4 and all("model" not in t for t in texts)
    rolling = lm.loglikelihood_rolling(
        [_instance("loglikelihood_rolling", (t,), i) for i, t in enumerate(["a b", "c d e"])]
    )
    assert rolling == [-4.0, -6.0]


@needs_lmeval
def test_model_args_are_checked() -> None:
    from shared.errors import TandemError
    from tandem.lm_eval import TandemLM

    with pytest.raises(TandemError, match="did you mean 'precision'"):
        TandemLM(backend="fake", precison="fp32")
    with pytest.raises(TandemError, match="not both"):
        TandemLM(backend="fake", model="a", pretrained="b")
    with pytest.raises(TandemError, match="backend"):
        TandemLM(backend="hff")
    lm = TandemLM(backend="fake")
    with pytest.raises(TandemError, match="greedily"):
        lm.generate_until([_instance("generate_until", ("p", {"do_sample": True}), 0)])


@needs_lmeval
def test_simple_evaluate_takes_a_tandem_lm(tmp_path: Path, monkeypatch) -> None:
    import datasets
    import lm_eval

    from tandem.lm_eval import TandemLM

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    task = write_task(tmp_path, "arc", ARC_YAML.format(path=ARC))
    results = lm_eval.simple_evaluate(
        model=TandemLM(backend="fake"), tasks=[str(task)], limit=4, log_samples=True
    )
    assert set(results["results"]["arc_easy_local"]) >= {"acc,none", "acc_norm,none"}
    assert len(results["samples"]["arc_easy_local"]) == 4
    assert results["config"]["tandem"]["backend"] == "fake"


@needs_lmeval
def test_tandem_lm_eval_passes_every_argument_through(tmp_path: Path) -> None:
    task = write_task(tmp_path, "arc", ARC_YAML.format(path=ARC))
    results, samples = run_tandem_lm_eval(
        tmp_path,
        "out",
        "--model",
        "tandem",
        "--model_args",
        "backend=fake",
        "--tasks",
        str(task),
        "--limit",
        "3",
    )
    assert len(samples) == 3
    assert results["config"]["model"] == "tandem"
    assert "acc,none" in results["results"]["arc_easy_local"]


# ---- the embedded model: agreement with tandem's own runs and with lm-eval's hf --------
def tandem_own_run(tmp_path: Path, task: str, limit: int, backend: str = "hf") -> tuple:
    """tandem's own pipeline (generate, score): its summary metrics and its rows."""
    import pyarrow.parquet as pq

    from cpu_scorer.scoring import score_store
    from gpu_worker.job import run_generation
    from shared.spec import RunSpec
    from shared.store import Store

    spec = RunSpec(
        run_id=f"own-{task}-{backend}",
        tasks=(task,),
        limit={task: limit},
        backend=backend,
        precision="fp32" if backend == "hf" else "auto",
        shard_size=limit,
        generation={"max_new_tokens": MAX_NEW},
    )
    store_dir = tmp_path / f"store-{backend}"
    run_generation(spec, str(store_dir), local=True, data_dir=str(DATA), progress=False)
    store = Store(str(store_dir))
    score_store(store, spec.run_id, progress=False)
    summary = store.summary(spec.run_id)
    assert summary is not None
    files = sorted(glob.glob(str(store_dir / "runs" / spec.run_id / "generations" / task / "*")))
    rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    return summary.tasks[task].metrics, rows


def choice_logprobs(samples: list[dict]) -> list[list[float]]:
    return [[float(resp[0][0]) for resp in sample["resps"]] for sample in samples]


def max_gap(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(x) for x in a] == [len(y) for y in b]
    return max(abs(p - q) for x, y in zip(a, b, strict=True) for p, q in zip(x, y, strict=True))


@pytest.mark.slow
@needs_lmeval
def test_arc_easy_agrees_with_tandem_and_lm_eval_hf(tmp_path: Path) -> None:
    from gpu_worker.models import embedded_model_dir

    task = str(write_task(tmp_path, "arc", ARC_YAML.format(path=ARC)))
    limit = ["--tasks", task, "--limit", str(ARC_ITEMS), "--device", "cpu"]
    plugin, plugin_samples = run_tandem_lm_eval(
        tmp_path, "plugin", "--model", "tandem", "--model_args", "backend=hf,precision=fp32", *limit
    )
    reference, reference_samples = run_tandem_lm_eval(
        tmp_path,
        "hf",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={embedded_model_dir()},dtype=float32",
        "--batch_size",
        "16",
        *limit,
    )
    metrics, rows = tandem_own_run(tmp_path, "arc_easy", ARC_ITEMS)
    ours = choice_logprobs(plugin_samples)
    assert max_gap(ours, [row["logprobs"] for row in rows]) <= 1e-4
    assert max_gap(ours, choice_logprobs(reference_samples)) <= 1e-4
    scores = plugin["results"]["arc_easy_local"]
    for name in ("acc", "acc_norm"):
        assert scores[f"{name},none"] == pytest.approx(metrics[name], abs=1e-9)
        assert scores[f"{name},none"] == reference["results"]["arc_easy_local"][f"{name},none"]


@pytest.mark.slow
@needs_lmeval
def test_generate_until_gives_tandems_own_text(tmp_path: Path) -> None:
    task = write_task(tmp_path, "ifeval", IFEVAL_YAML.format(path=IFEVAL, max_new=MAX_NEW))
    _, samples = run_tandem_lm_eval(
        tmp_path,
        "gen",
        "--model",
        "tandem",
        "--model_args",
        "backend=hf,precision=fp32",
        "--batch_size",
        "auto",
        "--apply_chat_template",
        "--tasks",
        str(task),
        "--limit",
        str(IFEVAL_ITEMS),
        "--device",
        "cpu",
    )
    _, rows = tandem_own_run(tmp_path, "ifeval", IFEVAL_ITEMS)
    assert [s["resps"][0][0] for s in samples] == [row["response"] for row in rows]


@pytest.mark.slow
@pytest.mark.llamacpp
@needs_lmeval
@pytest.mark.skipif(not HAS_LLAMACPP, reason="llama-cpp-python not installed: make test-llamacpp")
def test_llamacpp_through_lm_eval_equals_tandems_own(tmp_path: Path) -> None:
    from gpu_worker.models import embedded_gguf

    task = str(write_task(tmp_path, "arc", ARC_YAML.format(path=ARC)))
    results, samples = run_tandem_lm_eval(
        tmp_path,
        "gguf",
        "--model",
        "tandem",
        "--model_args",
        f"backend=llamacpp,model={embedded_gguf()}",
        "--tasks",
        task,
        "--limit",
        str(ARC_ITEMS),
    )
    metrics, rows = tandem_own_run(tmp_path, "arc_easy", ARC_ITEMS, backend="llamacpp")
    assert max_gap(choice_logprobs(samples), [row["logprobs"] for row in rows]) <= 1e-4
    assert results["config"]["tandem"]["precision"] == "q4_1"
    for name in ("acc", "acc_norm"):
        assert results["results"]["arc_easy_local"][f"{name},none"] == pytest.approx(
            metrics[name], abs=1e-9
        )
