// rayr dashboard: one page per route (#/, #/jobs, ...), each refreshed from /api/ every
// REFRESH_MS without reloading. Plain JS, no build step.
"use strict";

const REFRESH_MS = 2000;
const TIMELINE_WINDOW_S = 60;

const esc = (s) => String(s ?? "").replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const short = (id) => (id ? esc(String(id).slice(0, 12)) : "");
const stateSpan = (s) => `<span class="state state-${esc(s)}">${esc(s)}</span>`;
const clock = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "");
const stamp = (ms) => (ms ? new Date(ms).toLocaleString() : "");

function bytes(n) {
  let v = Number(n || 0);
  for (const unit of ["B", "KiB", "MiB", "GiB", "TiB"]) {
    if (v < 1024 || unit === "TiB") return unit === "B" ? `${v} B` : `${v.toFixed(1)} ${unit}`;
    v /= 1024;
  }
  return `${v}`;
}

function bar(used, total, text) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  return `<span class="bar"><span style="width:${pct.toFixed(1)}%"></span></span>${esc(text)}`;
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// columns: [[heading, row => html], ...]
function table(id, columns, rows, empty) {
  if (!rows.length) return `<p id="${id}" class="muted">${esc(empty || "none")}</p>`;
  const head = columns.map(([h]) => `<th>${esc(h)}</th>`).join("");
  const body = rows.map((r) => `<tr>${columns.map(([, f]) => `<td>${f(r)}</td>`).join("")}</tr>`).join("");
  return `<table id="${id}"><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

function counts(obj) {
  const parts = Object.entries(obj || {}).sort().map(([k, v]) => `${stateSpan(k)} ${v}`);
  return parts.length ? parts.join(" &nbsp; ") : '<span class="muted">none</span>';
}

function card(label, value, id) {
  return `<div class="card"${id ? ` id="${id}"` : ""}><div class="label">${esc(label)}</div>` +
    `<div class="value">${value}</div></div>`;
}

const $ = (id) => document.getElementById(id);
function fill(id, html) { const el = $(id); if (el) el.innerHTML = html; }

// ----------------------------------------------------------------------- pages
const pages = {};

pages.overview = {
  mount() {
    return `<div class="cards" id="cards"></div>
      <h2>Nodes</h2><div id="nodes"></div>
      <h2>Recent failures</h2><div id="failures"></div>
      <h2>Work</h2><div id="work"></div>`;
  },
  async refresh() {
    const d = await api("/api/overview");
    const alive = d.nodes.filter((n) => n.state === "ALIVE").length;
    const used = (k) => (d.total[k] || 0) - (d.available[k] || 0);
    fill("cards", [
      card("Nodes alive / dead", `${alive} / ${d.nodes.length - alive}`, "card-nodes"),
      card("CPU used", `${used("CPU").toFixed(1)} / ${(d.total.CPU || 0).toFixed(1)}`),
      card("GPU used", `${used("GPU").toFixed(1)} / ${(d.total.GPU || 0).toFixed(1)}`),
      card("Object store", `${bytes(d.nodes.reduce((a, n) => a + (n.store.used_bytes || 0), 0))}`),
      card("Tasks", Object.values(d.tasks).reduce((a, b) => a + b, 0)),
      card("Actors alive", d.actors.ALIVE || 0),
      card("Redis memory", bytes(d.redis.used_memory)),
      card("Redis ops/s", d.redis.ops_per_sec),
    ].join(""));
    fill("nodes", table("nodes-table", [
      ["Node", (n) => `<span class="mono">${short(n.node_id)}</span>${n.is_head ? " (head)" : ""}`],
      ["State", (n) => stateSpan(n.state) + (n.death_reason ? ` <span class="muted">${esc(n.death_reason)}</span>` : "")],
      ["Host", (n) => esc(`${n.hostname} (${n.host})`)],
      ["CPU", (n) => (n.state !== "ALIVE" ? "" : bar(n.resources_used.CPU || 0, n.resources_total.CPU || 0,
        `${(n.resources_used.CPU || 0).toFixed(1)} / ${n.resources_total.CPU || 0}`))],
      ["GPU", (n) => (n.resources_total.GPU ? `${(n.resources_used.GPU || 0).toFixed(1)} / ${n.resources_total.GPU}` : "")],
      ["Host memory", (n) => (n.host_usage && n.host_usage.mem_total
        ? bar(n.host_usage.mem_used, n.host_usage.mem_total, `${bytes(n.host_usage.mem_used)} / ${bytes(n.host_usage.mem_total)}`) : "")],
      ["Host CPU", (n) => (n.host_usage && n.host_usage.cpu_percent !== undefined ? `${n.host_usage.cpu_percent}%` : "")],
      ["Object store", (n) => (n.store.capacity !== undefined
        ? bar(n.store.used_bytes, n.store.capacity || 0, `${bytes(n.store.used_bytes)} / ${n.store.capacity ? bytes(n.store.capacity) : "unlimited"}`) : "")],
      ["Spilled", (n) => (n.store.spilled_bytes ? bytes(n.store.spilled_bytes) : "")],
      ["Logs", (n) => (n.state === "ALIVE" ? `<a href="#/logs?node=${esc(n.node_id)}">logs</a>` : "")],
    ], d.nodes, "no nodes"));
    const nodeFailures = table("node-failures", [
      ["Node", (f) => `<span class="mono">${short(f.node_id)}</span>`],
      ["Host", (f) => esc(f.host)], ["When", (f) => esc(stamp(f.time * 1000))], ["Why", (f) => esc(f.reason || "died")],
    ], d.node_failures, "no node failures");
    const taskFailures = table("failed-tasks", [
      ["Task", (t) => esc(t.name || t.func)], ["Job", (t) => esc(t.job_id)],
      ["Error", (t) => `<span class="error">${esc(t.error_type || "")}</span>: ${esc(t.error_message || "")}`],
      ["When", (t) => esc(clock(t.end_ms))],
    ], d.failed_tasks, "no failed tasks");
    fill("failures", `${nodeFailures}<h2>Failed tasks</h2>${taskFailures}`);
    fill("work", `<p>Tasks: ${counts(d.tasks)}</p><p>Actors: ${counts(d.actors)}</p><p>Jobs: ${counts(d.jobs)}</p>` +
      `<p class="muted">Redis ${esc(d.redis.version)}, ${d.redis.connected_clients} clients</p>`);
  },
};

pages.jobs = {
  logsAfter: "0",
  mount(params) {
    this.logsAfter = "0";
    const sid = params.get("logs");
    return `<div id="jobs"></div>` + (sid ? `<h2>Logs of ${esc(sid)}</h2><pre class="log" id="job-logs"></pre>` : "");
  },
  async refresh(params) {
    const rows = await api("/api/jobs");
    fill("jobs", table("jobs-table", [
      ["Job", (j) => `<span class="mono">${esc(j.job_id || "")}</span>`],
      ["Submission", (j) => (j.submission_id ? `<a href="#/jobs?logs=${esc(j.submission_id)}">${esc(j.submission_id)}</a>` : "")],
      ["Type", (j) => esc(j.type)], ["Status", (j) => stateSpan(j.status)],
      ["Entrypoint", (j) => `<span class="mono">${esc(j.entrypoint)}</span>`], ["Started", (j) => esc(stamp(j.start_time))],
    ], rows, "no jobs yet"));
    const sid = params.get("logs");
    if (sid) {
      const got = await api(`/api/jobs/${encodeURIComponent(sid)}/logs?after=${encodeURIComponent(this.logsAfter)}`);
      this.logsAfter = got.next;
      if (got.text) appendLog("job-logs", got.text);
    }
  },
};

pages.actors = {
  mount() { return `<div id="actor-counts"></div><div id="actors"></div>`; },
  async refresh() {
    const rows = await api("/api/actors");
    const byState = {};
    rows.forEach((a) => { byState[a.state] = (byState[a.state] || 0) + 1; });
    fill("actor-counts", `<p>${counts(byState)}</p>`);
    fill("actors", table("actors-table", [
      ["Actor", (a) => `<span class="mono">${short(a.actor_id)}</span>`],
      ["Class", (a) => esc(a.class_name)], ["Name", (a) => esc(a.name)], ["State", (a) => stateSpan(a.state)],
      ["Node", (a) => `<span class="mono">${short(a.node_id)}</span>`], ["PID", (a) => esc(a.pid)],
      ["Restarts", (a) => `${a.num_restarts} / ${a.max_restarts < 0 ? "∞" : a.max_restarts}`],
      ["Job", (a) => esc(a.job_id)], ["Death cause", (a) => esc(a.death_cause || "")],
      ["Logs", (a) => (a.node_id && a.pid ? `<a href="#/logs?node=${esc(a.node_id)}&pid=${esc(a.pid)}">logs</a>` : "")],
    ], rows, "no actors"));
  },
};

pages.tasks = {
  mount(params) {
    return `<div class="filters">
        <label>Job <select id="f-job"><option value="">all</option></select></label>
        <label>State <select id="f-state"><option value="">all</option>${["PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT",
          "SUBMITTED_TO_WORKER", "RUNNING", "FINISHED", "FAILED"].map((s) => `<option>${s}</option>`).join("")}</select></label>
        <label>Name <input id="f-name" placeholder="substring" value="${esc(params.get("name") || "")}"></label>
      </div>
      <div id="task-counts"></div>
      <h2>Task stream (last ${TIMELINE_WINDOW_S} s)</h2><div id="timeline"></div>
      <h2>By function</h2><div id="by-function"></div>
      <h2>Tasks</h2><div id="tasks"></div>`;
  },
  async refresh() {
    const q = new URLSearchParams({ job: $("f-job").value, state: $("f-state").value, name: $("f-name").value });
    const [d, tl] = await Promise.all([api(`/api/tasks?${q}`), api(`/api/timeline?window_s=${TIMELINE_WINDOW_S}`)]);
    const jobSelect = $("f-job");
    for (const job of d.jobs) {
      if (![...jobSelect.options].some((o) => o.value === job)) jobSelect.add(new Option(job, job));
    }
    fill("task-counts", `<p id="task-state-counts">${d.total} tasks: ${counts(d.states)}</p>`);
    fill("timeline", timelineSvg(tl));
    fill("by-function", table("functions-table", [["Function", (r) => esc(r[0])], ["States", (r) => counts(r[1])]],
      Object.entries(d.by_function), "no tasks"));
    fill("tasks", table("tasks-table", [
      ["Task", (t) => esc(t.name || t.func)], ["State", (t) => stateSpan(t.state)], ["Type", (t) => esc(t.type)],
      ["Job", (t) => esc(t.job_id)], ["Node", (t) => `<span class="mono">${short(t.node_id)}</span>`],
      ["PID", (t) => esc(t.worker_pid)], ["Attempt", (t) => esc(t.attempt)],
      ["Duration", (t) => (t.duration_ms !== null ? `${t.duration_ms.toFixed(1)} ms` : "")],
      ["Error", (t) => (t.error_type ? `<span class="error">${esc(t.error_type)}</span>: ${esc(t.error_message)}` : "")],
      // a task id starts with its job's: its tail tells tasks apart
      ["ID", (t) => `<span class="mono" title="${esc(t.task_id)}">…${esc(t.task_id.slice(-12))}</span>`],
    ], d.tasks, "no tasks match"));
  },
};

function timelineSvg(tl) {
  const lanes = Object.entries(tl.lanes);
  if (!lanes.length) return '<p class="muted">nothing ran in this window</p>';
  const width = Math.max(600, ($("page").clientWidth || 1000) - 40);
  const label = 150;
  const laneH = 18;
  const span = Math.max(1, tl.now - tl.since);
  const x = (ms) => label + ((Math.max(ms, tl.since) - tl.since) / span) * (width - label);
  const colour = { FINISHED: "#1f9d55", FAILED: "#d64545", RUNNING: "#2f6fde" };
  let svg = `<svg class="timeline" id="timeline-svg" width="${width}" height="${lanes.length * laneH + 20}">`;
  lanes.forEach(([lane, slices], i) => {
    const y = i * laneH + 4;
    svg += `<text x="4" y="${y + 11}">${esc(lane)}</text>`;
    for (const s of slices) {
      const x0 = x(s.start);
      const w = Math.max(1.5, x(s.end) - x0);
      svg += `<rect x="${x0.toFixed(1)}" y="${y}" width="${w.toFixed(1)}" height="${laneH - 5}" ` +
        `fill="${colour[s.state] || "#c98a12"}"><title>${esc(s.name)} ${esc(s.state)} ` +
        `${(s.end - s.start).toFixed(1)} ms</title></rect>`;
    }
  });
  const y = lanes.length * laneH + 16;
  svg += `<text x="${label}" y="${y}">-${TIMELINE_WINDOW_S}s</text><text x="${width - 30}" y="${y}">now</text></svg>`;
  return svg;
}

pages.objects = {
  mount() { return `<h2>Object stores</h2><div id="stores"></div><h2 id="objects-title">Largest objects</h2><div id="objects"></div>`; },
  async refresh() {
    const d = await api("/api/objects");
    fill("stores", table("stores-table", [
      ["Node", (n) => `<span class="mono">${short(n.node_id)}</span>`], ["Backend", (n) => esc(n.backend)],
      ["Used", (n) => bar(n.used_bytes, n.capacity || 0, `${bytes(n.used_bytes)} / ${n.capacity ? bytes(n.capacity) : "unlimited"}`)],
      ["Objects", (n) => esc(n.objects)], ["Spilled", (n) => `${bytes(n.spilled_bytes)} (${n.spilled_objects} objects)`],
    ], d.nodes, "no live nodes"));
    fill("objects-title", `Largest objects (${d.total_objects} in the object table)`);
    fill("objects", table("objects-table", [
      ["Object", (o) => `<span class="mono">${esc(o.object_id)}</span>`], ["Size", (o) => bytes(o.size)],
      ["Where", (o) => (o.node ? `node <span class="mono">${short(o.node)}</span>` : "Redis (inline)")],
      ["Kind", (o) => esc(o.kind)], ["Job", (o) => esc(o.job)],
      ["Borrowers", (o) => esc((o.refs || {}).borrowers || 0)],
    ], d.objects, "no objects"));
  },
};

pages["placement-groups"] = {
  mount() { return `<div id="pgs"></div>`; },
  async refresh() {
    const rows = await api("/api/placement_groups");
    fill("pgs", table("pgs-table", [
      ["Placement group", (p) => `<span class="mono">${short(p.placement_group_id)}</span>`],
      ["Name", (p) => esc(p.name)], ["State", (p) => stateSpan(p.state)], ["Strategy", (p) => esc(p.strategy)],
      ["Bundles", (p) => p.bundles.map((b) => `${esc(JSON.stringify(b.unit_resources))} on ` +
        `<span class="mono">${short(b.node_id) || "-"}</span>`).join("<br>")],
      ["Detached", (p) => (p.is_detached ? "yes" : "")],
    ], rows, "no placement groups"));
  },
};

pages.logs = {
  offset: null,
  mount(params) {
    this.offset = null;
    return `<div class="split"><div><div class="filters"><label>Node <select id="log-node"></select></label></div>
      <div id="log-files"></div></div>
      <div><h2 id="log-title" class="mono">${esc(params.get("name") || "choose a log file")}</h2>
      <pre class="log" id="log-text"></pre></div></div>`;
  },
  async refresh(params) {
    const nodes = (await api("/api/nodes")).filter((n) => n.state === "ALIVE");
    const select = $("log-node");
    if (!select.options.length) {
      nodes.forEach((n) => select.add(new Option(`${n.node_id.slice(0, 12)}${n.is_head ? " (head)" : ""}`, n.node_id)));
      if (params.get("node")) select.value = params.get("node");
      select.onchange = () => { location.hash = `#/logs?node=${select.value}`; };
    }
    const node = select.value;
    if (!node) return;
    const files = await api(`/api/logs?node=${encodeURIComponent(node)}`);
    let name = params.get("name");
    if (!name && params.get("pid")) {
      const match = files.find((f) => String(f.pid) === params.get("pid"));
      if (match) name = match.name;
    }
    fill("log-files", table("log-files-table", [
      ["File", (f) => `<a href="#/logs?node=${esc(node)}&name=${encodeURIComponent(f.name)}">${esc(f.name)}</a>`],
      ["Size", (f) => bytes(f.size)], ["PID", (f) => esc(f.pid || "")],
    ], files, "no log files"));
    if (!name) return;
    fill("log-title", esc(name));
    const offset = this.offset === null ? -64 * 1024 : this.offset;
    const got = await api(`/api/logs/read?node=${encodeURIComponent(node)}&name=${encodeURIComponent(name)}&offset=${offset}`);
    this.offset = got.next;
    if (got.text) appendLog("log-text", got.text);
  },
};

function appendLog(id, text) {
  const pre = $(id);
  if (!pre) return;
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.textContent += text;
  if (pre.textContent.length > 2000000) pre.textContent = pre.textContent.slice(-1000000);
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

// ---------------------------------------------------------------------- router
let current = null;
let timer = null;
let busy = false;

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query] = hash.split("?");
  const name = path || "overview";
  return { name: pages[name] ? name : "overview", params: new URLSearchParams(query || "") };
}

async function tick() {
  if (busy || !current) return;
  busy = true;
  try {
    await pages[current.name].refresh(current.params);
    fill("status", `updated ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    fill("status", `<span class="error">${esc(err.message)}</span>`);
  } finally {
    busy = false;
  }
}

function show() {
  current = route();
  document.querySelectorAll("#nav a[data-page]").forEach((a) => a.classList.toggle("active", a.dataset.page === current.name));
  $("page").innerHTML = pages[current.name].mount(current.params);
  ["f-job", "f-state", "f-name"].forEach((id) => { const el = $(id); if (el) el.oninput = tick; });
  tick();
  clearInterval(timer);
  timer = setInterval(tick, REFRESH_MS);
}

window.addEventListener("hashchange", show);
show();
