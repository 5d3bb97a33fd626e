// A task's samples, paged and filtered on the server (#/samples/<run>/<task>?failed=&
// instruction=&q=&offset=), and one sample in full (#/sample/<run>/<task>/<id>).
import { api, el, fmt, route, table, kvTable, empty, link, clip, verdict, q, fill } from "./util.js";

const PAGE = 25;

function failedInstructions(row) {
  if (!row.instructions) return null;
  const failing = row.instructions.filter(i => i.strict === false);
  if (!failing.length) return el("span", { class: "muted" }, row.instructions.length + " passed");
  return el("span", null, failing.map(i => el("span", { class: "tag fail" }, i.id)));
}

function outcome(row) {
  if (row.instructions) return failedInstructions(row);
  if (row.choices && row.choices.length) {
    const pick = row.prediction, gold = row.gold;
    const name = i => (i === null || i === undefined) ? "-" : (row.choices[i] || "").trim() || String(i);
    return "picked " + name(pick) + ", gold " + name(gold);
  }
  if (row.details && typeof row.details === "object") return clip(Object.entries(row.details).map(([k, v]) => k + ": " + JSON.stringify(v)).join(", "), 80);
  return row.metrics ? clip(Object.entries(row.metrics).map(([k, v]) => k + " " + fmt(v)).join(", "), 80) : "";
}

function filterForm(runId, task, params, instructionIds) {
  const status = el("select", { name: "failed" },
    [["", "all"], ["true", "failed"], ["false", "passed"]].map(([v, t]) => el("option", { value: v, selected: (params.failed || "") === v }, t)));
  const instruction = instructionIds.length ? el("select", { name: "instruction" },
    el("option", { value: "" }, "any instruction"),
    instructionIds.map(id => el("option", { value: id, selected: params.instruction === id }, id))) : null;
  const text = el("input", { name: "q", value: params.q || "", placeholder: "text in prompt or response, or a sample id", size: 34 });
  const form = el("form", { class: "filters", id: "sample-filters" },
    el("label", null, "status", status),
    instruction ? el("label", null, "instruction" + (params.instruction ? " (its own verdict)" : ""), instruction) : null,
    el("label", null, "search", text),
    el("button", { type: "submit" }, "filter"));
  form.addEventListener("submit", e => {
    e.preventDefault();
    location.hash = route(["samples", runId, task], { failed: status.value, instruction: instruction ? instruction.value : "", q: text.value.trim() });
  });
  return form;
}

export async function renderSamples(view, runId, task, params) {
  const offset = Math.max(0, parseInt(params.offset || "0", 10) || 0);
  const filters = { task, failed: params.failed, instruction: params.instruction, q: params.q };
  const enc = encodeURIComponent(runId);
  const [page, scores] = await Promise.all([
    api(`/runs/${enc}/samples` + q({ ...filters, offset, limit: PAGE })),
    api(`/runs/${enc}/scores`),
  ]);
  const byInstruction = ((scores.tasks[task] || {}).metrics || {}).by_instruction;
  const keep = { failed: params.failed, instruction: params.instruction, q: params.q };
  const rows = page.rows.map((row, i) => ({
    attrs: { data: { sample: row.sample_id } },
    cells: [
      link(route(["sample", runId, task, row.sample_id], { ...keep, at: offset + i }), row.sample_id, { class: "sample-link" }),
      verdict(row.passed),
      el("span", { title: row.prompt || "" }, clip(row.prompt || row.text, 90)),
      el("span", { title: row.response || "" }, clip(row.response, 70)),
      outcome(row),
    ],
  }));
  const from = page.total ? offset + 1 : 0, to = offset + page.rows.length;
  const pager = el("div", { class: "pager" },
    offset > 0 ? link(route(["samples", runId, task], { ...keep, offset: Math.max(0, offset - PAGE) }), "← previous") : null,
    el("span", { id: "sample-count" }, `${from}–${to} of ${page.total} samples`),
    to < page.total ? link(route(["samples", runId, task], { ...keep, offset: offset + PAGE }), "next →", { class: "next-page" }) : null);
  fill(view, 
    el("div", { class: "breadcrumbs" }, link(route(["run", runId]), runId), " › ", task),
    el("h2", null, "Samples of " + task),
    filterForm(runId, task, params, byInstruction ? Object.keys(byInstruction) : []),
    pager,
    page.rows.length ? table(["sample", "verdict", "prompt", "response", task === "ifeval" || byInstruction ? "failed instructions" : "outcome"], rows, { id: "samples-table" })
      : empty("no sample matches these filters"));
}

function instructionsTable(sample) {
  return table(["instruction", "strict", "loose", "arguments"], sample.instructions.map(i => ({
    attrs: { class: i.strict === false ? "failed-instruction" : null, data: { instruction: i.id } },
    cells: [i.id, verdict(i.strict), verdict(i.loose), el("code", null, i.kwargs ? JSON.stringify(Object.fromEntries(Object.entries(i.kwargs).filter(([, v]) => v !== null))) : "")],
  })), { id: "instruction-verdicts" });
}

function choicesTable(sample) {
  return table(["choice", "log-likelihood#", "tokens#", "greedy", "won (acc)", "won (acc_norm)", "gold"], sample.choices.map(c => ({
    attrs: { class: c.won ? "selected" : null, data: { choice: c.index } },
    cells: [c.text, fmt(c.logprob), c.tokens ?? "-", c.is_greedy ? "yes" : "", c.won ? "◀ won" : "", c.won_norm ? "◀ won" : "", c.gold ? el("span", { class: "pass" }, "gold") : ""],
  })), { id: "choice-table" });
}

function detailsTable(details) {
  if (details === null || details === undefined) return null;
  if (typeof details !== "object" || Array.isArray(details)) return el("pre", { class: "text", id: "details" }, JSON.stringify(details, null, 2));
  return kvTable(Object.entries(details).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]), { id: "details" });
}

// The parts of one sample's view; compare.js shows two of them side by side.
export function sampleParts(sample, opts) {
  const o = opts || {};
  const parts = [
    el("div", { class: "cards" },
      el("div", null, "verdict", el("b", null, verdict(sample.passed))),
      sample.finish_reason ? el("div", null, "finish", el("b", null, sample.finish_reason)) : null,
      sample.prompt_tokens ? el("div", null, "prompt tokens", el("b", null, sample.prompt_tokens)) : null,
      sample.generated_tokens !== null && sample.generated_tokens !== undefined ? el("div", null, "generated tokens", el("b", null, sample.generated_tokens)) : null,
      sample.truncated_tokens ? el("div", null, "cut from prompt", el("b", null, sample.truncated_tokens)) : null),
    sample.error ? el("p", { class: "fail" }, "error: " + sample.error) : null,
  ];
  if (sample.instructions) parts.push(el("h3", null, "Instructions"), instructionsTable(sample));
  if (sample.choices) parts.push(el("h3", null, "Choices"), choicesTable(sample));
  if (sample.details !== null && sample.details !== undefined) parts.push(el("h3", null, "What the scorer saw"), detailsTable(sample.details));
  if (sample.response !== null && sample.response !== undefined) parts.push(el("h3", null, "Response"), el("pre", { class: "text response" }, sample.response || "(empty)"));
  if (!o.noPrompt) {
    parts.push(el("h3", null, "Prompt"), el("pre", { class: "text prompt" }, sample.prompt || ""));
    if (sample.rendered_prompt && sample.rendered_prompt !== sample.prompt) {
      parts.push(el("details", null, el("summary", null, "as the model saw it (template applied)"), el("pre", { class: "text" }, sample.rendered_prompt)));
    }
  }
  if (sample.metrics) parts.push(el("h3", null, "Metrics"), kvTable(Object.entries(sample.metrics).map(([k, v]) => [k, fmt(v)])));
  return parts;
}

// A few-shot prompt ends with the question asked: show its end, not its first example.
export function showPromptEnds(view) {
  for (const pre of view.querySelectorAll("pre.prompt")) pre.scrollTop = pre.scrollHeight;
}

export async function renderSample(view, runId, task, sampleId, params) {
  const sample = await api(`/runs/${encodeURIComponent(runId)}/sample` + q({ task, id: sampleId }));
  const keep = { failed: params.failed, instruction: params.instruction, q: params.q };
  const at = parseInt(params.at || "", 10);
  const nav = el("span");
  if (!isNaN(at)) {
    // Neighbours within the same filtered list: one small page request.
    const around = await api(`/runs/${encodeURIComponent(runId)}/samples` + q({ task, ...keep, offset: Math.max(0, at - 1), limit: 3 }));
    const ids = around.rows.map(r => r.sample_id);
    const me = ids.indexOf(sampleId);
    const prev = me > 0 ? ids[me - 1] : null, next = me >= 0 && me + 1 < ids.length ? ids[me + 1] : null;
    if (prev) nav.append(link(route(["sample", runId, task, prev], { ...keep, at: at - 1 }), "← previous"), " ");
    if (next) nav.append(link(route(["sample", runId, task, next], { ...keep, at: at + 1 }), "next →", { class: "next-sample" }));
  }
  fill(view, 
    el("div", { class: "breadcrumbs" }, link(route(["run", runId]), runId), " › ",
      link(route(["samples", runId, task], keep), task + " samples"), " › ", sampleId, "  ", nav),
    el("h2", { id: "sample-title" }, task + " sample " + sampleId),
    ...sampleParts(sample));
  showPromptEnds(view);
}
