// The results viewer: hash routes, one module per view, plain ES modules (no build
// step, no CDN). Every view reads the JSON API; the page itself holds no data.
//
//   #/ and #/run/<id>                  runs, scores across runs, one run in full
//   #/samples/<run>/<task>?filters     a task's samples, paged and filtered on the server
//   #/sample/<run>/<task>/<id>         one sample: prompt, response, verdicts, choices
//   #/compare?a=&b=&task=              paired tests per task and the flipped samples
//   #/flip?a=&b=&task=&id=             a flipped sample's two responses side by side
//   #/curves?sweep=                    metrics against step for a sweep
import { takeToken, parseRoute } from "./util.js";
import { renderRuns } from "./runs.js";
import { renderSamples, renderSample } from "./samples.js";
import { renderCompare, renderFlip } from "./compare.js";
import { renderCurves } from "./curves.js";

const view = document.getElementById("view");
const status = document.getElementById("status");

async function show() {
  const { parts, params } = parseRoute();
  const [name, ...rest] = parts;
  document.body.dataset.ready = "";
  status.textContent = "";
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.nav === ({ compare: "compare", flip: "compare", curves: "curves" }[name] || "runs"));
  }
  try {
    if (name === "samples" && rest.length === 2) await renderSamples(view, rest[0], rest[1], params);
    else if (name === "sample" && rest.length === 3) await renderSample(view, rest[0], rest[1], rest[2], params);
    else if (name === "compare") await renderCompare(view, params);
    else if (name === "flip") await renderFlip(view, params);
    else if (name === "curves") await renderCurves(view, params);
    else await renderRuns(view, params, name === "run" ? rest[0] : null);
    document.body.dataset.view = name || "runs";
    document.body.dataset.ready = "1";
    // A run picked from the list is shown below it: bring it into view.
    const target = name === "run" && document.getElementById("run-view");
    if (target) target.scrollIntoView();
    else window.scrollTo(0, 0);
  } catch (e) {
    status.textContent = String(e.message || e);
    document.body.dataset.ready = "error";
  }
}

takeToken();
window.addEventListener("hashchange", show);
show();
