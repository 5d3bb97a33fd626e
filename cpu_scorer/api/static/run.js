// One run in full: scores with stderr, breakdowns (IFEval per instruction, any nested
// metric such as MMLU's per subject), telemetry, profile and the reproducibility record.
import { api, el, fmt, secs, bytes, rate, route, table, kvTable, empty, link, q, fill } from "./util.js";

const isNum = v => typeof v === "number" && isFinite(v);

// A nested metric as rows of (name, number): {a: 1, b: {c: 2}} -> [a, 1], [b / c, 2].
function flatten(value, prefix) {
  const rows = [];
  for (const [k, v] of Object.entries(value)) {
    const name = prefix ? prefix + " / " + k : k;
    if (isNum(v)) rows.push([name, v]);
    else if (v && typeof v === "object" && !Array.isArray(v)) rows.push(...flatten(v, name));
  }
  return rows;
}

// A nested metric whose values are all records of numbers (MMLU's by_subject: {subject:
// {acc, acc_stderr, n}}): one row per name, the first measure with its stderr and a bar,
// then the other numbers (n). Null when the shape is anything else.
function records(value) {
  const entries = Object.entries(value);
  if (!entries.length || !entries.every(([, v]) => v && typeof v === "object" && !Array.isArray(v))) return null;
  const keys = [...new Set(entries.flatMap(([, v]) => Object.keys(v)))];
  const main = keys.find(k => !k.endsWith("_stderr") && k !== "n" && entries.some(([, v]) => isNum(v[k])));
  if (!main) return null;
  const others = keys.filter(k => k !== main && k !== main + "_stderr" && entries.some(([, v]) => isNum(v[k])));
  return { main, others, rows: entries };
}

function bar(value, top) {
  const b = el("span", { class: "bar" + (value < 0.5 * top ? " low" : "") });
  b.style.width = Math.round(180 * Math.max(0, value) / (top || 1)) + "px";
  return b;
}

async function failedCounts(runId, tasks) {
  const out = {};
  await Promise.all(tasks.map(async task => {
    try {
      out[task] = (await api(`/runs/${encodeURIComponent(runId)}/samples` + q({ task, failed: "true", limit: 1 }))).total;
    } catch (e) { out[task] = null; }
  }));
  return out;
}

function scoresTable(runId, scores, failed) {
  const rows = [];
  for (const [task, entry] of Object.entries(scores.tasks)) {
    // The task's own order (headline first), then anything else it reports.
    const order = (scores.metric_order || {})[task] || [];
    const rank = (name) => (order.indexOf(name) < 0 ? order.length : order.indexOf(name));
    const metrics = Object.entries(entry.metrics || {})
      .filter(([k, v]) => isNum(v) && !k.endsWith("_stderr"))
      .sort(([a], [b]) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
    const links = el("span", null,
      link(route(["samples", runId, task]), "samples"),
      failed[task] ? [" · ", link(route(["samples", runId, task], { failed: "true" }), "failed (" + failed[task] + ")", { class: "failed-link", data: { task } })] : null);
    if (!metrics.length) rows.push([task, "(no scores yet)", "", "", entry.samples_scored, links]);
    metrics.forEach(([name, value], i) => {
      const stderr = (entry.metrics || {})[name + "_stderr"];
      rows.push([i ? "" : task, name, fmt(value), isNum(stderr) ? "± " + fmt(stderr) : "", i ? "" : entry.samples_scored, i ? "" : links]);
    });
  }
  return table(["task", "metric", "value#", "stderr#", "n#", "samples"], rows, { id: "task-scores" });
}

function breakdownTable(task, name, value) {
  const shape = records(value);
  if (shape) {
    const { main, others } = shape;
    const top = Math.max(1, ...shape.rows.map(([, v]) => isNum(v[main]) ? v[main] : 0));
    const count = v => isNum(v) && Number.isInteger(v) ? String(v) : fmt(v);
    return table(["name", main + "#", "stderr#", ...others.map(k => k + "#"), ""], shape.rows.map(([k, v]) => ({
      attrs: { data: { breakdown: k } },
      cells: [k, fmt(v[main]), isNum(v[main + "_stderr"]) ? "± " + fmt(v[main + "_stderr"]) : "",
        ...others.map(o => count(v[o])), isNum(v[main]) ? bar(v[main], top) : ""],
    })), { class: "breakdown", data: { task, metric: name } });
  }
  const rows = flatten(value, "");
  if (!rows.length) return null;
  const top = Math.max(1, ...rows.map(([, v]) => v));
  return table(["name", "value#", ""], rows.map(([k, v]) => ({ attrs: { data: { breakdown: k } }, cells: [k, fmt(v), bar(v, top)] })),
    { class: "breakdown", data: { task, metric: name } });
}

// Every nested metric of every task as a table; IFEval's per-instruction pass rates link
// to the samples that failed each instruction.
function breakdowns(runId, scores) {
  const parts = [];
  for (const [task, entry] of Object.entries(scores.tasks)) {
    for (const [name, value] of Object.entries(entry.metrics || {})) {
      if (!value || typeof value !== "object" || Array.isArray(value)) continue;
      if (name === "by_instruction") {
        const rows = flatten(value, "");
        const top = Math.max(1, ...rows.map(([, v]) => v));
        parts.push(el("h2", null, "IFEval pass rate by instruction type"),
          table(["instruction", "strict pass rate#", "", ""], rows.map(([id, v]) => ({
            attrs: { data: { instruction: id } },
            cells: [id, fmt(v), bar(v, top),
              link(route(["samples", runId, task], { instruction: id, failed: "true" }), "failing samples")],
          })), { id: "instruction-rates" }));
        continue;
      }
      const shown = breakdownTable(task, name, value);
      if (shown) parts.push(el("h2", null, task + " · " + name), shown);
    }
  }
  if (!parts.some(p => p.id === "instruction-rates")) {
    parts.push(el("h2", null, "IFEval pass rate by instruction type"),
      table(["instruction", "strict pass rate#", ""], [[el("span", { class: "muted" }, "(no IFEval scores in this run)"), "", ""]], { id: "instruction-rates" }));
  }
  return parts;
}

function telemetryTable(telemetry) {
  const rows = Object.entries(telemetry || {}).map(([task, t]) => [
    task, t.samples_generated ?? "-", secs(t.model_seconds),
    t.tokens_per_second ? rate(t.tokens_per_second, "tok/s") : t.samples_per_second ? rate(t.samples_per_second, "smp/s") : "-",
    secs(t.prefill_seconds), secs(t.decode_seconds), rate(t.decode_tokens_per_second, "tok/s"),
    t.batches ?? "-", isNum(t.batch_size_mean) ? t.batch_size_mean.toFixed(1) + " / " + t.batch_size_max : "-",
    bytes(t.peak_rss_bytes), bytes(t.cuda_max_allocated_bytes)]);
  if (!rows.length) return empty("no telemetry yet (nothing scored)");
  return table(["task", "samples#", "model time#", "throughput#", "prefill#", "decode#", "decode rate#",
    "batches#", "batch mean / max#", "peak RSS#", "peak CUDA#"], rows, { id: "telemetry" });
}

function profileSection(profile) {
  if (!profile) return [empty("not profiled: run `tandem profile SPEC --store ...` to measure latency and throughput")];
  const t = profile.throughput;
  return [
    table(["prompt tokens#", "new tokens#", "repeats#", "mean#", "p50#", "p95#"],
      profile.latency.map(l => [l.measured_prompt_tokens, l.new_tokens, l.repeats, secs(l.mean_seconds), secs(l.p50_seconds), secs(l.p95_seconds)]),
      { id: "profile-latency" }),
    kvTable([
      ["throughput", t ? `${rate(t.tokens_per_second, "tokens/s")} (${t.requests} requests of ${t.prompt_tokens} + ${t.new_tokens} tokens, batch ${t.batch_size})` : null],
      ["peak RSS", bytes(profile.peak_rss_bytes)],
      ["peak CUDA", profile.cuda_max_allocated_bytes ? bytes(profile.cuda_max_allocated_bytes) : null],
      ["measured on", `${profile.worker.backend} ${profile.worker.precision} on ${profile.worker.device} (${profile.worker.device_name || "?"}), ${profile.worker.host}`],
      ["warm-up", profile.warmup + " requests"],
      ["when", (profile.created_at || "").slice(0, 19)],
    ], { id: "profile-summary" }),
  ];
}

function reproducibility(run) {
  const env = run.environment || {};
  const model = run.model || {};
  const workers = (run.resolved && run.resolved.workers) || run.workers || [];
  const packages = Object.entries(env.packages || {}).sort();
  return [
    kvTable([
      ["model", run.spec.model], ["model id", model.model_id], ["revision", model.model_revision],
      ["adapter", run.spec.adapter], ["model file sha256", model.model_file_sha256],
      ["chat template sha256", model.chat_template_sha256],
      ["chat template", `${(run.chat || {}).mode} (${(run.chat || {}).has_template ? "model has one" : "model has none"})`],
      ["precision", `${(run.resolved || {}).precision || "?"} (requested ${run.spec.precision})`],
      ["backend", run.spec.backend], ["spec hash", run.spec_hash], ["git sha", env.git_sha],
      ["python", env.python], ["platform", env.platform], ["driver host", env.host],
      ["created", run.created_at],
    ], { id: "reproducibility" }),
    workers.length ? table(["backend", "engine", "precision", "dtype", "device", "device name", "host", "batch size", "threads#"],
      workers.map(w => [w.backend, (w.engine || "") + " " + (w.engine_version || ""), w.precision, w.dtype, w.device, w.device_name, w.host, w.batch_size, w.threads ?? "-"]),
      { id: "workers" }) : empty("no worker recorded (an older run.json)"),
    packages.length ? el("details", null, el("summary", null, packages.length + " package versions"),
      table(["package", "version"], packages)) : null,
    el("details", null, el("summary", null, "spec"), el("pre", { class: "text" }, JSON.stringify(run.spec, null, 2))),
  ];
}

export async function renderRun(box, runId) {
  const enc = encodeURIComponent(runId);
  const [run, scores] = await Promise.all([api("/runs/" + enc), api("/runs/" + enc + "/scores")]);
  const failed = await failedCounts(runId, Object.keys(scores.tasks));
  const notes = Object.entries(scores.tasks).flatMap(([task, e]) => (e.notes || []).map(n => el("li", null, task + ": " + n)));
  fill(box, 
    el("h2", null, "Per-task scores ", el("span", { id: "selected-run", class: "muted" }, "(" + runId + ")")),
    el("div", { class: "cards" },
      el("div", null, "model", el("b", null, run.spec.model || "?")),
      el("div", null, "precision", el("b", null, (run.resolved || {}).precision || "?")),
      el("div", null, "backend", el("b", null, run.spec.backend || "?")),
      el("div", null, "scores", el("b", null, scores.source)),
      link(route(["compare"], { b: runId }), "compare with another run")),
    scoresTable(runId, scores, failed),
    notes.length ? el("ul", { class: "muted" }, notes) : null,
    ...breakdowns(runId, scores),
    el("h2", null, "Telemetry"), telemetryTable(run.telemetry),
    el("h2", null, "Profile"), ...profileSection(run.profile),
    el("h2", null, "Reproducibility"), ...reproducibility(run));
}
