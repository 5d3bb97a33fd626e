"""Write lm-evaluation-harness 0.4.13's prompts and metric values as test fixtures.

tandem's model-card tasks must build the same prompts as lm-eval, byte for byte, and
score them with the same functions. This script runs lm-eval itself (in its own venv,
``.venv-mcbench``, made on first use as ``bench/mc_bench.py`` does) on the local data in
``../shared/data`` -- its task YAMLs pointed at local files, nothing from the hub -- and
writes, for the first documents of each task, every request lm-eval would send a model
(contexts, continuations, stop strings), plus lm-eval's metric outputs on tricky cases
(GSM8K extraction, MATH normalization and equivalence, TruthfulQA mc2). The offline
tests (``tests/shared/test_lmeval_prompts.py``, ``tests/cpu_scorer/test_answers.py``)
compare tandem against these files; commit them after running this.

    .venv/bin/python bench/lmeval_fixtures.py [--out tests/fixtures/lmeval] [--docs 20]

Where lm-eval's few-shot pool is not in the shared data (HellaSwag train, WinoGrande's
train_xl), a small pool written here stands in and is stored in the fixture, so the test
gives tandem the same pool.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()
BENCH_VENV = REPO / ".venv-mcbench"
LM_EVAL = "lm-eval==0.4.13"
TASKS_DIR = "lm_eval/tasks"

# tandem task -> (lm-eval YAML to include, shots, split -> local file or generated rows)
SHOTS = {
    "arc_easy": 25,
    "arc_challenge": 25,
    "hellaswag": 10,
    "winogrande": 5,
    "truthfulqa_mc1": 0,
    "truthfulqa_mc2": 0,
    "lambada_openai": 0,
    "gsm8k": 8,
    "math500": 4,
    "humaneval": 0,
    "mbpp": 3,
    "mmlu": 5,
}


# ---- the reference side (runs inside .venv-mcbench) ---------------------------------------
def _stub_evaluate() -> None:
    """humaneval/mbpp's utils load HF evaluate's code_eval (a hub download) at import;
    only their prompts are needed here."""
    stub = types.ModuleType("evaluate")

    class _Metric:
        def compute(self, **_: object) -> list:
            return [{"pass@1": 0.0}, {}]

    stub.load = lambda *_a, **_k: _Metric()  # type: ignore[attr-defined]
    sys.modules["evaluate"] = stub


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def _read_jsonl(path: Path) -> list[dict]:
    # split("\n"), not splitlines(): a JSON string may hold U+2028, which splitlines cuts.
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def _synthetic_hellaswag(count: int, offset: int) -> list[dict]:
    """Raw-layout rows (the shared data holds only llama.cpp's text copy), with the
    brackets, spaces and capitalization lm-eval's preprocess changes."""
    rows = []
    for i in range(count):
        n = i + offset
        rows.append(
            {
                "ind": n,
                "activity_label": f"Activity {n % 7} [title] step",
                "ctx_a": f" A person [header] does thing {n} on a roof.  ",
                "ctx_b": f"then they {'climb' if n % 2 else 'Jump'} down",
                "ctx": "",
                "endings": [f"[substeps] ending {n}-{k} with  two spaces." for k in range(4)],
                "source_id": f"src-{n}",
                "split": "train",
                "split_type": "indomain",
                "label": str(n % 4),
            }
        )
    return rows


def _configs(work: Path, docs: int) -> dict[str, tuple[str, dict, dict]]:
    """tandem task -> (lm-eval YAML text, extra fixture data, lm-eval task names)."""
    lm_tasks = Path(__import__("lm_eval").__file__).parent / "tasks"
    out: dict[str, tuple[str, dict, dict]] = {}

    def yaml(task: str, include: Path, files: dict[str, str], extra: str = "") -> str:
        data_files = "".join(f"    {split}: {json.dumps(p)}\n" for split, p in files.items())
        return (
            f"include: {json.dumps(str(include))}\ntask: {task}\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n{data_files}{extra}"
        )

    mc = DATA / "mc"
    out["arc_easy"] = (
        yaml(
            "fx_arc_easy",
            lm_tasks / "arc/arc_easy.yaml",
            {
                "test": str(mc / "arc_easy/ARC-Easy-test.jsonl"),
                "train": str(mc / "arc_easy/ARC-Easy-train.jsonl"),
            },
            "validation_split: null\n",
        ),
        {},
        {},
    )
    out["arc_challenge"] = (
        yaml(
            "fx_arc_challenge",
            lm_tasks / "arc/arc_challenge.yaml",
            {
                "test": str(mc / "arc_challenge/ARC-Challenge-test.jsonl"),
                "train": str(mc / "arc_challenge/ARC-Challenge-train.jsonl"),
            },
            "validation_split: null\n",
        ),
        {},
        {},
    )
    hs_val, hs_train = _synthetic_hellaswag(docs, 0), _synthetic_hellaswag(30, 1000)
    out["hellaswag"] = (
        yaml(
            "fx_hellaswag",
            lm_tasks / "hellaswag/hellaswag.yaml",
            {
                "validation": _jsonl(work / "hs_val.jsonl", hs_val),
                "train": _jsonl(work / "hs_train.jsonl", hs_train),
            },
        ),
        {"hellaswag_val.jsonl": hs_val, "hellaswag_train.jsonl": hs_train},
        {},
    )
    # Only the validation file's fields: one datasets schema for both splits.
    wino_train = [
        {k: row[k] for k in ("sentence", "option1", "option2", "answer")}
        for row in _read_jsonl(mc / "winogrande" / "train_s.jsonl")[:60]
    ]
    out["winogrande"] = (
        yaml(
            "fx_winogrande",
            lm_tasks / "winogrande/default.yaml",
            {
                "validation": str(mc / "winogrande/winogrande_xl_validation.jsonl"),
                "train": _jsonl(work / "wino_train.jsonl", wino_train),
            },
        ),
        {"winogrande_xl_train.jsonl": wino_train},
        {},
    )
    mc_task = json.loads((DATA / "truthfulqa" / "mc_task.json").read_text())
    hub_layout = [
        {
            "question": row["question"],
            **{
                key: {"choices": list(row[key]), "labels": list(row[key].values())}
                for key in ("mc1_targets", "mc2_targets")
            },
        }
        for row in mc_task
    ]
    tqa = _jsonl(work / "tqa.jsonl", hub_layout)
    for name in ("truthfulqa_mc1", "truthfulqa_mc2"):
        out[name] = (
            yaml(f"fx_{name}", lm_tasks / f"truthfulqa/{name}.yaml", {"validation": tqa}),
            {},
            {},
        )
    out["lambada_openai"] = (
        yaml(
            "fx_lambada_openai",
            lm_tasks / "lambada/lambada_openai.yaml",
            {"test": str(DATA / "lambada/lambada_test.jsonl")},
        ),
        {},
        {},
    )
    out["gsm8k"] = (
        yaml(
            "fx_gsm8k",
            lm_tasks / "gsm8k/gsm8k.yaml",
            {"test": str(DATA / "gsm8k/test.jsonl"), "train": str(DATA / "gsm8k/train.jsonl")},
        ),
        {},
        {},
    )
    out["math500"] = (
        yaml(
            "fx_math500",
            lm_tasks / "minerva_math/minerva_math500.yaml",
            {"test": str(DATA / "math500/test.jsonl")},
        ),
        {},
        {},
    )
    out["humaneval"] = (
        yaml(
            "fx_humaneval",
            lm_tasks / "humaneval/humaneval.yaml",
            {"test": str(DATA / "humaneval/HumanEval.jsonl")},
        ),
        {},
        {},
    )
    mbpp = [r for r in _read_jsonl(DATA / "mbpp" / "mbpp.jsonl") if 11 <= r["task_id"] <= 510]
    out["mbpp"] = (
        yaml(
            "fx_mbpp",
            lm_tasks / "mbpp/mbpp.yaml",
            {"test": _jsonl(work / "mbpp_test.jsonl", mbpp)},
        ),
        {},
        {},
    )
    return out


def _mmlu(work: Path, first: int) -> dict[str, str]:
    """One YAML per subject (lm-eval runs MMLU as 57 tasks), over per-subject files."""
    lm_tasks = Path(__import__("lm_eval").__file__).parent / "tasks" / "mmlu" / "default"
    by_subject: dict[str, dict[str, list[dict]]] = {}
    for split, name in (("test", "mmlu_test.jsonl"), ("dev", "mmlu_dev.jsonl")):
        for row in _read_jsonl(DATA / "mmlu" / name):
            by_subject.setdefault(row["subject"], {}).setdefault(split, []).append(row)
    yamls = {}
    for subject, splits in sorted(by_subject.items()):
        files = {
            split: _jsonl(work / f"mmlu_{subject}_{split}.jsonl", rows)
            for split, rows in splits.items()
        }
        yamls[subject] = (
            f"include: {json.dumps(str(lm_tasks / f'mmlu_{subject}.yaml'))}\n"
            f"task: fx_mmlu_{subject}\ndataset_path: json\ndataset_name: null\n"
            "dataset_kwargs:\n  data_files:\n"
            + "".join(f"    {s}: {json.dumps(p)}\n" for s, p in files.items())
        )
    return yamls


def _requests(task_obj, shots: int, docs: int) -> list[dict]:
    task_obj.set_config(key="num_fewshot", value=shots)
    task_obj.set_fewshot_seed(seed=1234)
    task_obj.build_all_requests(limit=docs, rank=0, world_size=1)
    by_doc: dict[int, list[dict]] = {}
    for instance in task_obj.instances:
        args = instance.args
        if instance.request_type == "generate_until":
            request = {"context": args[0], "until": list(args[1].get("until", []))}
            if "max_gen_toks" in args[1]:
                request["max_gen_toks"] = args[1]["max_gen_toks"]
        else:
            request = {"context": args[0], "continuation": args[1]}
        by_doc.setdefault(instance.doc_id, []).append(request)
    out = []
    for i in sorted(by_doc):
        # Each distinct context once (a 25-shot context is kilobytes, and every choice
        # of a question repeats it); requests point at it by index.
        contexts: list[str] = []
        requests = []
        for request in by_doc[i]:
            if request["context"] not in contexts:
                contexts.append(request["context"])
            requests.append({**request, "context": contexts.index(request["context"])})
        out.append({"doc_index": i, "contexts": contexts, "requests": requests})
    return out


def _metric_cases() -> dict:
    """lm-eval's answers on tricky cases: GSM8K filters + exact_match, MATH's
    normalization and equivalence, TruthfulQA mc2."""
    import importlib.util

    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    lm_tasks = Path(__import__("lm_eval").__file__).parent / "tasks"

    def load(path: Path, name: str):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    strict = RegexFilter(regex_pattern=r"#### (\-?[0-9\.\,]+)")
    flexible = RegexFilter(group_select=-1, regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
    ignore = [",", "\\$", "(?s).*#### ", "\\.$"]
    reference = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 1,800"
    responses = [
        "She makes 1800 dollars.\n#### 1800",
        "The answer is $1,800.",
        "#### 1,800.",
        "So -5 apples, then 1800.",
        "#### -3\nbut really 1800",
        "no number here",
        "It costs $18.00 total, #### 1800 dollars",
        "1,800.",
        "The total is 1.800",
        "#### $1,800",
        "Answer: 18 00",
        "first 7, then 12, finally 1800.",
    ]
    gsm = []
    for response in responses:
        s = strict.apply([[response]], [{}])[0][0]
        f = flexible.apply([[response]], [{}])[0][0]
        gsm.append(
            {
                "response": response,
                "reference": reference,
                "strict": s,
                "flexible": f,
                "strict_match": float(
                    exact_match_hf_evaluate([s], [reference], ignore, True)["exact_match"]
                ),
                "flexible_match": float(
                    exact_match_hf_evaluate([f], [reference], ignore, True)["exact_match"]
                ),
            }
        )
    math_utils = load(lm_tasks / "minerva_math" / "utils.py", "minerva_utils")
    answers = [
        "\\frac12",
        "0.5",
        "\\frac{1}{2}",
        "\\dfrac{1}{2}",
        "10,000",
        "0,1",
        "x = 5",
        "5 \\text{ cm}",
        "\\$18.90",
        "90^\\circ",
        "(2,5)",
        "[2,5)",
        "\\sqrt2",
        "\\sqrt[3]8",
        "2\\sqrt{2}",
        "\\boxed{7}",
        "12 \\text{ inches}",
        "\\left( 3, \\frac{\\pi}{2} \\right)",
        "\\text{(C)}",
        "a^2 + b",
        "-\\frac{2}{3}",
        "1,000,000",
    ]
    normalized = {a: math_utils.normalize_final_answer(a) for a in answers}
    pairs = [
        ("\\frac{1}{2}", "0.5"),
        ("\\frac12", "\\frac{1}{2}"),
        ("2", "2.0"),
        ("(2,5)", "(2,5)"),
        ("x^2+1", "1+x^2"),
        ("\\sqrt{8}", "2\\sqrt{2}"),
        ("3", "4"),
        ("\\pi", "3.14"),
        ("10000", "10,000"),
        ("[invalidanswer]", "5"),
    ]
    equivalent = [
        {
            "a": a,
            "b": b,
            "normalized_a": math_utils.normalize_final_answer(a),
            "normalized_b": math_utils.normalize_final_answer(b),
            "equiv": bool(
                math_utils.is_equiv(
                    math_utils.normalize_final_answer(a), math_utils.normalize_final_answer(b)
                )
            ),
        }
        for a, b in pairs
    ]
    solutions = [
        (
            "We get $\\boxed{\\frac{1}{2}}$.",
            "Final Answer: The final answer is $0.5$. I hope it is correct.",
        ),
        (
            "So $\\boxed{10,000}$ ways.",
            "Final Answer: The final answer is $10000$. I hope it is correct.\n",
        ),
        (
            "Thus $\\boxed{(2,5)}$.",
            "Final Answer: The final answer is (2,5). I hope it is correct.",
        ),
        ("It is \\boxed 7$.", "The answer is 7."),
        ("$\\boxed{3}$", "Final Answer: The final answer is $4$. I hope it is correct."),
        ("$\\boxed{12}$", "Final Answer: The final answer is 12 inches. I hope it is correct."),
    ]
    results = []
    for solution, response in solutions:
        doc = {
            "solution": solution,
            "answer": math_utils.normalize_final_answer(
                math_utils.remove_boxed(math_utils.last_boxed_only_string(solution))
            ),
        }
        results.append(
            {
                "solution": solution,
                "response": response,
                "target": doc["answer"],
                "extracted": math_utils.normalize_final_answer(
                    math_utils.get_unnormalized_answer(response)
                ),
                "exact_match": math_utils.process_results(doc, [response])["exact_match"],
            }
        )
    tqa_utils = load(lm_tasks / "truthfulqa" / "utils.py", "tqa_utils")
    mc2 = []
    for lls, labels in (
        ([-1.0, -2.0, -3.0, -0.5], [1, 1, 0, 0]),
        ([-10.0, -10.0], [1, 0]),
        ([-300.0, -1.0, -2.5], [0, 1, 1]),
        ([-0.1, -5.0, -5.0, -5.0, -2.0], [1, 0, 0, 0, 1]),
    ):
        value = tqa_utils.process_results_mc2(
            {"mc2_targets": {"labels": labels}}, [(ll, False) for ll in lls]
        )["acc"]
        mc2.append({"loglikelihoods": lls, "labels": labels, "acc": float(value)})
    return {
        "gsm8k": gsm,
        "math_normalize": normalized,
        "math_equivalent": equivalent,
        "math_results": results,
        "truthfulqa_mc2": mc2,
    }


def _write(path: Path, fixture: dict) -> None:
    import gzip

    text = json.dumps(fixture, indent=1, ensure_ascii=False, sort_keys=True) + "\n"
    # mtime=0: the same fixture gives the same bytes (no churn in git).
    path.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))


def reference(out: Path, docs: int) -> None:
    _stub_evaluate()
    from lm_eval.tasks import TaskManager, get_task_dict

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        configs = _configs(work, docs)
        mmlu = _mmlu(work, docs)
        for name, (text, _extra, _) in configs.items():
            (work / f"fx_{name}.yaml").write_text(text)
        for subject, text in mmlu.items():
            (work / f"fx_mmlu_{subject}.yaml").write_text(text)
        manager = TaskManager(include_path=str(work))
        for name, (_text, extra, _) in configs.items():
            task_obj = get_task_dict([f"fx_{name}"], manager)[f"fx_{name}"]
            fixture = {
                "task": name,
                "num_fewshot": SHOTS[name],
                "fewshot_seed": 1234,
                "data": extra,
                "docs": _requests(task_obj, SHOTS[name], docs),
            }
            _write(out / f"{name}.json.gz", fixture)
            print(f"{name}: {len(fixture['docs'])} docs", file=sys.stderr)
        subjects = []
        for index, subject in enumerate(sorted(mmlu)):
            task_obj = get_task_dict([f"fx_mmlu_{subject}"], manager)[f"fx_mmlu_{subject}"]
            count = docs if index == 0 else 1  # every subject's description, once
            subjects.append({"subject": subject, "docs": _requests(task_obj, SHOTS["mmlu"], count)})
        fixture = {"task": "mmlu", "num_fewshot": SHOTS["mmlu"], "subjects": subjects}
        _write(out / "mmlu.json.gz", fixture)
        (out / "metrics.json").write_text(
            json.dumps(_metric_cases(), indent=1, ensure_ascii=False) + "\n"
        )


# ---- driver ------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "lmeval")
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference:
        reference(args.out.resolve(), args.docs)
        return 0
    from bench import _venv

    python = _venv.reference_python(
        BENCH_VENV,
        "import lm_eval, sympy, antlr4, math_verify, sacrebleu",
        [_venv.TORCH],
        [LM_EVAL, "sympy", "antlr4-python3-runtime==4.11.*", "math-verify"],
    )
    command = [
        str(python),
        __file__,
        "--reference",
        "--out",
        str(args.out),
        "--docs",
        str(args.docs),
    ]
    return subprocess.run(command, cwd=REPO).returncode


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
