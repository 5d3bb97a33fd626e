// The runs view (#/ and #/run/<id>): every run, a chart of headline scores across runs,
// and the selected run in full below (run.js).
import { api, el, fmt, route, empty, fill } from "./util.js";
import { lineChart } from "./chart.js";
import { renderRun } from "./run.js";

let cache = null; // the run list, loaded once per page view

async function loadRuns() {
  if (cache) return cache;
  const all = [];
  for (let offset = 0; ; offset += 500) {
    const page = await api("/runs?limit=500&offset=" + offset);
    all.push(...page.runs);
    if (all.length >= page.total || page.runs.length === 0) break;
  }
  all.sort((a, b) => (a.created_at || "").localeCompare(b.created_at || "") || a.run_id.localeCompare(b.run_id));
  cache = all;
  return all;
}

export async function allRuns() { return loadRuns(); }

function visible(runs, filter) {
  const f = filter.toLowerCase();
  return runs.filter(r => !f || (r.model || "").toLowerCase().includes(f) || r.run_id.toLowerCase().includes(f));
}

function runsTable(runs, selected) {
  const body = el("tbody");
  for (const run of runs) {
    const scores = Object.entries(run.scores || {}).map(([t, s]) => t + " " + fmt(s.value)).join(", ");
    const tr = el("tr", { class: "run" + (run.run_id === selected ? " selected" : ""), data: { run: run.run_id } },
      el("td", null, el("a", { href: route(["run", run.run_id]) }, run.run_id)),
      el("td", null, run.model), el("td", null, run.precision),
      el("td", null, (run.created_at || "").slice(0, 19)),
      el("td", null, run.sweep ? run.sweep + (run.step !== null && run.step !== undefined ? " @ " + run.step : "") : ""),
      el("td", null, run.error ? "(damaged: " + run.error + ")" : scores || "(not scored yet)"));
    tr.addEventListener("click", e => { if (e.target.tagName !== "A") location.hash = route(["run", run.run_id]); });
    body.append(tr);
  }
  return el("table", { id: "runs-table" },
    el("thead", null, el("tr", null, ["run", "model", "precision", "created", "sweep", "scores"].map(h => el("th", null, h)))),
    body);
}

function scoresChart(runs) {
  const tasks = [...new Set(runs.flatMap(r => Object.keys(r.scores || {})))].sort();
  if (!runs.length || !tasks.length) return empty("no scores yet");
  const series = tasks.map(task => {
    const points = runs.map((r, i) => [i, (r.scores || {})[task]])
      .filter(([, s]) => s && typeof s.value === "number")
      .map(([i, s]) => ({ x: i, y: s.value, title: runs[i].run_id + " " + task + " " + s.metric + " " + fmt(s.value) }));
    const metric = points.length ? runs[points[0].x].scores[task].metric : "";
    return { name: task + " (" + metric + ")", points, data: { task } };
  });
  return lineChart(series, { id: "score-chart", categories: runs.map(r => r.run_id), yFormat: fmt, zero: "unit", height: 240 });
}

export async function renderRuns(view, params, selectedId) {
  const runs = await loadRuns();
  const filter = el("input", { id: "filter", placeholder: "substring of model or run id", value: params.filter || "" });
  const tableBox = el("div"), chartBox = el("div");
  const draw = () => {
    const shown = visible(runs, filter.value);
    fill(tableBox, runsTable(shown, selectedId));
    fill(chartBox, scoresChart(shown));
  };
  filter.addEventListener("input", draw);
  const runBox = el("div", { id: "run-view" });
  fill(view, 
    el("label", null, "model filter ", filter),
    el("h2", null, "Runs"), tableBox,
    el("h2", null, "Scores across runs"), chartBox,
    runBox);
  if (!runs.length) { runBox.append(empty("no runs in this store yet")); return; }
  let selected = selectedId;
  if (!selected) {
    const withIfeval = [...runs].reverse().find(r => r.scores && r.scores.ifeval);
    selected = (withIfeval || runs[runs.length - 1]).run_id;
  }
  selectedId = selected;
  draw();
  await renderRun(runBox, selected);
}
