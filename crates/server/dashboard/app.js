// Malaka dashboard: balances with alert levels, a live alerts feed, the job queue, recent
// movements. Plain JavaScript served by the binary itself: no build step, no CDN.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { token: null, role: null, lastId: null, ws: null, retry: 0, alerts: new Map(), balanceTimer: null, balanceNext: null, alertTimer: null, names: new Map(), posting: false, postKey: null, batchKey: null, suggestTimer: null, failedTimer: null };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

function toast(text) {
  const t = $("#toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: `Bearer ${state.token}` } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(`/api/v1${path}`, opts);
  const data = r.status === 204 ? null : await r.json().catch(() => null);
  if (!r.ok) {
    const err = new Error((data && data.error && data.error.message) || `HTTP ${r.status}`);
    err.status = r.status;
    throw err;
  }
  return data;
}

const when = (t) => (t ? new Date(t).toLocaleString() : "");
const level = (l) => el("span", { class: `level ${l}` }, l.replace(/_/g, " "));

// ---- balances --------------------------------------------------------------------------------

// Balances come a page at a time (GET /balances answers `next`); "Show more" appends the
// next page, and a live refresh reloads as many rows as are shown (up to 1,000).
const PAGE = 100;

function balanceQuery() {
  const q = new URLSearchParams();
  for (const [id, key] of [["#f-sku", "sku"], ["#f-warehouse", "warehouse"], ["#f-level", "level"]]) {
    const v = $(id).value.trim();
    if (v) q.set(key, v);
  }
  return q;
}

function balanceRow(b, old) {
  const key = `${b.sku}\u0000${b.warehouse}`;
  const row = el("tr", { "data-key": key, "data-qty": b.qty, "data-level": b.level },
    el("td", {}, el("span", { class: "sku" }, b.sku), " ", el("span", { class: "name" }, b.name)),
    el("td", {}, b.warehouse), el("td", { class: "num" }, b.qty),
    el("td", { class: "num" }, b.min_qty), el("td", { class: "num" }, b.value), el("td", {}, level(b.level)));
  if (old.has(key) && old.get(key) !== b.qty) row.classList.add("flash");
  return row;
}

async function fetchBalances(q) {
  try {
    return await api("GET", `/balances?${q}`);
  } catch (e) {
    if (e.status === 422) { toast(e.message); return null; }
    throw e;
  }
}

async function loadBalances() {
  const body = $("#balances tbody");
  const q = balanceQuery();
  q.set("limit", String(Math.min(1000, Math.max(PAGE, body.rows.length))));
  const page = await fetchBalances(q);
  if (!page) return;
  const old = new Map([...body.rows].map((r) => [r.dataset.key, r.dataset.qty]));
  for (const b of page.items) state.names.set(b.sku, b.name);
  body.replaceChildren(...page.items.map((b) => balanceRow(b, old)));
  state.balanceNext = page.next;
  $("#balances-more").hidden = !page.next;
}

async function moreBalances() {
  if (!state.balanceNext) return;
  const q = balanceQuery();
  q.set("limit", String(PAGE));
  q.set("cursor", state.balanceNext);
  const page = await fetchBalances(q);
  if (!page) return;
  for (const b of page.items) state.names.set(b.sku, b.name);
  $("#balances tbody").append(...page.items.map((b) => balanceRow(b, new Map())));
  state.balanceNext = page.next;
  $("#balances-more").hidden = !page.next;
}

function balancesSoon() {
  clearTimeout(state.balanceTimer);
  state.balanceTimer = setTimeout(() => loadBalances().catch(failed), 150);
}

// ---- alerts ----------------------------------------------------------------------------------

function renderAlerts() {
  const open = [...state.alerts.values()].filter((a) => a.state === "open").sort((a, b) => b.id - a.id);
  const canAck = state.role !== "viewer";
  $("#alerts-feed").replaceChildren(...open.map((a) => {
    const li = el("li", { "data-alert-id": a.id, "data-level": a.level, class: a.fresh ? "flash" : "" },
      level(a.level),
      el("span", { class: "what" }, alertText(a)),
      el("span", { class: "when" }, when(a.updated_at)));
    if (a.acknowledged_by) li.append(el("span", { class: "when" }, `ack ${a.acknowledged_by}`));
    else if (canAck) li.append(el("button", { class: "small ghost", onclick: () => ack(a.id) }, "Acknowledge"));
    a.fresh = false;
    return li;
  }));
  $("#alerts-count").textContent = String(open.length);
  $("#alerts-empty").hidden = open.length > 0;
}

// What an alert says: the article with its name, the quantity now, and the one at which it
// reached its level when that differs.
function alertText(a) {
  const name = a.name || state.names.get(a.sku);
  const now = a.current_qty ?? a.qty;
  const then = now !== a.qty ? `, ${a.qty} when it became ${a.level.replace(/_/g, " ")}` : "";
  return `${a.sku}${name ? ` (${name})` : ""} in ${a.warehouse}: ${now} left${then} (min ${a.min_qty})`;
}

function alertsSoon() {
  clearTimeout(state.alertTimer);
  state.alertTimer = setTimeout(() => loadAlerts().catch(failed), 300);
}

async function loadAlerts() {
  const page = await api("GET", "/alerts?state=open&limit=200");
  state.alerts = new Map(page.items.map((a) => [a.id, a]));
  renderAlerts();
}

async function ack(id) {
  try {
    const a = await api("POST", `/alerts/${id}/ack`);
    state.alerts.set(a.id, a);
    renderAlerts();
  } catch (e) { toast(`Acknowledge failed: ${e.message}`); }
}

function onAlert(data) {
  const a = data.alert;
  const shown = {
    id: a.id, sku: a.sku, warehouse: a.warehouse, level: a.level, qty: a.qty, current_qty: a.qty, min_qty: a.min_qty,
    name: state.alerts.get(a.id)?.name,
    updated_at: a.updated_at, acknowledged_by: a.acknowledged_by,
    state: a.cleared_at ? "closed" : "open", fresh: data.action !== "acknowledged",
  };
  state.alerts.set(a.id, shown);
  renderAlerts();
  if (data.action === "raised" || data.action === "escalated") toast(`${a.level.replace(/_/g, " ")}: ${a.sku} in ${a.warehouse}`);
}

// ---- jobs ------------------------------------------------------------------------------------

function renderQueues(data) {
  $("#queues tbody").replaceChildren(...data.queues.map((q) => {
    const c = q.counts;
    const age = q.oldest_available_seconds == null ? "" : `${q.oldest_available_seconds.toFixed(1)} s`;
    return el("tr", { "data-queue": q.queue }, el("td", {}, q.queue),
      el("td", { class: "num" }, c.available + c.scheduled), el("td", { class: "num" }, c.running),
      el("td", { class: "num" }, c.retryable), el("td", { class: "num" }, c.discarded + c.cancelled), el("td", { class: "num" }, age));
  }));
}

async function loadJobs() {
  renderQueues(await api("GET", "/jobs/stats"));
  const failed = await api("GET", "/jobs?state=discarded,cancelled&limit=20");
  const canRetry = state.role === "admin" || state.role === "manager";
  $("#failed").replaceChildren(...failed.items.map((j) => {
    const last = j.errors.length ? j.errors[j.errors.length - 1].error : "";
    const li = el("li", { "data-job-id": j.id },
      el("span", { class: "what" }, `#${j.id} ${j.kind} (${j.queue}) ${j.state} after ${j.attempt} attempt${j.attempt === 1 ? "" : "s"}`),
      el("span", { class: "when" }, when(j.finished_at)));
    if (canRetry) li.append(el("button", { class: "small", onclick: () => retry(j.id) }, "Retry"));
    if (last) li.append(el("span", { class: "err" }, last));
    return li;
  }));
  $("#failed-empty").hidden = failed.items.length > 0;
  const waiting = await api("GET", "/jobs?state=available,scheduled,retryable,running&limit=10");
  $("#waiting").replaceChildren(...waiting.items.map((j) => {
    const li = el("li", { "data-job-id": j.id },
      el("span", { class: "what" }, `#${j.id} ${j.kind} (${j.queue}) ${j.state}${j.cancel_requested ? ", stopping" : ""}`),
      el("span", { class: "when" }, j.state === "running" ? `since ${when(j.attempted_at)}` : `runs ${when(j.run_at)}`));
    if (canRetry && !j.cancel_requested) li.append(el("button", { class: "small ghost", onclick: () => cancelJob(j.id) }, "Cancel"));
    return li;
  }));
  $("#waiting-empty").hidden = waiting.items.length > 0;
}

async function cancelJob(id) {
  try {
    await api("POST", `/jobs/${id}/cancel`);
    toast(`Job ${id} cancelled`);
    await loadJobs();
  } catch (e) { toast(`Cancel failed: ${e.message}`); }
}

function jobsSoon() {
  clearTimeout(state.failedTimer);
  state.failedTimer = setTimeout(() => loadJobs().catch(failed), 300);
}

async function retry(id) {
  try {
    await api("POST", `/jobs/${id}/retry`);
    toast(`Job ${id} will run again`);
    await loadJobs();
  } catch (e) { toast(`Retry failed: ${e.message}`); }
}

// ---- integrations -----------------------------------------------------------------------------

function canManage() {
  return state.role === "admin" || state.role === "manager";
}

async function loadIntegrations() {
  $("#integrations").hidden = !canManage();
  if (!canManage()) return;
  const wanted = ["parked", "retrying", "dead_lettered", "refused"];
  const pages = await Promise.all(wanted.map((s) => api("GET", `/inbox?state=${s}&limit=10`)));
  const records = pages.flatMap((p) => p.items).sort((a, b) => b.id - a.id).slice(0, 20);
  $("#inbox").replaceChildren(...records.map((r) => {
    const last = r.errors.length ? r.errors[r.errors.length - 1].error : "";
    const li = el("li", { "data-inbox-id": r.id },
      el("span", { class: "what" }, `${r.kind} ${r.message_id} from ${r.source}: ${r.state} after ${r.attempts} attempt${r.attempts === 1 ? "" : "s"}`),
      el("span", { class: "when" }, when(r.updated_at)));
    if (r.replayable) li.append(el("button", { class: "small", onclick: () => replayInbox(r.id) }, "Replay"));
    if (last) li.append(el("span", { class: "err" }, last));
    return li;
  }));
  $("#inbox-empty").hidden = records.length > 0;
  const failures = await api("GET", "/events/failures?limit=20");
  const open = failures.items.filter((f) => f.state !== "resolved");
  $("#deliveries").replaceChildren(...open.map((f) => {
    const last = f.errors.length ? f.errors[f.errors.length - 1].error : "";
    const li = el("li", { "data-failure-id": f.id },
      el("span", { class: "what" }, `${f.topic} to ${f.listener}: ${f.state} after ${f.attempts} attempt${f.attempts === 1 ? "" : "s"}`),
      el("span", { class: "when" }, when(f.updated_at)),
      el("button", { class: "small", onclick: () => replayFailure(f.id) }, "Replay"));
    if (last) li.append(el("span", { class: "err" }, last));
    return li;
  }));
  $("#deliveries-empty").hidden = open.length > 0;
}

async function replayInbox(id) {
  try {
    const r = await api("POST", `/inbox/${id}/replay`);
    toast(r.state === "processed" ? `Command ${r.message_id} posted` : `Command ${r.message_id}: ${r.state}`);
    await loadIntegrations();
  } catch (e) { toast(`Replay failed: ${e.message}`); }
}

async function replayFailure(id) {
  try {
    const f = await api("POST", `/events/failures/${id}/replay`);
    toast(f.state === "resolved" ? "Delivered" : `Still failing: ${f.state}`);
    await loadIntegrations();
  } catch (e) { toast(`Replay failed: ${e.message}`); }
}

// ---- movements -------------------------------------------------------------------------------

function movementRow(r, fresh) {
  return el("tr", { class: fresh ? "flash" : "" }, el("td", {}, when(r.posted_at || r.at)), el("td", {}, r.type),
    el("td", {}, r.sku), el("td", {}, r.warehouse), el("td", { class: "num" }, r.qty_change), el("td", { class: "num" }, r.qty_after),
    el("td", {}, r.posted_by || r.by || ""));
}

async function loadMovements() {
  const page = await api("GET", "/ledger/recent?limit=20");
  $("#movements tbody").replaceChildren(...page.items.map((r) => movementRow(r, false)));
}

function onMovement(m) {
  const body = $("#movements tbody");
  for (const r of m.rows || []) {
    body.prepend(movementRow({ type: m.type, sku: m.sku, warehouse: r.warehouse, qty_change: r.qty_change, qty_after: r.qty_after, at: m.at, by: m.by }, true));
  }
  while (body.rows.length > 20) body.deleteRow(-1);
  balancesSoon();
}

// ---- reports ---------------------------------------------------------------------------------

async function loadReports() {
  const page = await api("GET", "/reports?limit=10");
  const mayDelete = (r) => state.role === "admin" || r.requested_by === state.name;
  $("#reports").replaceChildren(...page.items.map((r) => {
    const li = el("li", { "data-report-id": r.id, "data-state": r.state },
      el("span", { class: "what" }, `${r.type.replace(/_/g, " ")} (${r.format})${r.rows != null ? `, ${r.rows} rows` : ""}`),
      el("span", { class: "when" }, when(r.created_at)));
    if (r.state === "running" || r.state === "queued") {
      li.append(el("progress", { max: "100", value: String(r.progress) }));
    } else if (r.state === "completed") {
      li.append(el("button", { class: "small", onclick: () => downloadReport(r) }, "Download"));
    } else {
      li.append(el("span", { class: "when" }, r.state + (r.error ? `: ${r.error}` : "")));
    }
    if (mayDelete(r)) {
      const label = r.state === "running" || r.state === "queued" ? "Cancel" : "Delete";
      li.append(el("button", { class: "small ghost", onclick: () => deleteReport(r.id) }, label));
    }
    return li;
  }));
  $("#reports-empty").hidden = page.items.length > 0;
  clearTimeout(state.reportTimer);
  if (page.items.some((r) => r.state === "running" || r.state === "queued")) {
    state.reportTimer = setTimeout(() => loadReports().catch(failed), 1000);
  }
}

async function downloadReport(r) {
  const resp = await fetch(r.download, { headers: { Authorization: `Bearer ${state.token}` } });
  if (!resp.ok) { toast(`Download failed: HTTP ${resp.status}`); return; }
  const url = URL.createObjectURL(await resp.blob());
  const a = el("a", { href: url, download: `${r.type}-${r.id}.${r.format}` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function deleteReport(id) {
  try {
    await api("DELETE", `/reports/${id}`);
    await loadReports();
  } catch (e) { toast(`Failed: ${e.message}`); }
}

$("#report-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const params = {};
  const sku = $("#r-sku").value.trim();
  if (sku) params.sku = sku;
  if ($("#r-from").value) params.from = `${$("#r-from").value}T00:00:00Z`;
  if ($("#r-to").value) params.to = `${$("#r-to").value}T00:00:00Z`;
  try {
    await api("POST", "/reports", { type: $("#r-type").value, format: $("#r-format").value, params });
    await loadReports();
  } catch (e) { toast(`Report refused: ${e.message}`); }
});

// ---- live ------------------------------------------------------------------------------------

function setLive(on) {
  const l = $("#live");
  l.className = `live ${on ? "on" : "off"}`;
  l.textContent = on ? "live" : "reconnecting…";
}

async function connect() {
  if (!state.token) return;
  let ticket;
  try {
    ticket = (await api("POST", "/ws/ticket")).ticket;
  } catch (e) {
    if (e.status === 401) { signOut("Your token is no longer valid."); return; }
    return reconnectLater();
  }
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const q = new URLSearchParams({ ticket });
  if (state.lastId != null) q.set("since", String(state.lastId));
  const ws = new WebSocket(`${proto}://${location.host}/api/v1/ws?${q}`, ["malaka.v1"]);
  state.ws = ws;
  ws.onopen = () => { state.retry = 0; setLive(true); };
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.id != null) state.lastId = m.id;
    switch (m.type) {
      case "stock_alert": onAlert(m.data); balancesSoon(); break;
      case "stock_changed": onMovement(m.data); if (state.alerts.size) alertsSoon(); break;
      case "job_update": renderQueues(m.data); jobsSoon(); break;
      case "report_ready": toast(`Report ready: ${(m.data.kind || "").replace(/_/g, " ")}`); loadReports().catch(failed); break;
      case "resync": state.lastId = null; loadAll().catch(failed); break;
      default: break;
    }
  };
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    setLive(false);
    state.ws = null;
    if (state.token) reconnectLater(ev.code === 4001 ? 0 : undefined);
  };
}

function reconnectLater(delay) {
  const d = delay ?? Math.min(10000, 500 * 2 ** state.retry++);
  setTimeout(connect, d);
}

// ---- sign in ---------------------------------------------------------------------------------

function failed(e) {
  if (e && e.status === 401) signOut("Your token is no longer valid.");
  else toast(e && e.message ? e.message : String(e));
}

// ---- posting -----------------------------------------------------------------------------------
// One form for receipts, issues, transfers and counts, keyboard- and scanner-first: Enter posts,
// and focus returns to the article for the next line. Each submission carries its own
// Idempotency-Key (kept while it is retried), and the button is disabled while it is in flight,
// so a double click or a retry posts once. An error naming a field is shown beside it.

const mayPost = () => state.role !== null && state.role !== "viewer";

function postShape() {
  const type = $("#p-type").value;
  $("#p-to-label").hidden = type !== "transfer";
  $("#p-cost-label").hidden = type !== "receipt" && type !== "count";
}

async function loadPostForm() {
  $("#post").hidden = !mayPost();
  if (!mayPost()) return;
  const page = await api("GET", "/warehouses?limit=1000");
  const options = () => page.items.map((w) => el("option", { value: w.code }, `${w.code} ${w.name}`));
  $("#p-warehouse").replaceChildren(...options());
  $("#p-to").replaceChildren(...options());
  postShape();
}

async function suggestArticles() {
  const text = $("#p-sku").value.trim();
  if (!text) return;
  const page = await api("GET", `/articles?limit=20&q=${encodeURIComponent(text)}`);
  $("#p-articles").replaceChildren(...page.items.map((a) => el("option", { value: a.sku }, a.name)));
}

function clearPostErrors() {
  for (const e of document.querySelectorAll("#post-form .field-error")) e.textContent = "";
  $("#post-error").textContent = "";
}

async function submitPost() {
  if (state.posting) return; // one submission at a time: a double click posts once
  clearPostErrors();
  const type = $("#p-type").value;
  const body = { type, sku: $("#p-sku").value.trim(), warehouse: $("#p-warehouse").value, qty: $("#p-qty").value.trim() };
  if (type === "transfer") body.to_warehouse = $("#p-to").value;
  const cost = $("#p-cost").value.trim();
  if ((type === "receipt" || type === "count") && cost) body.unit_cost = cost;
  const ref = $("#p-ref").value.trim();
  if (ref) body.reference = ref;
  const key = JSON.stringify(body);
  if (!state.postKey || state.postKey.body !== key) state.postKey = { body: key, id: crypto.randomUUID() };
  state.posting = true;
  $("#p-submit").disabled = true;
  try {
    const r = await fetch("/api/v1/movements", {
      method: "POST",
      headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json", "Idempotency-Key": state.postKey.id },
      body: key,
    });
    const data = await r.json().catch(() => null);
    if (!r.ok) {
      const err = (data && data.error) || {};
      const field = err.field && document.querySelector(`#post-form .field-error[data-field="${err.field}"]`);
      (field || $("#post-error")).textContent = err.message || `HTTP ${r.status}`;
      if (r.status >= 400 && r.status < 500) state.postKey = null; // refused: a new attempt is a new posting
      return;
    }
    state.postKey = null;
    toast(`Posted: ${type} of ${body.qty} ${body.sku} in ${body.warehouse}`);
    $("#p-qty").value = "";
    $("#p-sku").value = "";
    $("#p-sku").focus();
  } catch (e) {
    $("#post-error").textContent = `Not sent (${e.message}); press Enter to try again.`;
  } finally {
    state.posting = false;
    $("#p-submit").disabled = false;
  }
}

// Many lines as one batch (POST /movements/batch, all or nothing): a line's error is shown with
// its line number; one naming no field marks the lines of the article it names.
function batchLines() {
  const type = $("#p-type").value;
  const lines = $("#b-lines").value.split("\n").map((l) => l.trim()).filter((l) => l);
  return lines.map((l) => {
    const [sku, qty, cost] = l.split(/[\s,;]+/);
    const m = { type, sku, warehouse: $("#p-warehouse").value, qty: qty || "1" };
    if (type === "transfer") m.to_warehouse = $("#p-to").value;
    if ((type === "receipt" || type === "count") && (cost || $("#p-cost").value.trim())) m.unit_cost = cost || $("#p-cost").value.trim();
    const ref = $("#p-ref").value.trim();
    if (ref) m.reference = ref;
    return m;
  });
}

async function submitBatch() {
  if (state.posting) return;
  $("#b-errors").replaceChildren();
  const movements = batchLines();
  if (!movements.length) return;
  const key = JSON.stringify({ movements });
  if (!state.batchKey || state.batchKey.body !== key) state.batchKey = { body: key, id: crypto.randomUUID() };
  state.posting = true;
  $("#b-submit").disabled = true;
  try {
    const r = await fetch("/api/v1/movements/batch", {
      method: "POST",
      headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json", "Idempotency-Key": state.batchKey.id },
      body: key,
    });
    const data = await r.json().catch(() => null);
    if (!r.ok) {
      const err = (data && data.error) || {};
      const at = /^movements\[(\d+)\]/.exec(err.field || "");
      const lines = at ? [Number(at[1])]
        : movements.map((m, i) => ((err.message || "").includes(` ${m.sku} `) ? i : -1)).filter((i) => i >= 0);
      const items = lines.length
        ? lines.map((i) => el("li", { "data-line": i + 1 }, `Line ${i + 1} (${movements[i].sku}): ${err.message}`))
        : [el("li", {}, err.message || `HTTP ${r.status}`)];
      $("#b-errors").replaceChildren(...items, el("li", {}, "Nothing was posted."));
      if (r.status >= 400 && r.status < 500) state.batchKey = null;
      return;
    }
    state.batchKey = null;
    toast(`Posted ${movements.length} lines`);
    $("#b-lines").value = "";
    $("#b-lines").focus();
  } catch (e) {
    $("#b-errors").replaceChildren(el("li", {}, `Not sent (${e.message}); try again.`));
  } finally {
    state.posting = false;
    $("#b-submit").disabled = false;
  }
}

$("#b-submit").addEventListener("click", () => submitBatch());
$("#p-type").addEventListener("change", postShape);
$("#p-sku").addEventListener("input", () => { clearTimeout(state.suggestTimer); state.suggestTimer = setTimeout(() => suggestArticles().catch(failed), 150); });
$("#post-form").addEventListener("submit", (ev) => { ev.preventDefault(); submitPost(); });
// A scanner types the SKU and Enter: with no quantity yet, Enter moves on to it.
$("#p-sku").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !$("#p-qty").value.trim()) { ev.preventDefault(); $("#p-qty").focus(); }
});

async function loadAll() {
  await Promise.all([loadBalances(), loadAlerts(), loadJobs(), loadMovements(), loadReports(), loadIntegrations(), loadPostForm()]);
}

async function signIn(token) {
  state.token = token;
  const me = await api("GET", "/me").catch((e) => { if (e.status === 404) return null; throw e; });
  state.role = me ? me.role : null;
  state.name = me ? me.name : null;
  $("#who").textContent = me ? `${me.name} (${me.role})` : "";
  await loadAll();
  localStorage.setItem("malaka.token", token);
  $("#signin").hidden = true;
  $("#app").hidden = false;
  $("#signout").hidden = false;
  connect();
  clearInterval(state.integrationsTimer);
  state.integrationsTimer = setInterval(() => { if (state.token) loadIntegrations().catch(failed); }, 10000);
}

function signOut(message) {
  state.token = null;
  localStorage.removeItem("malaka.token");
  if (state.ws) { const ws = state.ws; state.ws = null; ws.close(); }
  $("#app").hidden = true;
  $("#signout").hidden = true;
  $("#who").textContent = "";
  $("#signin").hidden = false;
  $("#signin-error").textContent = message || "";
  setLive(false);
  $("#live").textContent = "offline";
}

$("#signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("#signin-error").textContent = "";
  try {
    await signIn($("#token").value.trim());
  } catch (e) {
    state.token = null;
    $("#signin-error").textContent = e.status === 401 ? "That token is not valid." : e.message;
  }
});
$("#signout").addEventListener("click", () => signOut());
// New filters start again from the first page.
const refilter = () => { $("#balances tbody").replaceChildren(); balancesSoon(); };
for (const id of ["#f-sku", "#f-warehouse"]) $(id).addEventListener("input", refilter);
$("#f-level").addEventListener("change", refilter);
$("#balances-more").addEventListener("click", () => moreBalances().catch(failed));
$("#filters").addEventListener("submit", (ev) => ev.preventDefault());

const saved = localStorage.getItem("malaka.token");
if (saved) signIn(saved).catch(() => signOut());
else signOut();
