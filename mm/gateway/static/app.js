// mm status page: polls the gateway's JSON API and draws with plain DOM and inline SVG.
"use strict";

const KEY_STORE = "mm-gateway-key";
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const SVG = "http://www.w3.org/2000/svg";

function gb(bytes) {
  if (!bytes) return "0";
  if (bytes >= 1e9) return (bytes / 1e9).toFixed(bytes >= 1e11 ? 0 : 2) + " GB";
  if (bytes >= 1e6) return (bytes / 1e6).toFixed(0) + " MB";
  return (bytes / 1e3).toFixed(0) + " kB";
}
function secs(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return (s * 1000).toFixed(0) + " ms";
  if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
  if (s < 3600) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function clock(ts) {
  const d = new Date(ts * 1000);
  return d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
}
// Distinct colours for models: assigned in sorted order of the models seen, so neighbours never clash.
const PALETTE = ["#58a6ff", "#3fb950", "#d2a8ff", "#f0883e", "#39c5cf", "#e3b341", "#ff7b72", "#a5d6ff",
  "#7ee787", "#db61a2", "#bc8cff", "#56d4dd"];
const modelColors = new Map();
function learnModels(names) {
  const all = [...new Set([...modelColors.keys(), ...names])].sort();
  all.forEach((name, i) => modelColors.set(name, i < PALETTE.length ? PALETTE[i] : null));
}
function color(name) {
  const known = modelColors.get(name);
  if (known) return known;
  let h = 0;
  for (const c of String(name)) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${h % 360}, 62%, 62%)`;
}
const shortId = (id) => (id || "").slice(0, 8);

async function api(path) {
  const headers = {Accept: "application/json"};
  const key = localStorage.getItem(KEY_STORE);
  if (key) headers.Authorization = "Bearer " + key;
  const res = await fetch(path, {headers, cache: "no-store"});
  if (res.status === 401) {
    $("auth").classList.remove("hidden");
    $("auth-error").textContent = key ? "the key was refused" : "";
    throw new Error("unauthorized");
  }
  const body = await res.json();
  if (!res.ok) throw new Error(`${path}: ${body.error || res.status}`);
  return body;
}

// --- KPIs -------------------------------------------------------------------------------------
function kpi(label, value, note, cls) {
  return `<div class="kpi"><div class="label">${esc(label)}</div><div class="value ${cls || ""}">${esc(value)}</div>` +
    `<div class="note">${esc(note || "")}</div></div>`;
}
function renderKpis(s) {
  const b = s.queue.by_status, w = s.workers, win = Math.round(s.queue.finished_window_s / 60);
  const nodes = s.resources.nodes;
  const oldest = Math.max(0, ...Object.values(s.queues).map((q) => q.oldest_wait_s));
  $("kpis").innerHTML = [
    kpi("Queued", b.queued, b.queued ? "oldest waiting " + secs(oldest) : "no backlog"),
    kpi("Running", b.running, `${w.busy} of ${w.slots} slots busy`),
    kpi("Completed", b.complete, `last ${win} min`, "good"),
    kpi("Failed", b.failed, `last ${win} min`, b.failed ? "bad" : ""),
    kpi("Workers", w.total, `${w.bound} bound` + (w.gone.length ? `, ${w.gone.length} lost` : "")),
    kpi("Resident models", s.resources.loaded_models.length,
        `${gb(s.resources.vram.used)} of ${gb(s.resources.vram.total)} on ${nodes.length} node${nodes.length === 1 ? "" : "s"}`),
  ].join("");
}

// --- nodes ------------------------------------------------------------------------------------
function memoryBar(label, total, segments, usedOther) {
  let html = `<div class="bar-label"><span>${esc(label)}</span><span>`;
  const used = segments.reduce((a, s) => a + s.size, 0) + (usedOther || 0);
  html += `${gb(used)} / ${gb(total)} · ${gb(Math.max(0, total - used))} free</span></div><div class="bar">`;
  for (const seg of segments) {
    const pct = total ? (100 * seg.size / total) : 0;
    html += `<div class="seg" title="${esc(seg.model)} · ${gb(seg.size)}" style="width:${pct}%;background:${color(seg.model)}">` +
      `${pct > 12 ? esc(seg.model) : ""}</div>`;
  }
  if (usedOther) {
    const pct = total ? (100 * usedOther / total) : 0;
    html += `<div class="seg other" title="used · ${gb(usedOther)}" style="width:${pct}%">${pct > 12 ? "used" : ""}</div>`;
  }
  return html + "</div>";
}
function renderNodes(s) {
  const nodes = s.resources.nodes;
  $("nodes-sub").textContent = nodes.length ? "" : "";
  if (!nodes.length) {
    $("nodes").innerHTML = `<div class="empty">No node publishes its state (is a gpu-broker running?)</div>`;
    return;
  }
  $("nodes").innerHTML = nodes.map((n) => {
    const m = n.memory;
    const up = n.runtime_up ? `<span class="good">runtime up</span>`
      : `<span class="bad" title="${esc(n.runtime_error || "")}">runtime down</span>`;
    let html = `<div class="node"><div class="node-head"><span class="node-name">${esc(n.node)}</span>` +
      `<span class="muted">${up} · ${esc(m.source || "")} · seen ${secs(n.age_s)} ago</span></div>`;
    if (!n.runtime_up && n.runtime_error) html += `<div class="bad node-note">${esc(n.runtime_error)}</div>`;
    for (const w of n.warnings || []) html += `<div class="warn node-note">${esc(w)}</div>`;
    html += memoryBar("models", m.total, n.resident.map((r) => ({model: r.model, size: r.size})), 0);
    for (const g of m.gpus || []) {
      html += memoryBar(`GPU ${g.index} · ${g.name}`, g.total, [], g.used);
    }
    const ops = Object.entries(n.operations || {});
    if (n.resident.length || ops.length) {
      html += `<div class="residents">`;
      for (const r of n.resident) {
        const workers = r.workers.length ? r.workers.map((w) => `<span class="chip">${esc(w)}</span>`).join(" ")
          : `<span class="muted">no worker bound</span>`;
        html += `<div class="resident"><span class="dot" style="background:${color(r.model)}"></span>` +
          `<span class="model">${esc(r.model)}</span><span class="muted">${gb(r.size)}` +
          `${r.in_flight ? ` · <span class="good">${r.in_flight} running</span>` : ""}</span>${workers}</div>`;
      }
      for (const [model, op] of ops) {
        html += `<div class="resident"><span class="dot" style="background:var(--warn)"></span>` +
          `<span class="model">${esc(model)}</span><span class="warn">${esc(op.op)}ing…</span></div>`;
      }
      html += `</div>`;
    }
    if (n.workers.length) {
      html += `<div class="workers">` + n.workers.map((w) =>
        `<span class="chip ${w.running ? "busy" : w.bound ? "" : "idle"}" title="${esc(w.hostname)}">` +
        `${esc(w.hostname)} · ${esc(w.bound || "idle")} · ${w.running}/${w.slots}</span>`).join("") + `</div>`;
    }
    return html + `</div>`;
  }).join("");
}

// --- queues and alerts ------------------------------------------------------------------------
function renderQueues(s) {
  const rows = Object.entries(s.queues);
  if (!rows.length) {
    $("queues").innerHTML = `<div class="empty">No model is registered yet</div>`;
    return;
  }
  const max = Math.max(1, ...rows.map(([, q]) => q.total));
  let html = `<table><tr><th>model</th><th class="num">high</th><th class="num">normal</th><th class="num">low</th>` +
    `<th class="num">oldest</th><th class="num">done</th><th></th></tr>`;
  for (const [model, q] of rows) {
    const fin = s.finished[model] || {ok: 0, error: 0};
    const bar = ["high", "normal", "low"].map((p) =>
      `<div class="q-${p}" style="width:${100 * q[p] / max}%"></div>`).join("");
    html += `<tr><td><span class="dot" style="background:${color(model)}"></span> <span class="model">${esc(model)}</span></td>` +
      `<td class="num prio-high">${q.high || "·"}</td><td class="num prio-normal">${q.normal || "·"}</td>` +
      `<td class="num prio-low">${q.low || "·"}</td><td class="num">${q.total ? secs(q.oldest_wait_s) : "–"}</td>` +
      `<td class="num">${fin.ok}${fin.error ? ` <span class="bad">/${fin.error}✗</span>` : ""}</td>` +
      `<td><div class="qbar">${bar}</div></td></tr>`;
  }
  html += `</table><div class="legend"><span><i class="dot q-high"></i>high</span>` +
    `<span><i class="dot q-normal"></i>normal</span><span><i class="dot q-low"></i>low</span>` +
    `<span>done = finished in the last ${Math.round(s.queue.finished_window_s / 60)} min</span></div>`;
  $("queues").innerHTML = html;
}
function renderAlerts(s) {
  const firing = s.alerts.firing;
  if (!firing.length) {
    $("alerts").innerHTML = `<div class="okbox">No alert firing` +
      (s.alerts.pending ? ` · ${s.alerts.pending} pending` : "") + `</div>`;
    return;
  }
  $("alerts").innerHTML = firing.map((a) => {
    const subject = Object.entries(a.subject || {}).map(([k, v]) => `${k}=${v}`).join(" ");
    const value = typeof a.value === "number" ? a.value.toPrecision(3) : "–";
    return `<div class="alert"><b>${esc(a.text || a.rule)}</b> · ${esc(subject)} · value ${esc(value)}` +
      ` <span class="muted">since ${a.fired_at ? clock(a.fired_at) : "?"}</span></div>`;
  }).join("");
}

// --- charts (inline SVG) ----------------------------------------------------------------------
function svgEl(tag, attrs, parent) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}
function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
function frame(el, t0, t1, yMax, yFmt) {
  el.innerHTML = "";
  const W = el.clientWidth || 560, H = 220, L = 52, R = 10, T = 10, B = 24;
  const svg = svgEl("svg", {viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none"}, el);
  const x = (t) => L + (W - L - R) * (t - t0) / Math.max(1, t1 - t0);
  const y = (v) => T + (H - T - B) * (1 - v / yMax);
  for (let i = 0; i <= 4; i++) {
    const v = yMax * i / 4;
    svgEl("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), class: "axis", "stroke-dasharray": i ? "2,4" : ""}, svg);
    svgEl("text", {x: L - 6, y: y(v) + 3, "text-anchor": "end"}, svg).textContent = yFmt(v);
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + (t1 - t0) * i / 4;
    svgEl("text", {x: x(t), y: H - 6, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle"}, svg)
      .textContent = new Date(t * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
  }
  return {svg, x, y, W, H, L, R, T, B};
}
function legend(el, items) {
  const div = document.createElement("div");
  div.className = "legend";
  div.innerHTML = items.map(([name, c, dash]) =>
    `<span><svg width="18" height="8"><line x1="0" y1="4" x2="18" y2="4" stroke="${c}" stroke-width="2"` +
    `${dash ? ' stroke-dasharray="3,3"' : ""}/></svg>${esc(name)}</span>`).join("");
  el.appendChild(div);
}
// The charts start at the first minute with data (at least the last 15 minutes, at most the span).
function timeRange(roll) {
  const starts = Object.values(roll.models).flat().filter((r) => r.count).map((r) => r.start);
  const first = starts.length ? Math.min(...starts) - roll.bucket_s : roll.start;
  return [Math.max(roll.start, Math.min(first, roll.end - 900)), roll.end];
}
function renderLatency(roll) {
  const el = $("latency-chart");
  const models = Object.entries(roll.models).filter(([, rows]) => rows.some((r) => r.count > r.errors));
  if (!models.length) {
    el.innerHTML = `<div class="empty">No finished jobs in the last hour</div>`;
    return;
  }
  const [t0, t1] = timeRange(roll);
  const yMax = niceMax(Math.max(...models.flatMap(([, rows]) => rows.map((r) => r.p95_latency_s))));
  const f = frame(el, t0, t1, yMax, secs);
  const items = [];
  for (const [model, rows] of models) {
    const pts = rows.filter((r) => r.count > r.errors).map((r) => [r.start + roll.bucket_s / 2, r]);
    for (const [key, dash] of [["p95_latency_s", ""], ["p50_latency_s", "4,3"]]) {
      // A minute without finished jobs breaks the line rather than bridging the gap.
      const d = pts.map(([t, r], i) => `${i && t - pts[i - 1][0] <= roll.bucket_s * 1.5 ? "L" : "M"}` +
        `${f.x(t).toFixed(1)},${f.y(r[key]).toFixed(1)}`).join("");
      svgEl("path", {d, fill: "none", stroke: color(model), "stroke-width": 2, "stroke-dasharray": dash}, f.svg);
    }
    for (const [t, r] of pts) {
      svgEl("circle", {cx: f.x(t), cy: f.y(r.p95_latency_s), r: 2.5, fill: color(model)}, f.svg)
        .appendChild(svgEl("title", {})).textContent =
          `${model} ${clock(r.start)}: p50 ${secs(r.p50_latency_s)}, p95 ${secs(r.p95_latency_s)}, ${r.count} jobs`;
    }
    items.push([model + " p95", color(model), false]);
  }
  items.push(["dashed: p50", "#8b98a5", true]);
  legend(el, items);
}
function renderThroughput(roll) {
  const el = $("throughput-chart");
  const size = roll.bucket_s;
  const buckets = new Map();
  for (const [model, rows] of Object.entries(roll.models)) {
    for (const r of rows) {
      if (!r.count) continue;
      const b = buckets.get(r.start) || [];
      b.push({model, count: r.count, errors: r.errors});
      buckets.set(r.start, b);
    }
  }
  if (!buckets.size) {
    el.innerHTML = `<div class="empty">No finished jobs in the last hour</div>`;
    return;
  }
  const [t0, t1] = timeRange(roll);
  const yMax = niceMax(Math.max(...[...buckets.values()].map((b) => b.reduce((a, x) => a + x.count, 0))));
  const f = frame(el, t0, t1, yMax, (v) => Number.isInteger(v) ? String(v) : v.toFixed(1));
  const width = Math.max(2, (f.x(t0 + size) - f.x(t0)) * 0.8);
  const seen = new Set();
  for (const [start, parts] of buckets) {
    let base = 0;
    for (const p of parts.sort((a, b) => a.model.localeCompare(b.model))) {
      seen.add(p.model);
      const y1 = f.y(base + p.count), y0 = f.y(base);
      const rect = svgEl("rect", {x: f.x(start + size * 0.1), y: y1, width, height: Math.max(0.5, y0 - y1),
        fill: color(p.model), rx: 1.5}, f.svg);
      svgEl("title", {}, rect).textContent = `${p.model} ${clock(start)}: ${p.count} jobs, ${p.errors} failed`;
      if (p.errors) {
        const ye = f.y(base + p.errors);
        svgEl("rect", {x: f.x(start + size * 0.1), y: ye, width, height: Math.max(0.5, y0 - ye), fill: "var(--bad)"}, f.svg);
      }
      base += p.count;
    }
  }
  legend(el, [...seen].sort().map((m) => [m, color(m), false]).concat([["failed", "#f85149", false]]));
}

// --- jobs -------------------------------------------------------------------------------------
function renderJobs(j) {
  const col = (title, rows, empty) => `<div><h3>${title}</h3>` +
    (rows.length ? `<table>${rows.join("")}</table>` : `<div class="empty">${empty}</div>`) + `</div>`;
  const running = j.running.map((r) => `<tr><td class="model">${esc(shortId(r.job_id))}</td>` +
    `<td><span class="dot" style="background:${color(r.model)}"></span> ${esc(r.model)}</td>` +
    `<td class="muted">${esc(r.worker)}</td><td class="num">${secs(r.running_s)}</td></tr>`);
  const queued = j.queued.map((r) => `<tr><td class="model">${esc(shortId(r.job_id))}</td>` +
    `<td><span class="dot" style="background:${color(r.model)}"></span> ${esc(r.model)}</td>` +
    `<td class="prio-${esc(r.priority)}">${esc(r.priority)}</td><td class="num">${secs(r.waiting_s)}</td></tr>`);
  const finished = j.finished.map((r) => `<tr><td class="muted">${clock(r.at)}</td>` +
    `<td><span class="dot" style="background:${color(r.model)}"></span> ${esc(r.model)}</td>` +
    `<td class="status-${esc(r.status)}">${r.status === "ok" ? "ok" : esc(r.error || "error")}</td>` +
    `<td class="num">${secs(r.latency_s)}</td><td class="num muted">${r.tokens_per_s ? r.tokens_per_s.toFixed(0) + " t/s" : ""}</td></tr>`);
  $("jobs").innerHTML = col(`Running (${j.running.length})`, running, "Nothing running") +
    col(`Queued (oldest ${j.queued.length})`, queued, "Nothing queued") +
    col("Finished", finished, "No job finished in the last hour");
}

// --- batches ----------------------------------------------------------------------------------
function batchRow(b) {
  const pct = (n) => (b.total ? 100 * n / b.total : 0);
  const done = b.completed + b.failed;
  const when = b.ended_at ? `ended ${clock(b.ended_at)}` : `since ${clock(b.created_at)}`;
  return `<tr class="batch"><td class="model" title="${esc(b.id)}">${esc(b.id)}</td>` +
    `<td class="batch-${esc(b.status)}">${esc(b.status)}</td><td class="muted">${esc(b.endpoint)}</td>` +
    `<td class="prio-${esc(b.priority)}">${esc(b.priority)}</td>` +
    `<td><div class="pbar" title="${b.completed} completed, ${b.failed} failed of ${b.total}">` +
    `<div class="p-ok" style="width:${pct(b.completed)}%"></div><div class="p-bad" style="width:${pct(b.failed)}%"></div>` +
    `</div></td><td class="num">${done}/${b.total || "?"}${b.failed ? ` <span class="bad">${b.failed}✗</span>` : ""}</td>` +
    `<td class="muted">${when}</td></tr>`;
}
function renderBatches(s) {
  const b = s.batches || {live: [], finished: [], live_total: 0};
  $("batches-sub").textContent = b.live_total ? `${b.live_total} running` +
    (b.live_total > b.live.length ? `, oldest ${b.live.length} shown` : "") : "OpenAI Batch API";
  if (!b.live.length && !b.finished.length) {
    $("batches").innerHTML = `<div class="empty">No batch yet (POST /v1/batches, or mm batch submit)</div>`;
    return;
  }
  const head = `<tr><th>batch</th><th>status</th><th>endpoint</th><th>priority</th><th>progress</th>` +
    `<th class="num">done</th><th></th></tr>`;
  const running = b.live.length ? b.live.map(batchRow).join("")
    : `<tr><td colspan="7" class="empty">No batch running</td></tr>`;
  let html = `<table>${head}${running}`;
  if (b.finished.length) {
    html += `<tr><td colspan="7"><h3 class="spaced">Last finished</h3></td></tr>${b.finished.map(batchRow).join("")}`;
  }
  $("batches").innerHTML = html + `</table>`;
}

// --- polling ----------------------------------------------------------------------------------
let lastRollups = 0;
async function tick() {
  try {
    const [stats, jobs, health] = await Promise.all([api("/api/stats"), api("/api/jobs?n=12"), api("/api/health")]);
    learnModels([...Object.keys(stats.queues), ...stats.resources.loaded_models.map((m) => m.model)]);
    renderKpis(stats);
    renderNodes(stats);
    renderQueues(stats);
    renderAlerts(stats);
    renderBatches(stats);
    renderJobs(jobs);
    const pill = $("health");
    pill.className = "pill " + (health.status === "ok" ? "ok" : "degraded");
    pill.textContent = health.status;
    pill.title = (health.problems || []).join("; ");
    $("leader").textContent = stats.leader.owner ? "leader " + stats.leader.owner.split(":")[0] : "no leader";
    $("updated").textContent = "updated " + clock(stats.at);
    if (Date.now() - lastRollups > 10000) {
      const roll = await api("/api/rollups?resolution=minute&span_s=3600");
      renderLatency(roll);
      renderThroughput(roll);
      lastRollups = Date.now();
    }
    $("error").classList.add("hidden");
    $("auth").classList.add("hidden");
  } catch (err) {
    if (err.message === "unauthorized") {
      const pill = $("health");
      pill.className = "pill degraded";
      pill.textContent = "key needed";
    } else {
      $("error").textContent = "Cannot reach the gateway: " + err.message;
      $("error").classList.remove("hidden");
      const pill = $("health");
      pill.className = "pill down";
      pill.textContent = "unreachable";
    }
  }
}
$("key-save").addEventListener("click", () => {
  localStorage.setItem(KEY_STORE, $("key-input").value.trim());
  lastRollups = 0;
  tick();
});
$("key-button").addEventListener("click", () => {
  $("auth").classList.toggle("hidden");
  $("key-input").focus();
});
window.addEventListener("resize", () => { lastRollups = 0; });
tick();
setInterval(tick, 2000);
