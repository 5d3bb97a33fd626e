// Helpers every view uses: the token, the JSON API, building DOM, formatting, routes.
//
// Every value goes into the page through textContent or an attribute, never as HTML:
// model names, prompts and responses come from files anyone with store access can write.

const TOKEN_KEY = "tandem-token";

// The token comes once in the URL fragment (#token=..., or &token=... after a route),
// never reaches the server's logs, and is kept in this tab's sessionStorage.
export function takeToken() {
  const m = location.hash.match(/[#&?]token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    const rest = location.hash.replace(/[&?]?token=[^&]+/, "").replace(/^#&/, "#");
    history.replaceState(null, "", location.pathname + (rest === "#" ? "" : rest));
  }
}

export class HttpError extends Error {
  constructor(path, status, detail) {
    super(path + ": HTTP " + status + (detail ? " — " + detail : ""));
    this.status = status;
    this.detail = detail;
  }
}

export async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const r = await fetch(path, { headers: token ? { Authorization: "Bearer " + token } : {} });
  if (!r.ok) {
    let detail = "";
    try { detail = (await r.json()).detail || ""; } catch (e) { detail = ""; }
    throw new HttpError(path, r.status, typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return r.json();
}

export function q(params) {
  const parts = Object.entries(params)
    .filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => encodeURIComponent(k) + "=" + encodeURIComponent(v));
  return parts.length ? "?" + parts.join("&") : "";
}

// A route: #/<part>/<part>?k=v with every part encoded.
export function route(parts, params) {
  return "#/" + parts.map(p => encodeURIComponent(p)).join("/") + (params ? q(params) : "");
}

export function parseRoute() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query] = hash.split("?");
  const parts = path ? path.split("/").map(p => decodeURIComponent(p)) : [];
  const params = {};
  for (const [k, v] of new URLSearchParams(query || "")) params[k] = v;
  return { parts, params };
}

// el("td", {class: "num"}, "text", node, ...): attributes are set in the order given.
export function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "data") for (const [dk, dv] of Object.entries(v)) e.dataset[dk] = dv;
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

export function link(href, text, attrs) { return el("a", { href, ...(attrs || {}) }, text); }

export function fmt(v) {
  if (typeof v !== "number" || !isFinite(v)) return "-";
  return Math.abs(v) < 10 ? v.toFixed(4) : v.toFixed(2);
}
export function signed(v) { return typeof v === "number" ? (v >= 0 ? "+" : "") + v.toFixed(4) : "-"; }
export function secs(v) {
  if (typeof v !== "number") return "-";
  return v < 0.01 ? (v * 1000).toFixed(2) + " ms" : v < 100 ? v.toFixed(3) + " s" : v.toFixed(0) + " s";
}
export function bytes(v) {
  if (typeof v !== "number") return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return v.toFixed(i ? 2 : 0) + " " + units[i];
}
export function rate(v, unit) { return typeof v === "number" ? v.toFixed(1) + " " + unit : "-"; }
export function clip(text, n) {
  const s = String(text ?? "").replace(/\s+/g, " ").trim();
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}
export function verdict(v) {
  if (v === true) return el("span", { class: "pass" }, "pass");
  if (v === false) return el("span", { class: "fail" }, "fail");
  return el("span", { class: "muted" }, "—");
}

// A table: headers is a list of names (a name ending in "#" is numeric); rows are lists
// of cells (strings, numbers or nodes) or {cells, attrs}.
export function table(headers, rows, attrs) {
  const head = el("tr", null, headers.map(h => el("th", h.endsWith("#") ? { class: "num" } : null, h.replace(/#$/, ""))));
  const body = el("tbody");
  for (const row of rows) {
    const cells = Array.isArray(row) ? row : row.cells;
    const tr = el("tr", Array.isArray(row) ? null : row.attrs);
    cells.forEach((c, i) => {
      const numeric = headers[i] && headers[i].endsWith("#");
      tr.append(el("td", numeric ? { class: "num" } : null, c));
    });
    body.append(tr);
  }
  return el("table", attrs || null, el("thead", null, head), body);
}

export function kvTable(pairs, attrs) {
  return el("table", { class: "kv", ...(attrs || {}) }, el("tbody", null,
    pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
      .map(([k, v]) => el("tr", null, el("td", null, k), el("td", null, v)))));
}

export function empty(text) { return el("p", { class: "muted" }, text); }

// node.replaceChildren without the nulls of optional parts (which it would print).
export function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter(c => c !== null && c !== undefined && c !== false));
}
