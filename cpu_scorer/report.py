"""Score tables for the terminal, and ``tandem report RUN... [--format md|json]``.

A report of one run holds its model config, scores with stderr, telemetry, profile and
reproducibility record (what is needed to run it again and get the same numbers). A
report of several runs adds a side-by-side table of each task's headline metric and,
for every run after the first, the paired test against the first
(``cpu_scorer.compare.paired_tests``: difference, 95% bootstrap interval, McNemar).
The JSON is what the markdown is rendered from.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, TextIO

from shared.errors import TandemError
from shared.records import Summary, read_summary
from shared.store import Store
from shared.tasks import TASKS

# For a task this tandem does not know: its numbers in this order.
_FALLBACK = ("acc", "acc_norm")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _shown(task: str, metrics: dict[str, Any]) -> list[str]:
    """The task's declared scalar metrics, in its order (IFEval: its four accuracies)."""
    names = [m.name for m in TASKS[task].metrics] if task in TASKS else list(_FALLBACK)
    return [n for n in names if isinstance(metrics.get(n), (int, float))]


def _rate(telemetry: dict[str, Any]) -> str:
    """Throughput with its unit: tokens/s for generation, samples/s for log-prob tasks."""
    if telemetry.get("tokens_per_second"):
        return f"{telemetry['tokens_per_second']:.1f} tok/s"
    if telemetry.get("samples_per_second"):
        return f"{telemetry['samples_per_second']:.2f} smp/s"
    return ""


def print_summary(summary: Summary | dict[str, Any], out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up now: a caller may have replaced sys.stdout
    if not isinstance(summary, Summary):
        summary = read_summary(summary)
    lines = [f"== {summary.run_id}  ({summary.model}, {summary.precision})"]
    shown_by_task = {task: _shown(task, entry.metrics) for task, entry in summary.tasks.items()}
    # Columns as wide as their longest entry: task names such as "truthfulqa_mc1" and
    # metric names such as "exact_match,flexible-extract" must not push the row apart.
    tw = max([4, *(len(task) for task in summary.tasks)])
    mw = max([15, *(len(name) for names in shown_by_task.values() for name in names)])
    header = f"{'task':<{tw}} {'metric':<{mw}} {'value':>9} {'± stderr':>9} {'n':>6} {'rate':>12}"
    lines.append(header)
    lines.append("-" * len(header))
    for task, entry in summary.tasks.items():
        metrics = entry.metrics
        rate_text = _rate(entry.telemetry)
        shown = shown_by_task[task]
        if not shown:
            lines.append(
                f"{task:<{tw}} {'(no scores yet)':<{mw}} {'':>9} {'':>9} {entry.samples_scored:>6}"
            )
        for i, name in enumerate(shown):
            stderr = metrics.get(name + "_stderr")
            lines.append(
                f"{task if i == 0 else '':<{tw}} {name:<{mw}} {_fmt(metrics[name]):>9} "
                f"{_fmt(stderr) if stderr is not None else '':>9} "
                f"{entry.samples_scored if i == 0 else '':>6} "
                f"{rate_text if i == 0 else '':>12}"
            )
        for note in entry.notes:
            lines.append(f"{'':<{tw}} note: {note}")
    print("\n".join(lines), file=out)


# ---- tandem report -----------------------------------------------------------------------
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ordered(task: str, headline: str | None, metrics: dict[str, Any]) -> list[str]:
    """The numeric metrics: the headline first, then as the task declares them."""
    declared = [m.name for m in TASKS[task].metrics] if task in TASKS else []
    names = [n for n in metrics if _number(metrics[n]) and not n.endswith("_stderr")]
    rank = {name: i for i, name in enumerate(declared)}
    return sorted(names, key=lambda n: (n != headline, rank.get(n, len(rank)), n))


def _run_report(store: Store, run_id: str) -> dict[str, Any]:
    from cpu_scorer._queries import require_run
    from cpu_scorer.summary import compute_summary

    record = require_run(store, run_id)
    summary = store.summary(run_id) or compute_summary(store, run_id)
    profile = store.profile(run_id)
    spec = record.spec
    scores: dict[str, Any] = {}
    for task, entry in summary.tasks.items():
        scores[task] = {
            "headline": entry.headline,
            "n": entry.samples_scored,
            "complete": entry.complete,
            "metrics": {
                name: {"value": entry.metrics[name], "stderr": entry.metrics.get(f"{name}_stderr")}
                for name in _ordered(task, entry.headline, entry.metrics)
            },
            "breakdowns": {
                name: value for name, value in entry.metrics.items() if isinstance(value, dict)
            },
            "notes": entry.notes,
        }
    return {
        "run_id": run_id,
        "config": {
            key: spec.get(key)
            for key in (
                "model",
                "revision",
                "adapter",
                "precision",
                "backend",
                "chat_template",
                "tasks",
                "limit",
                "generation",
            )
            if spec.get(key) not in (None, {}, [])
        },
        "scores": scores,
        "telemetry": {task: entry.telemetry for task, entry in summary.tasks.items()},
        "profile": profile.as_json() if profile is not None else None,
        "reproducibility": {
            "spec_hash": record.spec_hash,
            "created_at": record.created_at,
            "model": record.model.model_dump(),
            "chat_template": record.chat.model_dump(),
            "precision": summary.precision or record.resolved_precision,
            "requested_precision": record.requested_precision,
            "workers": [w.model_dump() for w in summary.workers or record.workers],
            "git_sha": record.environment.git_sha,
            "python": record.environment.python,
            "platform": record.environment.platform,
            "packages": record.environment.packages,
            "scorer_version": summary.scorer_version,
        },
    }


def build_report(store: Store, run_ids: list[str]) -> dict[str, Any]:
    """The report of ``run_ids`` (see the module docstring) as plain JSON values."""
    from cpu_scorer.compare import paired_tests

    if not run_ids:
        raise TandemError("a report needs at least one run")
    runs = [_run_report(store, run_id) for run_id in run_ids]
    first = run_ids[0]
    return {
        "runs": runs,
        "paired_tests": {
            other: paired_tests(store, first, other)["tasks"] for other in run_ids[1:]
        },
    }


def breakdown_table(value: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """A nested metric as (headers, rows): ``{name: number}`` gives (name, value) rows;
    ``{name: {acc, acc_stderr, n}}`` (MMLU's by_subject) one row per name with each
    number as a column; anything deeper is flattened to ``a / b`` names."""
    if value and all(isinstance(v, dict) for v in value.values()):
        keys: list[str] = []
        for record in value.values():
            keys += [k for k, v in record.items() if _number(v) and k not in keys]
        if keys:
            rows = [[name, *[record.get(k) for k in keys]] for name, record in value.items()]
            return ["name", *keys], rows
    return ["name", "value"], _flat(value)


def _flat(value: dict[str, Any], prefix: str = "") -> list[list[Any]]:
    rows: list[list[Any]] = []
    for name, item in value.items():
        key = f"{prefix} / {name}" if prefix else str(name)
        if _number(item):
            rows.append([key, item])
        elif isinstance(item, dict):
            rows += _flat(item, key)
    return rows


def _f(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if _number(value) else "-"


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _test_cell(test: dict[str, Any] | None) -> str:
    if not test:
        return "-"
    if test.get("error"):
        return "no test: " + test["error"].split(":")[0]
    low, high = test["ci"]
    return (
        f"{test['difference']:+.4f} [{low:+.4f}, {high:+.4f}], "
        f"McNemar p={test['mcnemar']['p_value']:.3g}"
    )


def _seconds(value: Any) -> str:
    return f"{value:.3f} s" if _number(value) else "-"


def _gib(value: Any) -> str:
    return f"{value / 2**30:.2f} GiB" if _number(value) else "-"


def _run_markdown(run: dict[str, Any], level: str) -> list[str]:
    lines = [f"{level} {run['run_id']}", ""]
    lines += _table(
        ["setting", "value"],
        [
            [k, json.dumps(v) if isinstance(v, (dict, list)) else v]
            for k, v in run["config"].items()
        ],
    )
    rows = []
    for task, entry in run["scores"].items():
        for i, (name, metric) in enumerate(entry["metrics"].items()):
            mark = " (headline)" if name == entry["headline"] else ""
            rows.append(
                [
                    task if i == 0 else "",
                    name + mark,
                    _f(metric["value"]),
                    "± " + _f(metric["stderr"]) if _number(metric["stderr"]) else "",
                    entry["n"] if i == 0 else "",
                ]
            )
    lines += [f"{level}# Scores", ""] + _table(["task", "metric", "value", "stderr", "n"], rows)
    for task, entry in run["scores"].items():
        for name, values in entry["breakdowns"].items():
            headers, rows = breakdown_table(values)
            shown = [
                [row[0], *[str(v) if isinstance(v, int) else _f(v) for v in row[1:]]]
                for row in rows
            ]
            if shown:
                lines += [f"{level}# {task}: {name}", ""] + _table(headers, shown)
    telemetry = [
        [
            task,
            t.get("samples_generated", "-"),
            _seconds(t.get("model_seconds")),
            _f(t.get("tokens_per_second"), 1),
            _seconds(t.get("prefill_seconds")),
            _seconds(t.get("decode_seconds")),
            _f(t.get("batch_size_mean"), 1),
            _gib(t.get("peak_rss_bytes")),
            _gib(t.get("cuda_max_allocated_bytes")),
        ]
        for task, t in run["telemetry"].items()
    ]
    lines += [f"{level}# Telemetry", ""] + _table(
        [
            "task",
            "samples",
            "model time",
            "tokens/s",
            "prefill",
            "decode",
            "batch mean",
            "peak RSS",
            "peak CUDA",
        ],
        telemetry,
    )
    profile = run["profile"]
    lines += [f"{level}# Profile", ""]
    if profile is None:
        lines += ["Not profiled (`tandem profile SPEC`).", ""]
    else:
        lines += _table(
            ["prompt tokens", "new tokens", "mean", "p50", "p95"],
            [
                [
                    r["measured_prompt_tokens"],
                    r["new_tokens"],
                    _seconds(r["mean_seconds"]),
                    _seconds(r["p50_seconds"]),
                    _seconds(r["p95_seconds"]),
                ]
                for r in profile["latency"]
            ],
        )
        throughput = profile.get("throughput") or {}
        lines += [
            f"Throughput {_f(throughput.get('tokens_per_second'), 1)} tokens/s at batch "
            f"{throughput.get('batch_size', '-')}; peak RSS {_gib(profile.get('peak_rss_bytes'))}"
            + (
                f", peak CUDA {_gib(profile['cuda_max_allocated_bytes'])}"
                if profile.get("cuda_max_allocated_bytes")
                else ""
            )
            + ".",
            "",
        ]
    repro = run["reproducibility"]
    model = repro["model"]
    pairs = [
        ["spec hash", repro["spec_hash"]],
        ["model id", model.get("model_id")],
        ["revision", model.get("model_revision")],
        ["model file sha256", model.get("model_file_sha256")],
        ["chat template sha256", model.get("chat_template_sha256")],
        ["chat template", repro["chat_template"].get("mode")],
        ["precision", f"{repro['precision']} (requested {repro['requested_precision']})"],
        ["git sha", repro["git_sha"]],
        ["python", repro["python"]],
        ["platform", repro["platform"]],
        ["scorer version", repro["scorer_version"]],
        ["created", repro["created_at"]],
    ]
    for worker in repro["workers"]:
        pairs.append(
            [
                "worker",
                f"{worker['backend']} / {worker['engine']} {worker['engine_version']} / "
                f"{worker['precision']} ({worker['dtype']}) / {worker['device']} "
                f"{worker['device_name']} / {worker['host']} / batch {worker['batch_size']}",
            ]
        )
    lines += [f"{level}# Reproducibility", ""] + _table(["", ""], [p for p in pairs if p[1]])
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: side by side first when there are several runs."""
    runs = report["runs"]
    if len(runs) == 1:
        return "\n".join(["# tandem report", ""] + _run_markdown(runs[0], "##")).rstrip() + "\n"
    first = runs[0]["run_id"]
    tasks = sorted({task for run in runs for task in run["scores"]})
    headers = ["task", "metric", *[run["run_id"] for run in runs]]
    headers += [f"{run['run_id']} vs {first}" for run in runs[1:]]
    rows = []
    for task in tasks:
        entry = next(run["scores"][task] for run in runs if task in run["scores"])
        metric = entry["headline"] or next(iter(entry["metrics"]), "-")
        row = [task, metric]
        for run in runs:
            value = run["scores"].get(task, {}).get("metrics", {}).get(metric)
            if value is None:
                row.append("-")
            else:
                stderr = value["stderr"]
                row.append(_f(value["value"]) + (f" ± {_f(stderr)}" if _number(stderr) else ""))
        for run in runs[1:]:
            row.append(_test_cell(report["paired_tests"][run["run_id"]].get(task)))
        rows.append(row)
    lines = ["# tandem report", "", "## Side by side", ""] + _table(headers, rows)
    lines += [
        "Paired tests are against the first run, over the samples both scored: the "
        "difference in pass rate with its 95% paired-bootstrap interval (10,000 "
        "resamples, seed 0) and McNemar's exact test on the samples that flipped.",
        "",
    ]
    for run in runs:
        lines += _run_markdown(run, "##")
    return "\n".join(lines).rstrip() + "\n"


def main(store_uri: str, run_ids: list[str], fmt: str = "md", out: TextIO | None = None) -> int:
    """``tandem report RUN... --store URI [--format md|json]``."""
    store = Store(store_uri)
    store.check(writable=False)
    report = build_report(store, run_ids)
    out = out or sys.stdout
    if fmt == "json":
        print(json.dumps(report, indent=1, ensure_ascii=False), file=out)
    else:
        print(render_markdown(report), file=out, end="")
    return 0
