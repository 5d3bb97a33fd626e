"""The results viewer in headless Chromium, view by view, on a small real store (fake
backend shards, real scorers, a profile, a sweep): each test loads a view, asserts on
the rendered DOM, checks nothing is cut off, and saves a full-page screenshot under the
test's tmp dir (``pytest --basetemp=DIR`` keeps them somewhere to look at)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _browser import CHROMIUM, Browser
from conftest import free_port, spawn, stop, wait_http, write_sweep

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)"
)
pytest.importorskip("websocket", reason="websocket-client is not installed (the dev extra)")

# The sweep's curve, written by hand into its summaries: (step, strict acc, stderr).
CURVE = [(10_000, 0.20, 0.05), (20_000, 0.35, 0.045), (30_000, 0.45, 0.04), (40_000, 0.5, 0.04)]
# MMLU's breakdowns as cpu_scorer.aggregations.mmlu_groups writes them (records per
# subject), and a plain {name: number} one.
SUBJECTS = {
    "abstract_algebra": {"acc": 0.25, "acc_stderr": 0.0435, "n": 100},
    "anatomy": {"acc": 0.5, "acc_stderr": 0.0432, "n": 135},
    "astronomy": {"acc": 0.375, "acc_stderr": 0.0394, "n": 152},
    "virology": {"acc": 0.625, "acc_stderr": 0.0377, "n": 166},
}
CATEGORIES = {"STEM": 0.31, "humanities": 0.52, "social sciences": 0.47, "other": 0.58}


def _scores(store: Path, run_id: str, task: str) -> list[dict]:
    folder = store / "runs" / run_id / "scores" / task
    return [r for p in sorted(folder.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


@pytest.fixture(scope="module")
def viewer_store(scored_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """run-a / run-b (IFEval + tinyMMLU), run-b profiled and with per-subject and
    per-category tinyMMLU breakdowns in its summary (as MMLU will have), and a sweep of
    four checkpoints whose first run's score rows carry scorer details."""
    from gpu_worker.backends.fake import FakeBackend
    from gpu_worker.profile import profile_backend
    from shared.spec import RunSpec
    from shared.store import Store

    root = tmp_path_factory.mktemp("viewer") / "store"
    shutil.copytree(scored_store, root)
    store = Store(str(root))
    # First the sweep's runs: scoring them rewrites every summary the store has.
    ids = write_sweep(root, "pretrain", [step for step, _, _ in CURVE])
    spec = RunSpec(backend="fake", tasks=("ifeval",), run_id="run-b")
    store.publish_profile(profile_backend(FakeBackend(spec), spec, "run-b", repeats=5))
    path = root / "runs/run-b/summary.json"
    summary = json.loads(path.read_text())
    summary["tasks"]["tinymmlu"]["metrics"]["by_subject"] = SUBJECTS
    summary["tasks"]["tinymmlu"]["metrics"]["acc_by_category"] = CATEGORIES
    path.write_text(json.dumps(summary))
    for run_id, (_, value, stderr) in zip(ids, CURVE, strict=True):
        path = root / "runs" / run_id / "summary.json"
        summary = json.loads(path.read_text())
        metrics = summary["tasks"]["ifeval"]["metrics"]
        metrics["prompt_level_strict_acc"], metrics["prompt_level_strict_acc_stderr"] = (
            value,
            stderr,
        )
        metrics["prompt_level_loose_acc"] = value + 0.05
        metrics["prompt_level_loose_acc_stderr"] = stderr
        path.write_text(json.dumps(summary))
    shard = sorted((root / "runs" / ids[0] / "scores/ifeval").glob("*.parquet"))[0]
    table = pq.read_table(shard)
    details = [json.dumps({"extracted_answer": f"{i * 7}", "target": "42"}) for i in range(4)]
    column = table.schema.get_field_index("details")
    pq.write_table(table.set_column(column, "details", pa.array(details, pa.string())), shard)
    return root


@pytest.fixture(scope="module")
def url(viewer_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = spawn("serve", "--store", str(viewer_store), "--port", str(port), log=log)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/healthz", proc)
    yield base
    stop(proc)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    chrome = Browser(tmp_path_factory.mktemp("chromium"), free_port())
    yield chrome
    chrome.close()


def look(browser: Browser, tmp_path: Path, name: str) -> Path:
    """Screenshot the page, and fail if anything on it is cut off or if an absent value
    was printed as "null" or "undefined" (seen once, in the run view, before fill())."""
    shot = browser.screenshot(tmp_path / f"{name}.png")
    assert browser.overflowing() == [], name
    stray = browser.eval(
        "[...document.querySelectorAll('#view *')].flatMap(e => [...e.childNodes])"
        ".filter(n => n.nodeType === 3 && ['null', 'undefined'].includes(n.textContent.trim()))"
        ".length"
    )
    assert stray == 0, name
    return shot


def _cells(browser: Browser, selector: str) -> list[list[str]]:
    return browser.eval(
        f"[...document.querySelectorAll({json.dumps(selector + ' tbody tr')})]"
        ".map(tr => [...tr.children].map(td => td.innerText.trim()))"
    )


def test_home_lists_runs_and_charts_them_without_cutting_labels(
    browser: Browser, url: str, tmp_path: Path
) -> None:
    assert browser.goto(url + "/") == "1"
    runs = browser.eval("[...document.querySelectorAll('#runs-table tr[data-run]')].length")
    assert runs == 6
    labels = browser.eval(
        "[...document.querySelectorAll('#score-chart text')].map(t => t.childNodes[0].textContent)"
    )
    assert "run-a" in labels and "pretrain-3" in labels
    legend = browser.eval(
        "[...document.querySelectorAll('ul.legend li')].map(li => li.textContent)"
    )
    assert legend == ["ifeval (prompt_level_strict_acc)", "tinymmlu (acc_norm)"]
    look(browser, tmp_path, "home")


def test_run_view(browser: Browser, url: str, viewer_store: Path, tmp_path: Path) -> None:
    assert browser.goto(url + "/#/run/run-b") == "1"
    summary = json.loads((viewer_store / "runs/run-b/summary.json").read_text())
    metrics = summary["tasks"]["ifeval"]["metrics"]
    rows = {row[1]: row for row in _cells(browser, "#task-scores")}
    strict = rows["prompt_level_strict_acc"]
    assert strict[2] == f"{metrics['prompt_level_strict_acc']:.4f}"
    assert strict[3] == f"± {metrics['prompt_level_strict_acc_stderr']:.4f}"
    assert rows["acc"][3].startswith("± ")
    rates = browser.eval(
        "[...document.querySelectorAll('#instruction-rates tr[data-instruction]')]"
        ".map(tr => tr.dataset.instruction)"
    )
    assert rates == list(metrics["by_instruction"])
    shown = _cells(browser, 'table[data-metric="by_subject"]')
    assert [r[:4] for r in shown] == [
        [k, f"{v['acc']:.4f}", f"± {v['acc_stderr']:.4f}", str(v["n"])] for k, v in SUBJECTS.items()
    ]
    shown = _cells(browser, 'table[data-metric="acc_by_category"]')
    assert [(r[0], r[1]) for r in shown] == [(k, f"{v:.4f}") for k, v in CATEGORIES.items()]
    telemetry = {row[0]: row for row in _cells(browser, "#telemetry")}
    assert set(telemetry) == {"ifeval", "tinymmlu"}
    # Peak RSS is this test process's own, so MiB or GiB depending on what ran before.
    assert telemetry["ifeval"][1] == "40"
    assert re.fullmatch(r"\d+(\.\d+)? (MiB|GiB)", telemetry["ifeval"][9]), telemetry["ifeval"]
    latency = _cells(browser, "#profile-latency")
    assert [row[0] for row in latency] == ["128", "512"]
    record = json.loads((viewer_store / "runs/run-b/run.json").read_text())
    reproducibility = browser.eval("document.querySelector('#reproducibility').innerText")
    for value in (record["spec_hash"], record["model"]["chat_template_sha256"], "fp32"):
        assert value in reproducibility
    workers = _cells(browser, "#workers")
    assert workers[0][0] == "fake" and workers[0][6] == record["workers"][0]["host"]
    look(browser, tmp_path, "run-view")


def test_samples_view_filters_on_the_server(
    browser: Browser, url: str, viewer_store: Path, tmp_path: Path
) -> None:
    scores = _scores(viewer_store, "run-b", "ifeval")
    failing = [r for r in scores if not all(r["inst_level_strict"])]
    assert browser.goto(url + "/#/samples/run-b/ifeval?failed=true") == "1"
    rows = _cells(browser, "#samples-table")
    assert [r[0] for r in rows] == [r["sample_id"] for r in failing][:25]
    assert all(r[1] == "fail" for r in rows)
    assert browser.eval("document.querySelector('#sample-count').textContent") == (
        f"1–{min(25, len(failing))} of {len(failing)} samples"
    )
    look(browser, tmp_path, "samples-failed")
    # The form: one instruction's own failures.
    name = failing[0]["instruction_id_list"][failing[0]["inst_level_strict"].index(False)]
    browser.eval(f"document.querySelector('select[name=instruction]').value = {json.dumps(name)}")
    assert browser.click("#sample-filters button") == "1"
    expected = [
        r["sample_id"]
        for r in scores
        if name in r["instruction_id_list"]
        and not r["inst_level_strict"][r["instruction_id_list"].index(name)]
    ]
    assert [r[0] for r in _cells(browser, "#samples-table")] == expected[:25]
    look(browser, tmp_path, "samples-by-instruction")


def test_an_ifeval_sample_shows_each_instructions_verdicts(
    browser: Browser, url: str, viewer_store: Path, tmp_path: Path
) -> None:
    row = next(
        r for r in _scores(viewer_store, "run-b", "ifeval") if not all(r["inst_level_strict"])
    )
    assert browser.goto(f"{url}/#/sample/run-b/ifeval/{row['sample_id']}") == "1"
    verdicts = _cells(browser, "#instruction-verdicts")
    assert [v[0] for v in verdicts] == row["instruction_id_list"]
    assert [v[1] == "pass" for v in verdicts] == row["inst_level_strict"]
    assert [v[2] == "pass" for v in verdicts] == row["inst_level_loose"]
    highlighted = browser.eval(
        "[...document.querySelectorAll('tr.failed-instruction')].map(tr => tr.dataset.instruction)"
    )
    assert highlighted == [
        i
        for i, ok in zip(row["instruction_id_list"], row["inst_level_strict"], strict=True)
        if not ok
    ]
    generation = {
        r["sample_id"]: r
        for p in sorted((viewer_store / "runs/run-b/generations/ifeval").glob("*.parquet"))
        for r in pq.read_table(p).to_pylist()
    }[row["sample_id"]]
    assert (
        browser.eval("document.querySelector('pre.response').textContent") == generation["response"]
    )
    assert browser.eval("document.querySelector('pre.prompt').textContent") == generation["prompt"]
    look(browser, tmp_path, "sample-ifeval")


def test_a_multiple_choice_sample_shows_each_choice(
    browser: Browser, url: str, viewer_store: Path, tmp_path: Path
) -> None:
    path = sorted((viewer_store / "runs/run-a/generations/tinymmlu").glob("*.parquet"))[0]
    generation = pq.read_table(path).to_pylist()[0]
    assert browser.goto(f"{url}/#/sample/run-a/tinymmlu/{generation['sample_id']}") == "1"
    choices = _cells(browser, "#choice-table")
    assert [c[0] for c in choices] == [c.strip() for c in generation["choices"]]
    assert [c[1] for c in choices] == [f"{lp:.4f}" for lp in generation["logprobs"]]
    best = max(range(len(choices)), key=lambda i: generation["logprobs"][i])
    assert [c[4] == "◀ won" for c in choices] == [i == best for i in range(len(choices))]
    assert [c[6] == "gold" for c in choices] == [i == generation["gold"] for i in range(4)]
    look(browser, tmp_path, "sample-choices")


def test_a_generative_sample_shows_the_scorers_details(
    browser: Browser, url: str, viewer_store: Path, tmp_path: Path
) -> None:
    row = _scores(viewer_store, "pretrain-0", "ifeval")[2]
    assert browser.goto(f"{url}/#/sample/pretrain-0/ifeval/{row['sample_id']}") == "1"
    details = dict(_cells(browser, "#details"))
    assert details == {"extracted_answer": "14", "target": "42"}
    look(browser, tmp_path, "sample-details")


def test_compare_view_and_a_flip_side_by_side(
    browser: Browser, url: str, viewer_store: Path, tmp_path: Path
) -> None:
    from cpu_scorer.compare import compare_runs, paired_tests
    from shared.store import Store

    store = Store(str(viewer_store))
    tests = paired_tests(store, "run-a", "run-b")["tasks"]
    assert browser.goto(url + "/#/compare?a=run-a&b=run-b") == "1"
    shown = {row[0]: row for row in _cells(browser, "#paired-tests")}
    for task, test in tests.items():
        assert shown[task][4] == f"{test['difference']:+.4f}"
        low, high = test["ci"]
        assert shown[task][5] == f"{low:+.4f} .. {high:+.4f}"
        assert float(shown[task][6]) == pytest.approx(test["mcnemar"]["p_value"], rel=5e-3)
    flips = compare_runs(store, "run-a", "run-b", "ifeval")["flips"]
    listed = browser.eval(
        "[...document.querySelectorAll('#flips tr[data-sample]')].map(tr => tr.dataset.sample)"
    )
    assert listed == [f["sample_id"] for f in flips]
    look(browser, tmp_path, "compare")
    assert browser.click("#flips a.flip-link") == "1"
    sides = browser.eval(
        "[...document.querySelectorAll('#side-by-side section')]"
        ".map(s => [s.dataset.run, s.querySelector('pre.response').textContent])"
    )
    first = flips[0]["sample_id"]
    responses = {}
    for run_id in ("run-a", "run-b"):
        for p in (viewer_store / "runs" / run_id / "generations/ifeval").glob("*.parquet"):
            for r in pq.read_table(p).to_pylist():
                if r["sample_id"] == first:
                    responses[run_id] = r["response"]
    assert sides == [["run-a", responses["run-a"]], ["run-b", responses["run-b"]]]
    look(browser, tmp_path, "compare-flip")


def test_curves_of_a_sweep_with_stderr_bands(browser: Browser, url: str, tmp_path: Path) -> None:
    assert browser.goto(url + "/#/curves?sweep=pretrain") == "1"
    line = browser.eval(
        "document.querySelector('polyline[data-metric=\"prompt_level_strict_acc\"]')"
        ".getAttribute('points')"
    )
    points = [tuple(map(float, p.split(","))) for p in line.split()]
    assert len(points) == len(CURVE)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    assert xs == sorted(xs) and ys == sorted(ys, reverse=True)  # rising: y grows downwards
    bands = browser.eval("document.querySelectorAll('polygon[data-band]').length")
    assert bands >= 2
    steps = [row[0] for row in _cells(browser, "#sweep-runs")]
    assert steps == [str(step) for step, _, _ in CURVE]
    labels = browser.eval(
        "[...document.querySelectorAll('#curves svg text')].map(t => t.textContent)"
    )
    assert {"10k", "40k", "step"} <= set(labels)
    look(browser, tmp_path, "curves")


def test_a_failing_ifeval_prompt_in_three_clicks(
    browser: Browser, url: str, viewer_store: Path, tmp_path: Path
) -> None:
    """A newcomer opens the page, clicks the run, its failed IFEval samples, and the
    first of them: the prompt, the response and the instruction that failed."""
    assert browser.goto(url + "/") == "1"
    assert browser.click('#runs-table tr[data-run="run-b"] a') == "1"  # 1
    assert browser.click('a.failed-link[data-task="ifeval"]') == "1"  # 2
    assert browser.click("#samples-table a.sample-link") == "1"  # 3
    sample_id = browser.eval("document.querySelector('#sample-title').textContent").split()[-1]
    row = next(r for r in _scores(viewer_store, "run-b", "ifeval") if r["sample_id"] == sample_id)
    assert not all(row["inst_level_strict"])
    text = browser.text()
    assert "Prompt" in text and "Response" in text
    failed = browser.eval(
        "[...document.querySelectorAll('tr.failed-instruction')].map(tr => tr.innerText)"
    )
    names = [
        i
        for i, ok in zip(row["instruction_id_list"], row["inst_level_strict"], strict=True)
        if not ok
    ]
    assert [re.split(r"\s", f)[0] for f in failed] == names
    look(browser, tmp_path, "three-clicks")


def test_static_files_are_served_with_a_strict_policy(url: str) -> None:
    import httpx

    page = httpx.get(url + "/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    for name in ("app.js", "util.js", "app.css"):
        response = httpx.get(f"{url}/static/{name}")
        assert response.status_code == 200 and response.text
    assert httpx.get(url + "/static/..%2Fstatic%2Fapp.js").status_code == 404
    assert httpx.get(url + "/static/nope.js").status_code == 404
