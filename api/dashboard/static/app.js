// The lambdahat dashboard: a hash-routed single-page app over the /v1 API.
// Security: the API key lives in sessionStorage (or localStorage when "remember" is ticked) and is
// sent as a Bearer token; every string from the server is inserted with textContent, never as HTML.

import { LineChart, formatNumber } from "./chart.js";
import { verdictsForJob, verdictWord } from "./verdicts.js";

const KEY_NAME = "lambdahat.apiKey";
const POLL_MS = 2000;
const app = document.getElementById("app");
let pageTimers = [];
let pageCharts = [];

// ---------------------------------------------------------------- small DOM helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const jobLink = (id) => el("a", { href: `#/jobs/${encodeURIComponent(id)}`, class: "mono" }, id.slice(0, 12));
const badge = (text, kind) => el("span", { class: `badge ${kind || text}` }, text);
const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const fmtSeconds = (s) => (s === null || s === undefined ? "–" : s < 120 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`);

function progressBar(fraction) {
  const pct = Math.round(Math.max(0, Math.min(1, fraction || 0)) * 100);
  return el("span", { class: "progress-cell" },
    el("span", { class: "progress", title: `${pct}%` }, el("span", { style: `width:${pct}%` })), ` ${pct}%`);
}

function errorBox(message) { return el("div", { class: "error-box", role: "alert", "data-testid": "error" }, message); }

// ---------------------------------------------------------------- API access

export function getKey() { return sessionStorage.getItem(KEY_NAME) || localStorage.getItem(KEY_NAME); }
function setKey(key, remember) {
  sessionStorage.setItem(KEY_NAME, key);
  if (remember) localStorage.setItem(KEY_NAME, key); else localStorage.removeItem(KEY_NAME);
}
function clearKey() { sessionStorage.removeItem(KEY_NAME); localStorage.removeItem(KEY_NAME); }

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// The server's message: {"detail": "..."} or FastAPI's validation list [{loc, msg}, ...].
function messageFrom(status, body) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("\n");
  }
  return `HTTP ${status}`;
}

async function api(path, { method = "GET", json, form, key = getKey(), headers = {} } = {}) {
  const init = { method, headers: { Authorization: `Bearer ${key}`, ...headers } };
  if (json !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(json); }
  if (form !== undefined) init.body = form;
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, `cannot reach the server: ${err.message}`);
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!response.ok) {
    if (response.status === 401 && key === getKey() && path !== "/v1/jobs?limit=1") {
      clearKey();
      location.hash = "#/login";
    }
    throw new ApiError(response.status, body ? messageFrom(response.status, body) : (text || `HTTP ${response.status}`));
  }
  return body;
}

// ---------------------------------------------------------------- routing

function clearPage() {
  for (const t of pageTimers) clearTimeout(t);
  pageTimers = [];
  for (const c of pageCharts) c.destroy();
  pageCharts = [];
}

// Poll `fn` every POLL_MS until it returns false; stops when the page changes.
function poll(fn) {
  const generation = routeGeneration;
  const tick = async () => {
    if (generation !== routeGeneration) return;
    let again = true;
    try { again = await fn(); } catch (err) { again = !(err instanceof ApiError && err.status === 401); }
    if (again && generation === routeGeneration) pageTimers.push(setTimeout(tick, POLL_MS));
  };
  return tick();
}

let routeGeneration = 0;
const routes = [
  [/^#\/login$/, pageLogin],
  [/^#\/jobs$/, pageJobs],
  [/^#\/jobs\/([0-9a-zA-Z]+)$/, pageJob],
  [/^#\/batches$/, pageBatches],
  [/^#\/batches\/([0-9a-zA-Z]+)$/, pageBatch],
  [/^#\/new$/, pageNew],
];

async function route() {
  routeGeneration += 1;
  clearPage();
  const hash = location.hash || "#/jobs";
  const loggedIn = Boolean(getKey());
  document.getElementById("nav").hidden = !loggedIn;
  if (!loggedIn && hash !== "#/login") { location.hash = "#/login"; return; }
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", hash.startsWith(`#/${a.dataset.nav}`));
  }
  for (const [pattern, page] of routes) {
    const match = hash.match(pattern);
    if (match) {
      app.replaceChildren();
      try { await page(...match.slice(1)); } catch (err) { app.append(errorBox(err.message)); }
      return;
    }
  }
  location.hash = "#/jobs";
}

// ---------------------------------------------------------------- login

function pageLogin() {
  const input = el("input", { type: "password", id: "api-key", name: "api-key", autocomplete: "off",
    placeholder: "lh_…", required: true });
  const remember = el("input", { type: "checkbox", id: "remember" });
  const message = el("div");
  const form = el("form", { class: "stack", id: "login-form" },
    el("label", {}, "API key", input),
    el("label", { style: "display:flex;gap:.4rem;align-items:center" }, remember,
      "Remember on this computer (otherwise forgotten when the tab closes)"),
    el("button", { class: "primary", type: "submit" }, "Log in"),
    message);
  form.addEventListener("submit", async (evt) => {
    evt.preventDefault();
    message.replaceChildren();
    const key = input.value.trim();
    try {
      await api("/v1/jobs?limit=1", { key });  // checks the key; 401 carries the server's reason
    } catch (err) {
      message.append(errorBox(err.message));
      return;
    }
    setKey(key, remember.checked);
    location.hash = "#/jobs";
  });
  app.append(el("div", { class: "panel login" },
    el("h1", {}, "Log in"),
    el("p", { class: "muted" }, "Use a lambdahat API key. On a laptop, the local key is in ",
      el("code", {}, "~/.local/share/lambdahat/api_key"), "; otherwise ask for one (",
      el("code", {}, "lambdahat keys create"), ")."),
    form));
  input.focus();
}

// ---------------------------------------------------------------- jobs list

async function pageJobs() {
  const filter = el("select", { id: "status-filter" },
    ["", "queued", "running", "succeeded", "failed", "cancelled"].map((s) => el("option", { value: s }, s || "all")));
  const tbody = el("tbody");
  const message = el("div");
  const updated = el("span", { class: "muted", id: "jobs-updated" });
  let limit = 100;
  const more = el("button", { class: "secondary", type: "button", id: "jobs-more", hidden: true }, "Show older jobs");
  app.append(el("div", { class: "panel" },
    el("div", { class: "toolbar" }, el("h1", { style: "margin:0" }, "Jobs"), el("label", {}, "Status ", filter),
      el("a", { href: "#/new" }, "Submit a job"), updated),
    message,
    el("table", { id: "jobs-table" },
      el("thead", {}, el("tr", {},
        el("th", {}, "Job"), el("th", {}, "Status"), el("th", {}, "Progress"), el("th", { class: "num" }, "λ̂ ± std"),
        el("th", {}, "Verdict"), el("th", {}, "Loss"), el("th", {}, "Created"), el("th", { class: "num" }, "Duration"))),
      tbody),
    more));
  const load = async () => {
    const query = filter.value ? `&status=${encodeURIComponent(filter.value)}` : "";
    let page;
    try {
      page = await api(`/v1/jobs?limit=${limit}${query}`);
      message.replaceChildren();
    } catch (err) {
      message.replaceChildren(errorBox(err.message));
      throw err;
    }
    tbody.replaceChildren(...page.items.map((job) => {
      const r = job.result;
      const word = verdictWord(job);
      return el("tr", { dataset: { jobId: job.id, status: job.status } },
        el("td", {}, jobLink(job.id)),
        el("td", {}, badge(job.status), job.cancel_requested && job.status === "running" ? " (cancelling)" : ""),
        el("td", {}, progressBar(job.status === "succeeded" ? 1 : job.progress)),
        el("td", { class: "num" }, r && r.llc_mean !== null ? `${formatNumber(r.llc_mean)} ± ${formatNumber(r.llc_std)}` : "–"),
        el("td", {}, word ? badge(word, word === "healthy" ? "healthy" : word === "warning" ? "warning" : "error") : ""),
        el("td", {}, job.loss),
        el("td", {}, fmtTime(job.timings.created_at)),
        el("td", { class: "num" }, fmtSeconds(job.timings.duration_s)));
    }));
    if (page.items.length === 0) tbody.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No jobs yet.")));
    more.hidden = !page.next_cursor || limit >= 500;  // beyond 500: lambdahat jobs --limit N
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    return true;  // keep polling: new jobs and status changes show up live
  };
  filter.addEventListener("change", () => load().catch(() => {}));
  more.addEventListener("click", () => { limit = Math.min(500, limit + 100); load().catch(() => {}); });
  await poll(load);
}

// ---------------------------------------------------------------- one job

async function pageJob(jobId) {
  const header = el("div", { class: "panel" });
  const verdictPanel = el("div", { class: "panel", id: "verdicts" });
  const tracePanel = el("div", { class: "panel", id: "traces" }, el("h2", {}, "Traces"),
    el("p", { class: "muted" }, "Traces appear when the job has succeeded."));
  app.append(header, verdictPanel, tracePanel);
  let tracesShown = false;

  const refresh = async () => {
    const job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
    renderJobHeader(header, job);
    renderVerdicts(verdictPanel, job);
    if (job.status === "succeeded" && job.has_traces && !tracesShown) {
      tracesShown = true;
      const traces = await api(`/v1/jobs/${encodeURIComponent(jobId)}/traces`);
      renderTraces(tracePanel, job, traces);
    } else if (["failed", "cancelled"].includes(job.status)) {
      tracePanel.replaceChildren(el("h2", {}, "Traces"), el("p", { class: "muted" }, `No traces: the job ${job.status}.`));
    }
    return job.status === "queued" || job.status === "running";
  };
  await poll(refresh);
}

function renderJobHeader(panel, job) {
  const r = job.result;
  const rc = job.resolved_config || {};
  const kv = (k, v) => [el("dt", {}, k), el("dd", {}, v)];
  const cancel = ["queued", "running"].includes(job.status) && !job.cancel_requested
    ? el("button", { class: "secondary", type: "button", id: "cancel-job", onclick: async (evt) => {
      evt.target.disabled = true;
      try { await api(`/v1/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" }); } catch (err) {
        panel.append(errorBox(err.message));
      }
    } }, "Cancel job")
    : null;
  panel.replaceChildren(
    el("div", { class: "toolbar" }, el("h1", { style: "margin:0" }, "Job ", el("span", { class: "mono" }, job.id)),
      el("span", { id: "job-status" }, badge(job.status)), cancel),
    el("div", { class: "grid2" },
      el("dl", { class: "kv" },
        kv("Progress", progressBar(job.status === "succeeded" ? 1 : job.progress)),
        kv("Draws done", String(job.draws_done)),
        kv("λ̂ (mean ± std over chains)", el("strong", { id: "llc-value" },
          r && r.llc_mean !== null ? `${formatNumber(r.llc_mean)} ± ${formatNumber(r.llc_std)}` : "–")),
        kv("L_n(w*)", r ? formatNumber(r.init_loss) : "–"),
        kv("nβ", r ? formatNumber(r.nbeta) : "–"),
        kv("n", r && r.n !== null ? String(r.n) : "–"),
        kv("λ̂ per chain", r ? r.llc_per_chain.map(formatNumber).join(", ") : "–")),
      el("dl", { class: "kv" },
        kv("Checkpoint", el("span", { class: "mono" }, job.checkpoint_id)),
        kv("Dataset", el("span", { class: "mono" }, job.dataset_id)),
        kv("Loss", job.loss),
        kv("Config (submitted)", el("code", {}, JSON.stringify(job.config))),
        kv("Chains / draws", `${rc.num_chains ?? job.config.num_chains ?? "–"} / ${rc.num_draws ?? job.config.num_draws ?? "–"}`),
        kv("ε, γ", `${formatNumber(rc.epsilon)} , ${formatNumber(rc.gamma)}`),
        kv("Worker, attempts", `${job.worker || "–"}, ${job.attempts}`),
        kv("Created", fmtTime(job.timings.created_at)),
        kv("Duration", fmtSeconds(job.timings.duration_s)))));
  if (job.error) panel.append(errorBox(job.error));
  if (r && r.diagnostics && Object.keys(r.diagnostics).length) {
    const diag = el("details", {}, el("summary", {}, "Diagnostics (raw)"),
      el("dl", { class: "kv" }, Object.entries(r.diagnostics).flatMap(([k, v]) =>
        kv(k, typeof v === "number" ? formatNumber(v) : JSON.stringify(v)))));
    panel.append(diag);
  }
}

function renderVerdicts(panel, job) {
  const v = verdictsForJob(job);
  panel.replaceChildren(el("h2", {}, "Verdict"),
    el("div", { class: `verdict ${v.overall}`, id: "verdict", dataset: { verdict: v.overall } },
      el("div", { class: "title" }, v.headline)),
    ...v.items.map((item) => el("div", { class: `verdict ${item.level}`, dataset: { code: item.code } },
      el("div", { class: "title" }, item.title, item.chain !== null && item.chain !== undefined ? ` (chain ${item.chain})` : ""),
      el("div", {}, item.message),
      el("div", { class: "try" }, el("strong", {}, "What to try: "), item.tryThis))));
}

function renderTraces(panel, job, traces) {
  const chains = traces.loss.length;
  const xs = Array.from({ length: traces.num_draws }, (_, i) => i);
  const lossBox = el("div", { id: "loss-chart" });
  const llcBox = el("div", { id: "llc-chart" });
  const csv = el("a", { href: "#", onclick: async (evt) => {
    evt.preventDefault();
    const response = await fetch(`/v1/jobs/${encodeURIComponent(job.id)}/traces?format=csv`,
      { headers: { Authorization: `Bearer ${getKey()}` } });
    const url = URL.createObjectURL(await response.blob());
    const a = el("a", { href: url, download: `${job.id}-traces.csv` });
    a.click();
    URL.revokeObjectURL(url);
  } }, "download CSV");
  panel.replaceChildren(el("h2", {}, "Traces"),
    el("p", { class: "muted" }, `${chains} chains × ${traces.num_draws} draws. `, csv),
    el("h3", {}, "Loss per draw"), lossBox,
    el("h3", {}, "Running λ̂ estimate per chain"), llcBox);
  const series = (key) => Array.from({ length: chains }, (_, c) => ({ name: `chain ${c}`, xs, ys: traces[key][c] }));
  pageCharts.push(new LineChart(lossBox, { testId: "loss-chart", xLabel: "draw", yLabel: "L_n(w)",
    series: series("loss"), hlines: [{ y: traces.init_loss, label: "L_n(w*)" }] }));
  const llcMean = job.result && job.result.llc_mean;
  pageCharts.push(new LineChart(llcBox, { testId: "llc-chart", xLabel: "draw", yLabel: "λ̂",
    series: series("llc"), hlines: Number.isFinite(llcMean) ? [{ y: llcMean, label: "final λ̂ (mean of chains)", color: "#6b7280" }] : [] }));
}

// ---------------------------------------------------------------- batches

const batchLabel = (b) => b.collection || `batch ${b.id.slice(0, 8)}`;
const FINISHED = ["succeeded", "failed", "cancelled"];

async function pageBatches() {
  const message = el("div");
  const tbody = el("tbody");
  app.append(el("div", { class: "panel" },
    el("div", { class: "toolbar" }, el("h1", { style: "margin:0" }, "Batches"), el("a", { href: "#/new" }, "Submit a batch")),
    message,
    el("table", { id: "batches-table" },
      el("thead", {}, el("tr", {}, el("th", {}, "Batch"), el("th", {}, "Collection"), el("th", {}, "Status"),
        el("th", {}, "Progress"), el("th", {}, "Jobs"), el("th", {}, "Loss"), el("th", {}, "Created"))), tbody)));
  await poll(async () => {
    let page;
    try { page = await api("/v1/batches?limit=100"); message.replaceChildren(); } catch (err) {
      message.replaceChildren(errorBox(err.message));
      throw err;
    }
    tbody.replaceChildren(...page.items.map((b) => el("tr", { dataset: { batchId: b.id, status: b.status } },
      el("td", {}, el("a", { href: `#/batches/${encodeURIComponent(b.id)}`, class: "mono" }, b.id.slice(0, 12))),
      el("td", {}, b.collection || el("span", { class: "muted" }, "(checkpoint list)")),
      el("td", {}, badge(b.status)),
      el("td", {}, progressBar(b.progress)),
      el("td", {}, `${b.total}: ` + Object.entries(b.counts).filter(([, n]) => n).map(([s, n]) => `${n} ${s}`).join(", ")
        + (b.reused ? ` (${b.reused} reused)` : "")),
      el("td", {}, b.loss),
      el("td", {}, fmtTime(b.created_at)))));
    if (page.items.length === 0) tbody.append(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No batches yet.")));
    return true;
  });
}

async function pageBatch(batchId) {
  const header = el("div", { class: "panel" });
  const chartBox = el("div", { id: "batch-chart" });
  const overlayList = el("div", { class: "legend", id: "overlay-choices" });
  const plotPanel = el("div", { class: "panel" }, el("h2", {}, "λ̂ against training step"),
    el("p", { class: "muted" }, "Error bars: ± the standard deviation of λ̂ across chains. Tick other batches to overlay their collections."),
    chartBox, el("h3", {}, "Overlay other batches"), overlayList);
  const tablePanel = el("div", { class: "panel" });
  app.append(header, plotPanel, tablePanel);
  const overlays = new Map();  // batch id -> {batch, rows} of the ticked other batches
  let own = null;
  const redraw = () => renderBatchChart(chartBox, [own, ...overlays.values()].filter(Boolean));

  api("/v1/batches?limit=100").then((page) => {
    const others = page.items.filter((b) => b.id !== batchId);
    if (others.length === 0) overlayList.append(el("span", { class: "muted" }, "No other batches."));
    for (const b of others) {
      const box = el("input", { type: "checkbox", dataset: { overlay: b.id } });
      box.addEventListener("change", async () => {
        if (!box.checked) { overlays.delete(b.id); redraw(); return; }
        try {
          overlays.set(b.id, { batch: b, rows: await api(`/v1/batches/${encodeURIComponent(b.id)}/results`) });
          redraw();
        } catch (err) { overlayList.append(errorBox(err.message)); }
      });
      overlayList.append(el("label", {}, box, `${batchLabel(b)} (${b.id.slice(0, 8)}, ${b.status})`));
    }
  }).catch((err) => overlayList.append(errorBox(err.message)));

  let lastKey = "";
  await poll(async () => {
    const [batch, rows] = await Promise.all([api(`/v1/batches/${encodeURIComponent(batchId)}`),
      api(`/v1/batches/${encodeURIComponent(batchId)}/results`)]);
    const cancel = FINISHED.includes(batch.status) ? null : el("button", { class: "secondary", type: "button",
      id: "cancel-batch", onclick: async (evt) => {
        evt.target.disabled = true;
        try { await api(`/v1/batches/${encodeURIComponent(batchId)}/cancel`, { method: "POST" }); } catch (err) {
          header.append(errorBox(err.message));
        }
      } }, "Cancel batch");
    header.replaceChildren(
      el("div", { class: "toolbar" }, el("h1", { style: "margin:0" }, "Batch ", el("span", { class: "mono" }, batch.id)),
        el("span", { id: "batch-status" }, badge(batch.status)), cancel),
      el("dl", { class: "kv" },
        el("dt", {}, "Collection"), el("dd", {}, batch.collection || "(checkpoint list)"),
        el("dt", {}, "Progress"), el("dd", {}, progressBar(batch.progress)),
        el("dt", {}, "Jobs"), el("dd", {}, `${batch.total}: ${Object.entries(batch.counts).filter(([, n]) => n).map(([s, n]) => `${n} ${s}`).join(", ")}`
          + (batch.reused ? `; ${batch.reused} answered from identical earlier work` : "")),
        el("dt", {}, "Loss, config"), el("dd", {}, `${batch.loss}, `, el("code", {}, JSON.stringify(batch.config))),
        el("dt", {}, "Created"), el("dd", {}, fmtTime(batch.created_at))));
    renderBatchTable(tablePanel, rows);
    own = { batch, rows };
    const key = JSON.stringify(rows.map((r) => [r.job_id, r.status, r.llc_mean]));
    if (key !== lastKey) { lastKey = key; redraw(); }
    return !FINISHED.includes(batch.status);
  });
}

function renderBatchTable(panel, rows) {
  panel.replaceChildren(el("h2", {}, "Results"), el("table", { id: "batch-results" },
    el("thead", {}, el("tr", {}, el("th", { class: "num" }, "Step"), el("th", {}, "Checkpoint"), el("th", {}, "Job"),
      el("th", {}, "Status"), el("th", { class: "num" }, "λ̂ ± std"), el("th", {}, "Warnings"))),
    el("tbody", {}, rows.map((r) => el("tr", {},
      el("td", { class: "num" }, r.step ?? "–"), el("td", {}, r.name || r.checkpoint_id.slice(0, 12)),
      el("td", {}, jobLink(r.job_id), r.reused_from ? el("span", { class: "muted" }, " (reused)") : ""),
      el("td", {}, badge(r.status)),
      el("td", { class: "num" }, Number.isFinite(r.llc_mean) ? `${formatNumber(r.llc_mean)} ± ${formatNumber(r.llc_std)}` : "–"),
      el("td", {}, r.error ? r.error : (r.warnings || []).map((w) => w.code).join(", ") || (r.status === "succeeded" ? "none" : "")))))));
}

// One series per batch (named by its collection), points at the checkpoints' training steps.
function renderBatchChart(box, sets) {
  for (const c of pageCharts) c.destroy();
  pageCharts = [];
  const series = [];
  for (const { batch, rows } of sets) {
    const points = rows.filter((r) => Number.isFinite(r.llc_mean) && Number.isFinite(r.step)).sort((a, b) => a.step - b.step);
    if (points.length) {
      series.push({ name: `${batchLabel(batch)} (${batch.id.slice(0, 6)})`, xs: points.map((r) => r.step),
        ys: points.map((r) => r.llc_mean), errs: points.map((r) => r.llc_std ?? NaN) });
    }
  }
  if (series.length === 0) {
    box.replaceChildren(el("p", { class: "muted" }, "No finished results with a training step yet."));
    return;
  }
  pageCharts.push(new LineChart(box, { testId: "batch-chart", xLabel: "training step", yLabel: "λ̂", series, markers: true }));
}

// ---------------------------------------------------------------- uploads and submit

async function pageNew() {
  const dsMessage = el("div"), ckMessage = el("div"), jobMessage = el("div");
  const checkpointSelect = el("select", { id: "job-checkpoint", name: "checkpoint_id", required: true });
  const datasetSelect = el("select", { id: "job-dataset", name: "dataset_id", required: true });
  const batchDatasetSelect = el("select", { id: "batch-dataset", name: "dataset_id", required: true });
  const collectionSelect = el("select", { id: "batch-collection", name: "collection", required: true });
  const batchMessage = el("div");

  const refreshChoices = async () => {
    const [cks, dss] = await Promise.all([api("/v1/checkpoints?limit=500"), api("/v1/datasets?limit=500")]);
    checkpointSelect.replaceChildren(...cks.items.map((c) => el("option", { value: c.id },
      `${c.name}${c.collection ? ` · ${c.collection}` : ""}${c.step !== null ? ` · step ${c.step}` : ""} (${c.id.slice(0, 8)})`)));
    const datasetOptions = () => dss.items.map((d) => el("option", { value: d.id }, `${d.name} · n=${d.n} (${d.id.slice(0, 8)})`));
    datasetSelect.replaceChildren(...datasetOptions());
    batchDatasetSelect.replaceChildren(...datasetOptions());
    const collections = [...new Set(cks.items.map((c) => c.collection).filter(Boolean))];
    collectionSelect.replaceChildren(...collections.map((c) => el("option", { value: c }, c)));
  };

  const dsForm = el("form", { class: "stack", id: "dataset-form" },
    el("label", {}, "Dataset file (safetensors or npz with tensors x and y)", el("input", { type: "file", name: "file", required: true })),
    el("label", {}, "Name (optional)", el("input", { type: "text", name: "name" })),
    el("button", { class: "primary", type: "submit" }, "Upload dataset"), dsMessage);
  const ckForm = el("form", { class: "stack", id: "checkpoint-form" },
    el("label", {}, "Checkpoint file (safetensors, .pt state_dict, or .pt2)", el("input", { type: "file", name: "file", required: true })),
    el("label", {}, "Architecture JSON (not for .pt2)", el("textarea", { name: "architecture",
      placeholder: '{"kind": "mlp", "in_features": 4, "hidden": [8], "out_features": 3}' })),
    el("label", {}, "Collection (optional)", el("input", { type: "text", name: "collection" })),
    el("label", {}, "Training step (optional)", el("input", { type: "number", name: "step", min: 0 })),
    el("label", {}, "Name (optional)", el("input", { type: "text", name: "name" })),
    el("button", { class: "primary", type: "submit" }, "Upload checkpoint"), ckMessage);
  const configArea = el("textarea", { id: "job-config", name: "config", placeholder: '{"num_chains": 4, "seed": 0}' });
  const jobForm = el("form", { class: "stack", id: "job-form" },
    el("label", {}, "Checkpoint", checkpointSelect),
    el("label", {}, "Dataset", datasetSelect),
    el("label", {}, "Loss", el("select", { id: "job-loss", name: "loss" },
      ["cross_entropy", "mse", "nll", "bce_with_logits"].map((l) => el("option", { value: l }, l)))),
    el("label", {}, "Config JSON (any LLCConfig field; empty for the defaults)", configArea),
    el("button", { class: "primary", type: "submit" }, "Submit job"), jobMessage);

  const batchConfig = el("textarea", { id: "batch-config", name: "config", placeholder: '{"num_chains": 4, "seed": 0}' });
  const batchForm = el("form", { class: "stack", id: "batch-form" },
    el("label", {}, "Collection (one job per checkpoint in it)", collectionSelect),
    el("label", {}, "Dataset", batchDatasetSelect),
    el("label", {}, "Loss", el("select", { id: "batch-loss", name: "loss" },
      ["cross_entropy", "mse", "nll", "bce_with_logits"].map((l) => el("option", { value: l }, l)))),
    el("label", {}, "Config JSON (the same for every checkpoint)", batchConfig),
    el("button", { class: "primary", type: "submit" }, "Submit batch"), batchMessage);
  batchForm.addEventListener("submit", async (evt) => {
    evt.preventDefault();
    batchMessage.replaceChildren();
    let config = {};
    try { config = batchConfig.value.trim() ? JSON.parse(batchConfig.value) : {}; } catch (err) {
      batchMessage.append(errorBox(`the config is not valid JSON: ${err.message}`));
      return;
    }
    try {
      const batch = await api("/v1/batches", { method: "POST", json: { collection: collectionSelect.value,
        dataset_id: batchDatasetSelect.value, loss: batchForm.elements.loss.value, config } });
      location.hash = `#/batches/${encodeURIComponent(batch.id)}`;
    } catch (err) { batchMessage.append(errorBox(err.message)); }
  });

  // Multipart upload; empty optional fields are left out (the API rejects empty values for step, etc.).
  const upload = (form, path, message, describe) => form.addEventListener("submit", async (evt) => {
    evt.preventDefault();
    message.replaceChildren();
    const data = new FormData();
    for (const [k, v] of new FormData(form).entries()) {
      if (v instanceof File ? v.size > 0 || v.name : String(v).trim() !== "") data.append(k, v);
    }
    try {
      const row = await api(path, { method: "POST", form: data });
      message.append(el("div", { class: "ok-box", "data-testid": "upload-ok" }, describe(row)));
      form.reset();
      await refreshChoices();
    } catch (err) { message.append(errorBox(err.message)); }
  });
  upload(dsForm, "/v1/datasets", dsMessage, (d) => `Uploaded dataset ${d.name}: n=${d.n}, x ${JSON.stringify(d.x_shape)} (id ${d.id})`);
  upload(ckForm, "/v1/checkpoints", ckMessage, (c) => `Uploaded checkpoint ${c.name}: ${c.num_params} parameters (id ${c.id})`);

  jobForm.addEventListener("submit", async (evt) => {
    evt.preventDefault();
    jobMessage.replaceChildren();
    let config = {};
    const text = configArea.value.trim();
    if (text) {
      try { config = JSON.parse(text); } catch (err) {
        jobMessage.append(errorBox(`the config is not valid JSON: ${err.message}`));
        return;
      }
    }
    try {
      const job = await api("/v1/jobs", { method: "POST", json: { checkpoint_id: checkpointSelect.value,
        dataset_id: datasetSelect.value, loss: jobForm.elements.loss.value, config } });
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) { jobMessage.append(errorBox(err.message)); }
  });

  app.append(el("h1", {}, "Upload & submit"), el("p", { class: "muted" },
    "For small cases. Larger files are easier with the CLI: ", el("code", {}, "lambdahat upload"), " and ",
    el("code", {}, "lambdahat upload-dataset"), "."),
  el("div", { class: "grid2" },
    el("div", { class: "panel" }, el("h2", {}, "Upload a dataset"), dsForm),
    el("div", { class: "panel" }, el("h2", {}, "Upload a checkpoint"), ckForm)),
  el("div", { class: "grid2" },
    el("div", { class: "panel" }, el("h2", {}, "Submit a job"), jobForm),
    el("div", { class: "panel" }, el("h2", {}, "Submit a batch (a whole collection)"), batchForm)));
  try { await refreshChoices(); } catch (err) { jobMessage.append(errorBox(err.message)); }
}

// ---------------------------------------------------------------- start

document.getElementById("logout").addEventListener("click", () => {
  clearKey();
  location.hash = "#/login";
});
window.addEventListener("hashchange", route);
route();
