# ruff: noqa: E501 - the page is HTML and JavaScript, kept readable rather than wrapped
"""The results page served at ``/``: one self-contained HTML file, no build step.

It holds no data: its script reads the JSON API (so it works the same behind a token:
open ``/#token=...`` once and the token is kept in sessionStorage, out of server logs).
Every value goes into the page through ``textContent``, never as HTML, because model
names, prompts and run metadata come from files anyone with store access can write.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tandem results</title>
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
 h1 { font-size: 1.4em; margin: 0 0 .5em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
 table { border-collapse: collapse; } td, th { padding: 2px 8px; text-align: left; }
 th { border-bottom: 1px solid #999; } tr.run { cursor: pointer; } tr.selected { background: #e8f0fe; }
 td.num { text-align: right; font-variant-numeric: tabular-nums; }
 .bar { background: #4a7bd0; height: 10px; display: inline-block; }
 #status { color: #a00; } .muted { color: #777; }
 svg text { font-size: 11px; }
</style>
</head>
<body>
<h1>tandem results</h1>
<p id="status"></p>
<label>model filter <input id="filter" placeholder="substring of model or run id"></label>
<h2>Runs</h2>
<table id="runs-table"><thead><tr><th>run</th><th>model</th><th>precision</th><th>created</th>
<th>scores</th></tr></thead><tbody></tbody></table>
<h2>Scores across runs</h2>
<div id="chart"></div>
<h2>Per-task scores <span id="selected-run" class="muted"></span></h2>
<table id="task-scores"><thead><tr><th>task</th><th>metric</th><th>value</th><th>n</th>
</tr></thead><tbody></tbody></table>
<h2>IFEval pass rate by instruction type</h2>
<table id="instruction-rates"><thead><tr><th>instruction</th><th>strict pass rate</th><th></th>
</tr></thead><tbody></tbody></table>
<script>
"use strict";
const token = (() => {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("tandem-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("tandem-token");
})();
async function api(path) {
  const r = await fetch(path, {headers: token ? {Authorization: "Bearer " + token} : {}});
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function fmt(v) { return typeof v === "number" ? (Math.abs(v) < 10 ? v.toFixed(4) : v.toFixed(2)) : "-"; }
let runs = [];
let selected = null;

async function loadRuns() {
  const all = [];
  for (let offset = 0; ; offset += 500) {
    const page = await api("/runs?limit=500&offset=" + offset);
    all.push(...page.runs);
    if (all.length >= page.total || page.runs.length === 0) break;
  }
  return all;
}
function visibleRuns() {
  const f = document.getElementById("filter").value.toLowerCase();
  return runs.filter(r => !f || (r.model || "").toLowerCase().includes(f) || r.run_id.toLowerCase().includes(f));
}
function renderRuns() {
  const body = document.querySelector("#runs-table tbody");
  body.replaceChildren();
  for (const run of visibleRuns()) {
    const tr = el("tr", null, "run" + (run.run_id === selected ? " selected" : ""));
    tr.dataset.run = run.run_id;
    tr.append(el("td", run.run_id), el("td", run.model), el("td", run.precision), el("td", (run.created_at || "").slice(0, 19)));
    const scores = Object.entries(run.scores || {}).map(([t, s]) => t + " " + fmt(s.value)).join(", ");
    tr.append(el("td", scores || "(not scored yet)"));
    tr.addEventListener("click", () => select(run.run_id));
    body.append(tr);
  }
}
function renderChart() {
  const shown = visibleRuns();
  const box = document.getElementById("chart");
  box.replaceChildren();
  const tasks = [...new Set(shown.flatMap(r => Object.keys(r.scores || {})))].sort();
  if (!shown.length || !tasks.length) { box.append(el("p", "no scores yet", "muted")); return; }
  const W = 640, H = 260, L = 50, B = 60, T = 10, R = 150;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("id", "score-chart");
  const values = shown.flatMap(r => Object.values(r.scores || {}).map(s => s.value)).filter(v => typeof v === "number");
  const top = Math.max(1, ...values);
  const x = i => L + (shown.length === 1 ? (W - L - R) / 2 : i * (W - L - R) / (shown.length - 1));
  const y = v => T + (1 - v / top) * (H - T - B);
  const line = (x1, y1, x2, y2) => { const l = document.createElementNS(ns, "line");
    Object.entries({x1, y1, x2, y2, stroke: "#999"}).forEach(([k, v]) => l.setAttribute(k, v)); svg.append(l); };
  const text = (s, tx, ty, anchor, rotate) => { const t = document.createElementNS(ns, "text"); t.textContent = s;
    t.setAttribute("x", tx); t.setAttribute("y", ty); t.setAttribute("text-anchor", anchor || "start");
    if (rotate) t.setAttribute("transform", "rotate(" + rotate + " " + tx + " " + ty + ")"); svg.append(t); };
  line(L, T, L, H - B); line(L, H - B, W - R, H - B);
  for (const v of [0, top / 2, top]) text(fmt(v), L - 4, y(v) + 4, "end");
  shown.forEach((r, i) => text(r.run_id.slice(0, 24), x(i), H - B + 12, "end", -35));
  const colors = ["#4a7bd0", "#d0694a", "#3a9a5b", "#9a4ad0", "#c0a020", "#20a0c0"];
  tasks.forEach((task, k) => {
    const color = colors[k % colors.length];
    const pts = shown.map((r, i) => [i, (r.scores || {})[task]]).filter(([, s]) => s && typeof s.value === "number");
    const pl = document.createElementNS(ns, "polyline");
    pl.setAttribute("points", pts.map(([i, s]) => x(i) + "," + y(s.value)).join(" "));
    pl.setAttribute("fill", "none"); pl.setAttribute("stroke", color); pl.setAttribute("data-task", task);
    svg.append(pl);
    for (const [i, s] of pts) { const c = document.createElementNS(ns, "circle");
      c.setAttribute("cx", x(i)); c.setAttribute("cy", y(s.value)); c.setAttribute("r", 3); c.setAttribute("fill", color);
      const tip = document.createElementNS(ns, "title"); tip.textContent = shown[i].run_id + " " + task + " " + s.metric + " " + fmt(s.value);
      c.append(tip); svg.append(c); }
    const metric = pts.length ? pts[0][1].metric : "";
    text(task + " (" + metric + ")", W - R + 10, T + 14 + 16 * k);
    line(W - R - 2, T + 10 + 16 * k, W - R + 6, T + 10 + 16 * k);
  });
  box.append(svg);
}
async function select(runId) {
  selected = runId;
  renderRuns();
  document.getElementById("selected-run").textContent = "(" + runId + ")";
  const scores = await api("/runs/" + encodeURIComponent(runId) + "/scores");
  const body = document.querySelector("#task-scores tbody");
  body.replaceChildren();
  let byInstruction = null;
  for (const [task, entry] of Object.entries(scores.tasks)) {
    const metrics = Object.entries(entry.metrics || {}).filter(([k, v]) => typeof v === "number" && !k.endsWith("_stderr"));
    if (!metrics.length) { const tr = el("tr"); tr.append(el("td", task), el("td", "(no scores yet)"), el("td"), el("td", entry.samples_scored)); body.append(tr); }
    metrics.forEach(([name, value], i) => {
      const tr = el("tr");
      tr.append(el("td", i ? "" : task), el("td", name), el("td", fmt(value), "num"), el("td", i ? "" : entry.samples_scored, "num"));
      body.append(tr);
    });
    if (entry.metrics && entry.metrics.by_instruction) byInstruction = entry.metrics.by_instruction;
  }
  const rates = document.querySelector("#instruction-rates tbody");
  rates.replaceChildren();
  if (!byInstruction) { const tr = el("tr"); tr.append(el("td", "(no IFEval scores in this run)", "muted")); rates.append(tr); return; }
  for (const [name, rate] of Object.entries(byInstruction)) {
    const tr = el("tr"); tr.dataset.instruction = name;
    const bar = el("span", null, "bar"); bar.style.width = Math.round(200 * (rate || 0)) + "px";
    const cell = el("td"); cell.append(bar);
    tr.append(el("td", name), el("td", fmt(rate), "num"), cell);
    rates.append(tr);
  }
}
async function main() {
  try {
    runs = (await loadRuns()).sort((a, b) => (a.created_at || "").localeCompare(b.created_at || "") || a.run_id.localeCompare(b.run_id));
    document.getElementById("filter").addEventListener("input", () => { renderRuns(); renderChart(); });
    renderRuns(); renderChart();
    if (runs.length) {
      const withIfeval = [...runs].reverse().find(r => r.scores && r.scores.ifeval);
      await select((withIfeval || runs[runs.length - 1]).run_id);
    } else {
      document.getElementById("status").textContent = "no runs in this store yet";
    }
    document.body.dataset.ready = "1";
  } catch (e) {
    document.getElementById("status").textContent = String(e);
    document.body.dataset.ready = "error";
  }
}
main();
</script>
</body>
</html>
"""
