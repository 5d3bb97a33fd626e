// Metrics against step for a sweep (#/curves?sweep=): runs whose specs share a `sweep`,
// placed by their `step`, one chart per task with a ±1 stderr band per metric.
import { api, el, fmt, route, empty, table, link, q, fill } from "./util.js";
import { lineChart } from "./chart.js";

function stepLabel(v) {
  if (Math.abs(v) >= 1e6) return +(v / 1e6).toFixed(2) + "M";
  if (Math.abs(v) >= 1e3) return +(v / 1e3).toFixed(1) + "k";
  return String(v);
}

function taskChart(task, points) {
  const withStep = points.filter(p => p.step !== null && p.tasks[task]);
  const names = [...new Set(withStep.flatMap(p => Object.keys(p.tasks[task].metrics)))];
  const headline = (withStep.find(p => p.tasks[task].headline) || { tasks: { [task]: {} } }).tasks[task].headline;
  // Metrics with a stderr are per-sample means on one scale; the headline always shows.
  const shown = names.filter(n => n === headline || withStep.some(p => n in p.tasks[task].stderr));
  if (!shown.length) return null;
  const series = shown.sort((x, y) => (y === headline) - (x === headline) || x.localeCompare(y)).map(name => ({
    name: name + (name === headline ? " (headline)" : ""),
    data: { task, metric: name },
    points: withStep.filter(p => typeof p.tasks[task].metrics[name] === "number").map(p => {
      const v = p.tasks[task].metrics[name], se = p.tasks[task].stderr[name];
      return { x: p.step, y: v, lo: typeof se === "number" ? v - se : undefined, hi: typeof se === "number" ? v + se : undefined,
        title: `${p.run_id} @ ${p.step}: ${name} ${fmt(v)}` + (typeof se === "number" ? " ± " + fmt(se) : "") };
    }),
  }));
  return lineChart(series, { caption: task, xTitle: "step", xFormat: stepLabel, yFormat: fmt, height: 240 });
}

export async function renderCurves(view, params) {
  const { sweeps } = await api("/sweeps");
  const select = el("select", { id: "pick-sweep" }, el("option", { value: "" }, "choose a sweep"),
    sweeps.map(s => el("option", { value: s.sweep, selected: s.sweep === params.sweep }, `${s.sweep} (${s.steps} steps)`)));
  select.addEventListener("change", () => { location.hash = route(["curves"], { sweep: select.value }); });
  const head = [el("h2", null, "Curves"), el("label", null, "sweep ", select)];
  if (!sweeps.length) {
    fill(view, ...head, empty("no sweeps: runs join one by carrying `sweep` and `step` in their spec"));
    return;
  }
  const name = params.sweep || sweeps[0].sweep;
  select.value = name;
  const { points } = await api("/sweeps/" + encodeURIComponent(name) + q({}));
  const tasks = [...new Set(points.flatMap(p => Object.keys(p.tasks)))].sort();
  const charts = tasks.map(t => taskChart(t, points)).filter(Boolean);
  const rows = points.map(p => [p.step ?? "(no step)", link(route(["run", p.run_id]), p.run_id),
    tasks.map(t => { const e = p.tasks[t]; return e && e.headline && typeof e.metrics[e.headline] === "number" ? t + " " + fmt(e.metrics[e.headline]) : ""; }).filter(Boolean).join(", ")]);
  fill(view, ...head,
    el("p", { class: "muted" }, "bands: ± one standard error of the mean over samples"),
    el("div", { id: "curves" }, charts.length ? charts : empty("no run of this sweep has a step and scores yet")),
    el("h3", null, "Runs of " + name), table(["step", "run", "headline scores"], rows, { id: "sweep-runs" }));
}
