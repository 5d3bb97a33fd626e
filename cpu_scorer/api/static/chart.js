// SVG line charts with optional bands (stderr), axis labels that fit, and the legend in
// HTML below the plot so it wraps instead of being cut off.
import { el } from "./util.js";

const NS = "http://www.w3.org/2000/svg";
export const COLORS = ["#4a7bd0", "#d0694a", "#3a9a5b", "#9a4ad0", "#c0a020", "#20a0c0",
  "#c04080", "#707070"];
const CHAR = 6.6; // px per character of an 11px label, for sizing margins

function svgEl(tag, attrs) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function niceTicks(lo, hi, count) {
  if (hi === lo) return [lo];
  const step0 = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= step0) || step0;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toFixed(10));
  return out;
}

// series: [{name, points: [{x, y, lo, hi, title}], data: {...}}]
// options: {id, categories (x labels for x = 0..n-1), xTitle, yFormat, xFormat, zero, width, height}
export function lineChart(series, options) {
  const o = { width: 720, height: 260, yFormat: v => String(v), xFormat: v => String(v), ...options };
  const all = series.flatMap(s => s.points);
  const ys = all.flatMap(p => [p.y, p.lo, p.hi]).filter(v => typeof v === "number" && isFinite(v));
  let lo = Math.min(...ys), hi = Math.max(...ys);
  if (o.zero) { lo = Math.min(0, lo); hi = Math.max(o.zero === "unit" ? 1 : hi, hi); }
  if (lo === hi) { lo -= 0.5; hi += 0.5; }
  const pad = (hi - lo) * 0.06;
  if (!o.zero) { lo -= pad; hi += pad; }
  const yTicks = niceTicks(lo, hi, 4);
  const categories = o.categories;
  const xs = categories ? categories.map((_, i) => i) : all.map(p => p.x);
  let xlo = Math.min(...xs), xhi = Math.max(...xs);
  const left = 14 + CHAR * Math.max(...yTicks.map(v => o.yFormat(v).length));
  const labels = categories ? categories.map(c => String(c).length > 26 ? String(c).slice(0, 25) + "…" : String(c)) : null;
  // Rotated category labels need room below the axis: their length times sin(35°).
  const bottom = labels ? 16 + CHAR * Math.max(...labels.map(l => l.length)) * 0.58 : 40;
  const W = o.width, H = o.height + bottom, T = 10, R = 24;
  const plotW = W - left - R, plotH = o.height - T;
  const x = v => left + (xhi === xlo ? plotW / 2 : (v - xlo) / (xhi - xlo) * plotW);
  const y = v => T + (1 - (v - lo) / (hi - lo)) * plotH;
  const svg = svgEl("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
  if (o.id) svg.setAttribute("id", o.id);
  const line = (x1, y1, x2, y2, stroke) => svg.append(svgEl("line", { x1, y1, x2, y2, stroke: stroke || "#999" }));
  const text = (s, tx, ty, anchor, rotate) => {
    const t = svgEl("text", { x: tx, y: ty, "text-anchor": anchor || "start" });
    if (rotate) t.setAttribute("transform", `rotate(${rotate} ${tx} ${ty})`);
    t.textContent = s;
    svg.append(t);
    return t;
  };
  for (const v of yTicks) {
    line(left, y(v), W - R, y(v), "#eee");
    text(o.yFormat(v), left - 6, y(v) + 4, "end");
  }
  line(left, T, left, T + plotH);
  line(left, T + plotH, W - R, T + plotH);
  if (labels) {
    labels.forEach((l, i) => {
      const t = text(l, x(i) + 4, T + plotH + 14, "end", -35);
      const tip = svgEl("title"); tip.textContent = String(categories[i]); t.append(tip);
    });
  } else {
    const distinct = [...new Set(xs)].sort((a, b) => a - b);
    const ticks = distinct.length <= 8 ? distinct : niceTicks(xlo, xhi, 6);
    for (const v of ticks) { line(x(v), T + plotH, x(v), T + plotH + 4); text(o.xFormat(v), x(v), T + plotH + 16, "middle"); }
    if (o.xTitle) text(o.xTitle, left + plotW / 2, T + plotH + 34, "middle");
  }
  series.forEach((s, k) => {
    const color = s.color || COLORS[k % COLORS.length];
    const pts = s.points.filter(p => typeof p.y === "number").map(p => ({ ...p, px: categories ? p.x : p.x }));
    const band = pts.filter(p => typeof p.lo === "number" && typeof p.hi === "number");
    if (band.length > 1) {
      const outline = band.map(p => x(p.px) + "," + y(p.hi)).concat(band.slice().reverse().map(p => x(p.px) + "," + y(p.lo)));
      svg.append(svgEl("polygon", { points: outline.join(" "), fill: color, "fill-opacity": "0.15", stroke: "none", "data-band": s.name }));
    } else if (band.length === 1) {
      const p = band[0];
      svg.append(svgEl("line", { x1: x(p.px), y1: y(p.lo), x2: x(p.px), y2: y(p.hi), stroke: color, "stroke-opacity": "0.5", "stroke-width": 6 }));
    }
    const poly = svgEl("polyline", { points: pts.map(p => x(p.px) + "," + y(p.y)).join(" "), fill: "none", stroke: color, "stroke-width": 2 });
    for (const [k2, v] of Object.entries(s.data || {})) poly.setAttribute("data-" + k2, v);
    svg.append(poly);
    for (const p of pts) {
      const c = svgEl("circle", { cx: x(p.px), cy: y(p.y), r: 3.5, fill: color });
      const tip = svgEl("title"); tip.textContent = p.title || (s.name + " " + o.yFormat(p.y)); c.append(tip);
      svg.append(c);
    }
  });
  const legend = el("ul", { class: "legend" }, series.map((s, k) => {
    const li = el("li", null, s.name);
    li.style.setProperty("--swatch", s.color || COLORS[k % COLORS.length]);
    return li;
  }));
  return el("figure", { class: "chart" }, o.caption ? el("figcaption", null, o.caption) : null, svg, legend);
}
