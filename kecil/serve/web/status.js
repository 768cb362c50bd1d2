// "Status": the loaded models with their memory, running and queued requests and throughput (read
// from /metrics every 2 s while the tab is open), and the eval reports of `kecil serve --reports DIR`.

import { apiKey, call } from "./api.js";
import { el, withKey } from "./ui.js";

const $ = (id) => document.getElementById(id);
let timer = null;
let previous = null;  // {time, tokens: {model: n}}: throughput is the difference between two readings

/** Prometheus text as {name: [{labels, value}]}. */
export function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = Object.fromEntries([...(m[2] || "").matchAll(/(\w+)="((?:\\.|[^"\\])*)"/g)].map((l) => [l[1], l[2]]));
    (out[m[1]] ||= []).push({ labels, value: Number(m[3]) });
  }
  return out;
}

const byModel = (series) => Object.fromEntries((series || []).map((s) => [s.labels.model, s.value]));
function mib(bytes) { return bytes === undefined ? "" : `${(bytes / 2 ** 20).toFixed(0)} MiB`; }

async function refreshMetrics() {
  const metrics = parseMetrics(await withKey(() => call("/metrics")));
  const memory = byModel(metrics.kecil_model_memory_bytes);
  const running = byModel(metrics.kecil_running_sequences);
  const queued = byModel(metrics.kecil_queue_depth);
  const tokens = {};
  for (const s of metrics.kecil_completion_tokens_total || []) tokens[s.labels.model] = (tokens[s.labels.model] || 0) + s.value;
  const now = performance.now();
  const body = $("metrics-table").tBodies[0];
  body.replaceChildren();
  const models = new Set([...Object.keys(memory), ...Object.keys(tokens).filter((m) => m && m !== "other")]);
  for (const model of models) {
    const rate = previous && previous.tokens[model] !== undefined
      ? ((tokens[model] || 0) - previous.tokens[model]) / ((now - previous.time) / 1000) : null;
    const tr = el("tr");
    const held = memory[model] !== undefined ? mib(memory[model]) : /^(rag|route):/.test(model) ? "—" : "not loaded";
    for (const cell of [model, held, running[model] ?? 0, queued[model] ?? 0,
      tokens[model] ?? 0, rate === null ? "…" : rate.toFixed(1)]) tr.append(el("td", "", String(cell)));
    body.append(tr);
  }
  const ttft = metrics.kecil_time_to_first_token_seconds_sum || [];
  const counts = metrics.kecil_time_to_first_token_seconds_count || [];
  const totalCount = counts.reduce((a, s) => a + s.value, 0);
  const mean = totalCount ? (ttft.reduce((a, s) => a + s.value, 0) / totalCount) * 1000 : null;
  const loaded = metrics.kecil_models_loaded?.[0]?.value ?? 0;
  $("metrics-summary").textContent = `${loaded} model(s) loaded` + (mean === null ? "" : `; mean time to first token ${mean.toFixed(0)} ms over ${totalCount} requests`);
  previous = { time: now, tokens };
}

async function openReport(name) {
  const frame = $("report-view");
  frame.hidden = false;
  if (!apiKey()) {  // the report's own policy applies: its style and plots, no script
    frame.removeAttribute("srcdoc");
    frame.src = `/kecil/reports/${encodeURIComponent(name)}`;
  } else {  // a frame cannot send the key: fetched here and shown as text the frame may not script
    frame.srcdoc = await withKey(() => call(`/kecil/reports/${encodeURIComponent(name)}`));
  }
}

async function refreshReports() {
  const { folder, reports } = await withKey(() => call("/kecil/reports"));
  const list = $("reports");
  list.replaceChildren();
  if (!folder) list.append(el("li", "hint", "Start the server with --reports DIR to list the HTML reports of `kecil eval --html` here."));
  else if (!reports.length) list.append(el("li", "hint", "The reports folder holds no .html report yet."));
  for (const r of reports) {
    const button = el("button", "report", `${r.name} (${new Date(r.modified * 1000).toLocaleString()})`);
    button.type = "button";
    button.addEventListener("click", () => openReport(r.name));
    const li = el("li");
    li.append(button);
    list.append(li);
  }
}

export function initStatus() {
  document.addEventListener("kecil:tab", (e) => {
    clearInterval(timer);
    timer = null;
    if (e.detail !== "status") return;
    const tick = () => refreshMetrics().catch((error) => { $("metrics-summary").textContent = `Could not read /metrics: ${error.message}`; });
    tick();
    refreshReports().catch(() => {});
    timer = setInterval(tick, 2000);
  });
}
