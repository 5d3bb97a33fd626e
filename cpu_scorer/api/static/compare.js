// Two runs (#/compare?a=&b=&task=): per task the difference with its 95% paired-bootstrap
// interval and McNemar's test, the flipped samples of one task, and each flip's two
// responses side by side (#/flip?a=&b=&task=&id=).
import { api, el, fmt, signed, route, table, empty, link, clip, q, HttpError, fill } from "./util.js";
import { allRuns } from "./runs.js";
import { sampleParts, showPromptEnds } from "./samples.js";

function picker(runs, params) {
  const select = (name, value) => el("select", { name, id: "pick-" + name },
    el("option", { value: "" }, "choose a run"),
    runs.map(r => el("option", { value: r.run_id, selected: r.run_id === value }, r.run_id + (r.model ? "  (" + r.model + ")" : ""))));
  const a = select("a", params.a), b = select("b", params.b);
  const form = el("form", { class: "filters" }, el("label", null, "run A (before)", a), el("label", null, "run B (after)", b),
    el("button", { type: "submit" }, "compare"));
  form.addEventListener("submit", e => {
    e.preventDefault();
    location.hash = route(["compare"], { a: a.value, b: b.value });
  });
  return form;
}

function testsTable(a, b, tests, current) {
  const rows = Object.entries(tests.tasks).map(([task, t]) => {
    const flips = link(route(["compare"], { a, b, task }), task === current ? "flips shown below" : "show flips");
    if (t.error) return { attrs: { data: { task } }, cells: [task, t.metric || "-", "", "", "", el("span", { class: "muted" }, t.error), "", "", "", ""] };
    const significant = t.mcnemar.p_value < 0.05 && (t.ci[0] > 0 || t.ci[1] < 0);
    return {
      attrs: { data: { task }, class: task === current ? "selected" : null },
      cells: [task, t.metric, fmt(t.a), fmt(t.b), el("b", { class: significant ? (t.difference > 0 ? "pass" : "fail") : null }, signed(t.difference)),
        `${signed(t.ci[0])} .. ${signed(t.ci[1])}`, t.mcnemar.p_value.toPrecision(3), t.mcnemar.fixed, t.mcnemar.broken, flips],
    };
  });
  return table(["task", "metric", "A#", "B#", "B − A#", "95% CI (paired bootstrap)#", "McNemar p#", "fixed#", "broken#", ""], rows, { id: "paired-tests" });
}

function flipsTable(result) {
  const rows = result.flips.map(f => ({
    attrs: { data: { sample: f.sample_id, direction: f.direction } },
    cells: [el("span", { class: f.direction === "fixed" ? "pass" : "fail" }, f.direction === "fixed" ? "fixed (fail → pass)" : "broken (pass → fail)"),
      link(route(["flip"], { a: result.a, b: result.b, task: result.task, id: f.sample_id }), f.sample_id, { class: "flip-link" }),
      el("span", { title: f.prompt || "" }, clip(f.prompt, 90)),
      f.instructions_changed ? el("span", null, f.instructions_changed.map(c => el("span", { class: "tag " + (c.b ? "pass" : "fail") }, c.id + (c.b ? " ✓" : " ✗")))) : ""],
  }));
  return rows.length ? table(["direction", "sample", "prompt", "instructions that changed"], rows, { id: "flips" }) : empty("no sample flipped");
}

export async function renderCompare(view, params) {
  const runs = await allRuns();
  const form = picker(runs, params);
  if (!params.a || !params.b) {
    fill(view, el("h2", null, "Compare two runs"), form, empty("pick two runs that evaluated the same samples"));
    return;
  }
  const { a, b } = params;
  const tests = await api("/compare/tests" + q({ a, b }));
  const tasks = Object.keys(tests.tasks);
  const task = params.task || (tasks.includes("ifeval") ? "ifeval" : tasks.find(t => !tests.tasks[t].error) || tasks[0]);
  const parts = [el("h2", null, "Compare two runs"), form,
    el("h2", null, "Paired tests, ", el("span", { id: "compare-runs" }, a + " → " + b)),
    tasks.length ? testsTable(a, b, tests, task) : empty("the two runs share no task"),
    el("p", { class: "muted" }, "B − A is the difference in pass rate over the same samples; the interval resamples those samples (10,000 times, seeded); McNemar's exact test asks whether the fixed and broken counts could be a coin toss.")];
  if (task) {
    try {
      const result = await api("/compare" + q({ a, b, task }));
      parts.push(el("h2", null, `Flipped samples of ${task}: ${result.counts.fixed} fixed, ${result.counts.broken} broken`),
        el("p", { class: "muted" }, `${result.counts.both_pass} pass in both, ${result.counts.both_fail} fail in both`),
        flipsTable(result));
    } catch (e) {
      if (!(e instanceof HttpError) || e.status !== 409) throw e;
      parts.push(el("h2", null, "Flipped samples of " + task), el("p", { class: "fail" }, e.detail));
    }
  }
  fill(view, ...parts);
}

export async function renderFlip(view, params) {
  const { a, b, task, id } = params;
  const get = run => api(`/runs/${encodeURIComponent(run)}/sample` + q({ task, id }));
  const [left, right] = await Promise.all([get(a), get(b)]);
  fill(view, 
    el("div", { class: "breadcrumbs" }, link(route(["compare"], { a, b, task }), "compare " + a + " → " + b), " › ", task + " sample " + id),
    el("h2", { id: "flip-title" }, task + " sample " + id + ": " + (left.passed ? "pass" : "fail") + " → " + (right.passed ? "pass" : "fail")),
    el("h3", null, "Prompt"), el("pre", { class: "text prompt" }, left.prompt || ""),
    el("div", { class: "side", id: "side-by-side" },
      el("section", { data: { run: a } }, el("h3", null, "A: ", link(route(["sample", a, task, id]), a)), ...sampleParts(left, { noPrompt: true })),
      el("section", { data: { run: b } }, el("h3", null, "B: ", link(route(["sample", b, task, id]), b)), ...sampleParts(right, { noPrompt: true }))));
  showPromptEnds(view);
}
