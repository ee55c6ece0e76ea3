// skillq dashboard: the pages, drawn from the REST API (api.js) with the credential typed
// into the login box.
//
// Everything the server sends is shown with textContent (never as markup): params, results
// and error messages are anyone's text.
"use strict";

const PAGE_SIZE = 25;
const REFRESH_MS = 5000;
// Browsers open at most six HTTP/1.1 connections per host; the table follows a few active
// jobs live and leaves the rest to the periodic refresh.
const TABLE_STREAMS = 3;
const TERMINAL = new Set(["completed", "failed", "cancelled"]);

const $ = (id) => document.getElementById(id);

let me = null; // the principal, from /api/v1/auth/whoami
let offset = 0;
let filters = {};
let refreshTimer = null;
let viewStreams = new AbortController(); // the job page's streams
const tableStreams = new Map(); // job id -> AbortController

// --- small DOM helpers ------------------------------------------------------------------------

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function cell(row, content, className) {
  const td = el("td", null, className);
  if (content instanceof Node) td.append(content);
  else td.textContent = content ?? "";
  row.append(td);
  return td;
}

function stateBadge(state) {
  return el("span", state, `state state-${state}`);
}

function timeOf(iso) {
  if (!iso) return "";
  const time = el("time", new Date(iso).toLocaleString());
  time.dateTime = iso;
  return time;
}

function clockOf(date) {
  const time = el("time", date.toLocaleTimeString());
  time.dateTime = date.toISOString();
  return time;
}

function age(seconds) {
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function percent(progress) {
  return progress === null || progress === undefined ? "" : `${Math.round(progress * 100)}%`;
}

function showBanner(message) {
  $("banner").textContent = message;
  $("banner").hidden = !message;
}

// --- signing in -------------------------------------------------------------------------------

function signIn(message) {
  sessionStorage.removeItem(CREDENTIAL);
  stopEverything();
  $("overview").hidden = $("job").hidden = true;
  $("login-error").textContent = message || "";
  if (!$("login").open) $("login").showModal();
  $("credential").focus();
}

async function start() {
  try {
    me = await api("/api/v1/auth/whoami");
  } catch (error) {
    if (error.status !== 401) showBanner(`Cannot reach the API: ${error.message}`);
    return;
  }
  showBanner("");
  const roles = me.roles.join(", ");
  $("who").textContent = me.method === "none" ? "no sign-in (auth none)" : `${me.subject} (${roles})`;
  $("sign-out").hidden = me.method === "none";
  $("owner-filter").hidden = !me.admin;
  document.querySelectorAll(".owner-col").forEach((th) => (th.hidden = !me.admin));
  loadJobTypes().catch(reportError);
  route();
}

async function loadJobTypes() {
  const select = document.querySelector("#filters select[name=type]");
  const { job_types } = await api("/api/v1/job-types");
  select.replaceChildren(el("option", "any"));
  select.firstChild.value = "";
  for (const type of job_types) select.append(el("option", type.name));
}

// --- pages ------------------------------------------------------------------------------------

function stopEverything() {
  clearInterval(refreshTimer);
  refreshTimer = null;
  viewStreams.abort();
  viewStreams = new AbortController();
  for (const controller of tableStreams.values()) controller.abort();
  tableStreams.clear();
}

function route() {
  stopEverything();
  const match = /^#\/jobs\/([0-9a-fA-F-]{36})$/.exec(location.hash);
  if (match) showJob(match[1].toLowerCase());
  else showOverview();
}

function showOverview() {
  $("job").hidden = true;
  $("overview").hidden = false;
  const refresh = () => Promise.all([loadJobs(), loadOperations()]).catch(reportError);
  refresh();
  refreshTimer = setInterval(refresh, REFRESH_MS);
}

function reportError(error) {
  if (error.status !== 401) showBanner(error.message);
}

// --- the jobs table ---------------------------------------------------------------------------

async function loadJobs() {
  const query = new URLSearchParams({ limit: PAGE_SIZE, offset });
  for (const [name, value] of Object.entries(filters)) if (value) query.set(name, value);
  const page = await api(`/api/v1/jobs?${query}`);
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren(...page.jobs.map(jobRow));
  if (!page.jobs.length) {
    const row = el("tr");
    cell(row, "No jobs match.").colSpan = 6;
    body.append(row);
  }
  const last = Math.min(offset + page.jobs.length, page.total);
  $("page-info").textContent = page.total ? `${offset + 1}–${last} of ${page.total}` : "";
  $("prev").disabled = offset === 0;
  $("next").disabled = last >= page.total;
  followActiveRows(page.jobs);
}

function jobRow(job) {
  const row = el("tr");
  row.dataset.id = job.id;
  const link = el("a", job.id.slice(0, 8));
  link.href = `#/jobs/${job.id}`;
  link.title = job.id;
  link.setAttribute("aria-label", `job ${job.id}`);
  cell(row, el("code")).firstChild.append(link);
  cell(row, job.type);
  cell(row, stateBadge(job.state), "state-cell");
  const bar = el("progress");
  bar.max = 1;
  cell(row, bar, "progress-cell").append(" ", el("span"));
  if (me.admin) cell(row, job.owner);
  cell(row, timeOf(job.created_at));
  updateRow(row, job);
  return row;
}

function updateRow(row, change) {
  if (change.state) row.querySelector(".state-cell").replaceChildren(stateBadge(change.state));
  const bar = row.querySelector(".progress-cell progress");
  if (change.progress !== null && change.progress !== undefined) bar.value = change.progress;
  else if (change.state && change.state !== "running") bar.removeAttribute("value");
  bar.setAttribute("aria-label", `progress ${percent(change.progress) || "unknown"}`);
  row.querySelector(".progress-cell span").textContent = percent(change.progress);
}

// Follows the first few active jobs on the page; the refresh picks up the others.
function followActiveRows(jobs) {
  const active = jobs.filter((job) => !TERMINAL.has(job.state)).map((job) => job.id);
  for (const [id, controller] of tableStreams) {
    if (!active.includes(id)) {
      controller.abort();
      tableStreams.delete(id);
    }
  }
  for (const id of active) {
    if (tableStreams.size >= TABLE_STREAMS) break;
    if (tableStreams.has(id)) continue;
    const controller = new AbortController();
    tableStreams.set(id, controller);
    follow(`/api/v1/jobs/${id}/stream`, (_name, data) => {
      const row = document.querySelector(`#jobs tr[data-id="${CSS.escape(id)}"]`);
      if (row) updateRow(row, JSON.parse(data));
    }, controller.signal).finally(() => {
      if (tableStreams.get(id) === controller) tableStreams.delete(id);
    });
  }
}

// --- queues, workers, the chart ---------------------------------------------------------------

async function loadOperations() {
  const [stats, workers, history] = await Promise.all([
    api("/api/v1/stats"),
    api("/api/v1/workers"),
    api("/api/v1/stats/history?minutes=60"),
  ]);
  renderQueues(stats);
  renderLimits(stats);
  renderWorkers(workers);
  renderChart(history.buckets);
}

function renderQueues(stats) {
  const names = new Set([...Object.keys(stats.by_queue), ...Object.keys(stats.oldest_pending)]);
  const rows = [...names].sort().map((name) => {
    const counts = stats.by_queue[name] || {};
    const row = el("tr");
    cell(row, name);
    for (const state of ["pending", "running", "completed", "failed", "cancelled"]) {
      cell(row, counts[state] || 0, "num");
    }
    const oldest = stats.oldest_pending[name];
    cell(row, oldest ? age(oldest.age_secs) : "—", "num");
    return row;
  });
  if (!rows.length) {
    rows.push(el("tr"));
    cell(rows[0], "No jobs yet.").colSpan = 7;
  }
  document.querySelector("#queues tbody").replaceChildren(...rows);
}

function renderWorkers(body) {
  const { alive, stopped, dead } = body.counts;
  $("worker-counts").textContent = `${alive} alive, ${stopped} stopped, ${dead} dead`;
  const rows = body.workers.map((worker) => {
    const row = el("tr");
    cell(row, `${worker.host}:${worker.pid}`).title = worker.id;
    cell(row, el("span", worker.status, `status-${worker.status}`));
    cell(row, (worker.queues || []).join(", "));
    cell(row, worker.jobs_running, "num");
    cell(row, timeOf(worker.last_beat_at));
    return row;
  });
  if (!rows.length) {
    rows.push(el("tr"));
    cell(rows[0], "No worker has registered.").colSpan = 5;
  }
  document.querySelector("#workers tbody").replaceChildren(...rows);
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes, title) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (title) node.append(Object.assign(document.createElementNS(SVG, "title"), { textContent: title }));
  return node;
}

// Bars: jobs finished per minute (completed below, failed on top); line: pending depth.
function renderChart(buckets) {
  const width = 600, height = 160, top = 8;
  const slot = width / buckets.length;
  const peak = Math.max(1, ...buckets.map((b) => Math.max(b.completed + b.failed, b.pending)));
  const y = (value) => height - (value / peak) * (height - top);
  const shapes = [svg("line", { x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5, class: "axis" })];
  const points = [];
  buckets.forEach((bucket, i) => {
    const x = i * slot;
    const label = `${new Date(bucket.start).toLocaleTimeString()}: ${bucket.completed} completed, ` +
      `${bucket.failed} failed, ${bucket.pending} pending`;
    const done = y(bucket.completed), failed = y(bucket.completed + bucket.failed);
    const group = svg("g", {}, label);
    group.append(svg("rect", { x, y: done, width: slot * 0.8, height: height - done, class: "done" }));
    group.append(svg("rect", { x, y: failed, width: slot * 0.8, height: done - failed, class: "fail" }));
    shapes.push(group);
    points.push(`${x + slot * 0.4},${y(bucket.pending)}`);
  });
  shapes.push(svg("polyline", { points: points.join(" "), class: "depth" }));
  $("chart").replaceChildren(...shapes);

  const sum = (key) => buckets.reduce((total, b) => total + b[key], 0);
  const now = buckets.length ? buckets[buckets.length - 1].pending : 0;
  const summary = $("chart-summary");
  summary.replaceChildren(
    el("span", "■ completed", "key-done"), ` ${sum("completed")}, `,
    el("span", "■ failed", "key-fail"), ` ${sum("failed")} in the last ${buckets.length} minutes; `,
    el("span", "— pending", "key-depth"),
    ` ${now} now (peak ${Math.max(0, ...buckets.map((b) => b.pending))}).`,
  );
}

// --- one job ----------------------------------------------------------------------------------

let shown = null; // the job on the page, as last seen

async function showJob(id) {
  $("overview").hidden = true;
  $("job").hidden = false;
  $("job-id").textContent = id;
  $("job-error-banner").textContent = "";
  $("log").replaceChildren();
  $("log-status").textContent = "";
  shown = null;
  const signal = viewStreams.signal; // aborted if the user moves on meanwhile
  let job;
  try {
    job = await api(`/api/v1/jobs/${id}`);
  } catch (error) {
    if (error.status === 404) $("job-error-banner").textContent = "No such job (or not yours).";
    else reportError(error);
    return;
  }
  if (signal.aborted) return;
  renderJob(job);
  followJob(id, signal);
  followLogs(id, signal);
}

function followJob(id, signal) {
  let logged = null; // the state and attempt last written to the log
  follow(`/api/v1/jobs/${id}/stream`, (name, data) => {
    const change = JSON.parse(data);
    if (name === "state") {
      const now = `${change.state}/${change.attempts}`;
      if (now !== logged) {
        const attempt = change.attempts ? ` (attempt ${change.attempts})` : "";
        logLine(`state: ${change.state}${attempt}`);
        logged = now;
      }
      renderJob(change);
    } else if (name === "progress") {
      logLine(`${percent(change.progress) || "…"} ${change.message ?? ""}`.trim());
      renderJob({ ...shown, ...change });
    }
  }, signal);
}

function renderJob(job) {
  shown = job;
  $("job-state").replaceChildren(stateBadge(job.state));
  const bar = $("job-progress");
  if (job.progress !== null && job.progress !== undefined) bar.value = job.progress;
  else bar.removeAttribute("value");
  $("job-message").textContent = [percent(job.progress), job.message].filter(Boolean).join(" · ");
  const active = !TERMINAL.has(job.state);
  $("cancel").hidden = !me.can_submit || !active;
  $("cancel").disabled = Boolean(job.cancel_requested_at);
  $("retry").hidden = !me.can_submit || (job.state !== "failed" && job.state !== "cancelled");

  const fields = [
    ["Type", job.type], ["Queue", job.queue], ["Owner", job.owner],
    ["Priority", job.priority],
    ["Attempts", `${job.attempts} of ${(job.max_retries ?? 0) + 1}`],
    ["Scheduled for", job.scheduled_for && new Date(job.scheduled_for).toLocaleString()],
    ["Position in queue", job.position_in_queue], ["Worker", job.worker_id],
    ["Duration", job.duration_ms === null ? null : `${(job.duration_ms / 1000).toFixed(1)} s`],
    ["Trace id", job.trace_id], ["Idempotency key", job.idempotency_key],
    ["Expires", job.expires_at && new Date(job.expires_at).toLocaleString()],
  ];
  $("job-fields").replaceChildren(
    ...fields.filter(([, value]) => value !== null && value !== undefined && value !== "")
      .flatMap(([name, value]) => [el("dt", name), el("dd", value)]),
  );
  $("job-params").textContent = JSON.stringify(job.params, null, 2);
  const failed = job.error && job.state !== "completed";
  $("outcome-title").textContent = failed ? "Error" : "Result";
  $("job-outcome").textContent = failed
    ? `${job.error.type}: ${job.error.message ?? ""}`
    : job.result === null || job.result === undefined ? (active ? "(none yet)" : "(none)") : JSON.stringify(job.result, null, 2);
  renderTimeline(job);
}

function renderTimeline(job) {
  const steps = [["created", job.created_at], ["started", job.started_at]];
  if (job.attempts > 1) {
    const last = job.error ? `, last error ${job.error.type}` : "";
    steps.push([`retried: ${job.attempts - 1} time(s)${last}`, null]);
  }
  if (job.cancel_requested_at) steps.push(["cancel requested", job.cancel_requested_at]);
  if (job.completed_at) steps.push([job.state, job.completed_at]);
  $("timeline").replaceChildren(...steps.filter(([, at], i) => at || i > 1).map(([what, at]) => {
    const item = el("li");
    if (at) item.append(timeOf(at));
    item.append(what);
    return item;
  }));
}

// The job's log, from GET .../logs and .../logs/stream; until the server has them (404),
// the panel shows the job's own progress messages from its event stream.
async function followLogs(id, signal) {
  let response;
  try {
    response = await fetch(`/api/v1/jobs/${id}/logs`, { headers: authHeaders(), signal });
  } catch (error) {
    return;
  }
  if (response.status === 404) {
    $("log-status").textContent = "No logs yet. Progress messages from the job's events follow below.";
    return;
  }
  if (!response.ok) {
    $("log-status").textContent = `The log cannot be read (${response.status}).`;
    return;
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  const lines = typeof body === "string" ? body.split("\n").filter(Boolean) : body.lines || [];
  for (const line of lines) logLine(line, "log");
  $("log-status").textContent = "Following the job's log.";
  follow(`/api/v1/jobs/${id}/logs/stream`, (_name, data) => {
    let line = data;
    try {
      line = JSON.parse(data);
    } catch (error) {
      // plain text lines are fine as they are
    }
    logLine(line, "log");
  }, signal);
}

function logLine(line, source = "event") {
  const entry = typeof line === "object" && line !== null ? line : { message: line };
  const at = entry.at || entry.time || entry.timestamp;
  const item = el("li", null, source);
  item.append(at ? timeOf(at) : clockOf(new Date()));
  if (entry.level) item.append(`[${entry.level}] `);
  item.append(String(entry.message ?? entry.line ?? entry.text ?? JSON.stringify(entry)));
  const log = $("log");
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.append(item);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

async function act(method, path) {
  $("job-error-banner").textContent = "";
  try {
    const job = await api(path, { method });
    renderJob(job);
    return job;
  } catch (error) {
    reportError(error);
    $("job-error-banner").textContent = error.message;
    return null;
  }
}

// --- wiring -----------------------------------------------------------------------------------

function wire() {
  $("login-form").addEventListener("submit", (event) => {
    const credential = $("credential").value.trim();
    if (!credential) {
      event.preventDefault();
      return;
    }
    sessionStorage.setItem(CREDENTIAL, credential);
    $("credential").value = "";
    start();
  });
  $("login").addEventListener("cancel", (event) => event.preventDefault());
  $("sign-out").addEventListener("click", () => signIn("Signed out."));
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    filters = Object.fromEntries(new FormData(event.target));
    offset = 0;
    loadJobs().catch(reportError);
  });
  $("find").addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = new FormData(event.target).get("id").trim().toLowerCase();
    $("find-error").textContent = "";
    try {
      await api(`/api/v1/jobs/${encodeURIComponent(id)}`);
      location.hash = `#/jobs/${id}`;
    } catch (error) {
      $("find-error").textContent = error.status === 404 ? "No such job." : error.message;
    }
  });
  $("prev").addEventListener("click", () => {
    offset = Math.max(0, offset - PAGE_SIZE);
    loadJobs().catch(reportError);
  });
  $("next").addEventListener("click", () => {
    offset += PAGE_SIZE;
    loadJobs().catch(reportError);
  });
  $("cancel").addEventListener("click", () => act("DELETE", `/api/v1/jobs/${shown.id}`));
  $("retry").addEventListener("click", async () => {
    const job = await act("POST", `/api/v1/jobs/${shown.id}/retry`);
    if (job) {
      logLine("retried");
      followJob(job.id, viewStreams.signal);
    }
  });
  window.addEventListener("hashchange", () => me && route());
  window.addEventListener("skillq:unauthorized", (event) => signIn(event.detail));
}

wire();
start();
