// The overview (`#/`): the live monitor. Open alerts, stock levels, the job queue, reports,
// integrations (parked commands, failed deliveries) and recent movements, kept current by the
// WebSocket.

import { $, api, el, session, toast, failed, may, when, levelBadge, articleLink, downloadReport } from "../core.js";

const MARKUP = `
<h2 class="page-title" id="page-h">Overview</h2>
<div class="grid">
  <section class="card alerts" aria-labelledby="alerts-h">
    <h2 id="alerts-h">Alerts <span id="alerts-count" class="badge">0</span></h2>
    <ul id="alerts-feed" class="feed" aria-live="polite"></ul>
    <p id="alerts-empty" class="muted">No open alerts.</p>
  </section>
  <section class="card balances" aria-labelledby="balances-h">
    <h2 id="balances-h">Stock</h2>
    <form id="filters" class="filters">
      <input id="f-sku" placeholder="Article" aria-label="Filter by article">
      <input id="f-warehouse" placeholder="Warehouse" aria-label="Filter by warehouse">
      <select id="f-level" aria-label="Filter by level">
        <option value="">All levels</option>
        <option>OUT_OF_STOCK</option><option>CRITICAL</option><option>LOW</option><option>NORMAL</option>
      </select>
    </form>
    <div class="scroll" tabindex="0" role="region" aria-label="Stock table">
      <table id="balances">
        <thead><tr><th>Article</th><th>Warehouse</th><th class="num">Qty</th><th class="num">Min</th><th class="num">Value</th><th>Level</th></tr></thead>
        <tbody></tbody>
      </table>
      <button id="balances-more" type="button" hidden>Show more</button>
    </div>
  </section>
  <section class="card jobs" aria-labelledby="jobs-h">
    <h2 id="jobs-h">Jobs</h2>
    <div class="scroll" tabindex="0" role="region" aria-label="Job queues table">
      <table id="queues">
        <thead><tr><th>Queue</th><th class="num">Waiting</th><th class="num">Running</th><th class="num">Retrying</th><th class="num">Failed</th><th class="num">Oldest wait</th></tr></thead>
        <tbody></tbody>
      </table>
    </div>
    <h3>Waiting and running</h3>
    <ul id="waiting" class="feed"></ul>
    <p id="waiting-empty" class="muted">None.</p>
    <h3>Failed jobs</h3>
    <ul id="failed" class="feed"></ul>
    <p id="failed-empty" class="muted">None.</p>
  </section>
  <section class="card reports" aria-labelledby="reports-h">
    <h2 id="reports-h">Reports</h2>
    <form id="report-form" class="filters">
      <select id="r-type" aria-label="Report">
        <option value="stock_balance">Stock balance</option>
        <option value="valuation">Valuation</option>
        <option value="low_stock">Low stock</option>
        <option value="ageing">Ageing</option>
        <option value="ledger">Ledger</option>
      </select>
      <select id="r-format" aria-label="Format"><option>csv</option><option>json</option></select>
      <input id="r-sku" placeholder="Article (all)" aria-label="Report article">
      <input id="r-from" type="date" aria-label="Ledger from">
      <input id="r-to" type="date" aria-label="Ledger to">
      <button type="submit">Request</button>
    </form>
    <ul id="reports" class="feed"></ul>
    <p id="reports-empty" class="muted">No reports yet.</p>
  </section>
  <section id="integrations" class="card integrations" aria-labelledby="integrations-h" hidden>
    <h2 id="integrations-h">Integrations</h2>
    <h3>Inbox: waiting and parked commands</h3>
    <ul id="inbox" class="feed"></ul>
    <p id="inbox-empty" class="muted">Nothing waiting.</p>
    <h3>Failed event deliveries</h3>
    <ul id="deliveries" class="feed"></ul>
    <p id="deliveries-empty" class="muted">None.</p>
  </section>
  <section class="card movements" aria-labelledby="movements-h">
    <h2 id="movements-h">Recent movements</h2>
    <div class="scroll" tabindex="0" role="region" aria-label="Recent movements table">
      <table id="movements">
        <thead><tr><th>When</th><th>Type</th><th>Article</th><th>Warehouse</th><th class="num">Change</th><th class="num">After</th><th>By</th></tr></thead>
        <tbody></tbody>
      </table>
    </div>
  </section>
</div>`;

// Balances come a page at a time (GET /balances answers `next`); "Show more" appends the
// next page, and a live refresh reloads as many rows as are shown (up to 1,000).
const PAGE = 100;

export default {
  title: () => "Overview",
  async mount(root) {
    root.innerHTML = MARKUP;
    const st = { alerts: new Map(), names: new Map(), balanceNext: null, timers: new Set(), gone: false };
    const later = (fn, ms) => {
      const t = setTimeout(() => { st.timers.delete(t); if (!st.gone) fn().catch(failed); }, ms);
      st.timers.add(t);
      return t;
    };
    const soon = (key, fn, ms) => { clearTimeout(st[key]); st.timers.delete(st[key]); st[key] = later(fn, ms); };

    // ---- balances ----
    const balanceQuery = () => {
      const q = new URLSearchParams();
      for (const [id, key] of [["#f-sku", "sku"], ["#f-warehouse", "warehouse"], ["#f-level", "level"]]) {
        const v = $(id, root).value.trim();
        if (v) q.set(key, v);
      }
      return q;
    };
    const balanceRow = (b, old) => {
      const key = `${b.sku}\u0000${b.warehouse}`;
      const row = el("tr", { "data-key": key, "data-qty": b.qty, "data-level": b.level },
        el("td", {}, articleLink(b.sku, b.name)),
        el("td", {}, b.warehouse), el("td", { class: "num" }, b.qty),
        el("td", { class: "num" }, b.min_qty), el("td", { class: "num" }, b.value), el("td", {}, levelBadge(b.level)));
      if (old.has(key) && old.get(key) !== b.qty) row.classList.add("flash");
      return row;
    };
    const fetchBalances = async (q) => {
      try {
        return await api("GET", `/balances?${q}`);
      } catch (e) {
        if (e.status === 422) { toast(e.message); return null; }
        throw e;
      }
    };
    const body = $("#balances tbody", root);
    const loadBalances = async () => {
      const q = balanceQuery();
      q.set("limit", String(Math.min(1000, Math.max(PAGE, body.rows.length))));
      const page = await fetchBalances(q);
      if (!page) return;
      const old = new Map([...body.rows].map((r) => [r.dataset.key, r.dataset.qty]));
      for (const b of page.items) st.names.set(b.sku, b.name);
      body.replaceChildren(...page.items.map((b) => balanceRow(b, old)));
      st.balanceNext = page.next;
      $("#balances-more", root).hidden = !page.next;
    };
    const moreBalances = async () => {
      if (!st.balanceNext) return;
      const q = balanceQuery();
      q.set("limit", String(PAGE));
      q.set("cursor", st.balanceNext);
      const page = await fetchBalances(q);
      if (!page) return;
      for (const b of page.items) st.names.set(b.sku, b.name);
      body.append(...page.items.map((b) => balanceRow(b, new Map())));
      st.balanceNext = page.next;
      $("#balances-more", root).hidden = !page.next;
    };
    const balancesSoon = () => soon("balanceTimer", loadBalances, 150);

    // ---- alerts ----
    // What an alert says: the article with its name, the quantity now, and the one at which it
    // reached its level when that differs.
    const alertText = (a) => {
      const name = a.name || st.names.get(a.sku);
      const now = a.current_qty ?? a.qty;
      const then = now !== a.qty ? `, ${a.qty} when it became ${a.level.replace(/_/g, " ")}` : "";
      return `${a.sku}${name ? ` (${name})` : ""} in ${a.warehouse}: ${now} left${then} (min ${a.min_qty})`;
    };
    const renderAlerts = () => {
      const open = [...st.alerts.values()].filter((a) => a.state === "open").sort((a, b) => b.id - a.id);
      $("#alerts-feed", root).replaceChildren(...open.map((a) => {
        const li = el("li", { "data-alert-id": a.id, "data-level": a.level, class: a.fresh ? "flash" : "" },
          levelBadge(a.level),
          el("a", { class: "what", href: `#/articles/${encodeURIComponent(a.sku)}` }, alertText(a)),
          el("span", { class: "when" }, when(a.updated_at)));
        if (a.acknowledged_by) li.append(el("span", { class: "when" }, `ack ${a.acknowledged_by}`));
        else if (may.post()) li.append(el("button", { class: "small ghost", onclick: () => ack(a.id) }, "Acknowledge"));
        a.fresh = false;
        return li;
      }));
      $("#alerts-count", root).textContent = String(open.length);
      $("#alerts-empty", root).hidden = open.length > 0;
    };
    const loadAlerts = async () => {
      const page = await api("GET", "/alerts?state=open&limit=200");
      st.alerts = new Map(page.items.map((a) => [a.id, a]));
      renderAlerts();
    };
    const ack = async (id) => {
      try {
        const a = await api("POST", `/alerts/${id}/ack`);
        st.alerts.set(a.id, a);
        renderAlerts();
      } catch (e) { toast(`Acknowledge failed: ${e.message}`); }
    };
    const onAlert = (data) => {
      const a = data.alert;
      st.alerts.set(a.id, {
        id: a.id, sku: a.sku, warehouse: a.warehouse, level: a.level, qty: a.qty, current_qty: a.qty, min_qty: a.min_qty,
        name: st.alerts.get(a.id)?.name, updated_at: a.updated_at, acknowledged_by: a.acknowledged_by,
        state: a.cleared_at ? "closed" : "open", fresh: data.action !== "acknowledged",
      });
      renderAlerts();
    };

    // ---- jobs ----
    const renderQueues = (data) => {
      $("#queues tbody", root).replaceChildren(...data.queues.map((q) => {
        const c = q.counts;
        const age = q.oldest_available_seconds == null ? "" : `${q.oldest_available_seconds.toFixed(1)} s`;
        return el("tr", { "data-queue": q.queue }, el("td", {}, q.queue),
          el("td", { class: "num" }, c.available + c.scheduled), el("td", { class: "num" }, c.running),
          el("td", { class: "num" }, c.retryable), el("td", { class: "num" }, c.discarded + c.cancelled), el("td", { class: "num" }, age));
      }));
    };
    const jobAction = async (path, done) => {
      try {
        await api("POST", path);
        toast(done);
        await loadJobs();
      } catch (e) { toast(`Failed: ${e.message}`); }
    };
    const loadJobs = async () => {
      renderQueues(await api("GET", "/jobs/stats"));
      const failedJobs = await api("GET", "/jobs?state=discarded,cancelled&limit=20");
      $("#failed", root).replaceChildren(...failedJobs.items.map((j) => {
        const last = j.errors.length ? j.errors[j.errors.length - 1].error : "";
        const li = el("li", { "data-job-id": j.id },
          el("span", { class: "what" }, `#${j.id} ${j.kind} (${j.queue}) ${j.state} after ${j.attempt} attempt${j.attempt === 1 ? "" : "s"}`),
          el("span", { class: "when" }, when(j.finished_at)));
        if (may.manage()) li.append(el("button", { class: "small", onclick: () => jobAction(`/jobs/${j.id}/retry`, `Job ${j.id} will run again`) }, "Retry"));
        if (last) li.append(el("span", { class: "err" }, last));
        return li;
      }));
      $("#failed-empty", root).hidden = failedJobs.items.length > 0;
      const waiting = await api("GET", "/jobs?state=available,scheduled,retryable,running&limit=10");
      $("#waiting", root).replaceChildren(...waiting.items.map((j) => {
        const li = el("li", { "data-job-id": j.id },
          el("span", { class: "what" }, `#${j.id} ${j.kind} (${j.queue}) ${j.state}${j.cancel_requested ? ", stopping" : ""}`),
          el("span", { class: "when" }, j.state === "running" ? `since ${when(j.attempted_at)}` : `runs ${when(j.run_at)}`));
        if (may.manage() && !j.cancel_requested) li.append(el("button", { class: "small ghost", onclick: () => jobAction(`/jobs/${j.id}/cancel`, `Job ${j.id} cancelled`) }, "Cancel"));
        return li;
      }));
      $("#waiting-empty", root).hidden = waiting.items.length > 0;
    };

    // ---- integrations ----
    const replay = async (path, say) => {
      try {
        toast(say(await api("POST", path)));
        await loadIntegrations();
      } catch (e) { toast(`Replay failed: ${e.message}`); }
    };
    const loadIntegrations = async () => {
      $("#integrations", root).hidden = !may.manage();
      if (!may.manage()) return;
      const wanted = ["parked", "retrying", "dead_lettered", "refused"];
      const pages = await Promise.all(wanted.map((s) => api("GET", `/inbox?state=${s}&limit=10`)));
      const records = pages.flatMap((p) => p.items).sort((a, b) => b.id - a.id).slice(0, 20);
      $("#inbox", root).replaceChildren(...records.map((r) => {
        const last = r.errors.length ? r.errors[r.errors.length - 1].error : "";
        const li = el("li", { "data-inbox-id": r.id },
          el("span", { class: "what" }, `${r.kind} ${r.message_id} from ${r.source}: ${r.state} after ${r.attempts} attempt${r.attempts === 1 ? "" : "s"}`),
          el("span", { class: "when" }, when(r.updated_at)));
        if (r.replayable) {
          li.append(el("button", { class: "small", onclick: () => replay(`/inbox/${r.id}/replay`,
            (x) => (x.state === "processed" ? `Command ${x.message_id} posted` : `Command ${x.message_id}: ${x.state}`)) }, "Replay"));
        }
        if (last) li.append(el("span", { class: "err" }, last));
        return li;
      }));
      $("#inbox-empty", root).hidden = records.length > 0;
      const failures = await api("GET", "/events/failures?limit=20");
      const open = failures.items.filter((f) => f.state !== "resolved");
      $("#deliveries", root).replaceChildren(...open.map((f) => {
        const last = f.errors.length ? f.errors[f.errors.length - 1].error : "";
        const li = el("li", { "data-failure-id": f.id },
          el("span", { class: "what" }, `${f.topic} to ${f.listener}: ${f.state} after ${f.attempts} attempt${f.attempts === 1 ? "" : "s"}`),
          el("span", { class: "when" }, when(f.updated_at)),
          el("button", { class: "small", onclick: () => replay(`/events/failures/${f.id}/replay`,
            (x) => (x.state === "resolved" ? "Delivered" : `Still failing: ${x.state}`)) }, "Replay"));
        if (last) li.append(el("span", { class: "err" }, last));
        return li;
      }));
      $("#deliveries-empty", root).hidden = open.length > 0;
    };

    // ---- movements ----
    const movementRow = (r, fresh) => el("tr", { class: fresh ? "flash" : "" }, el("td", {}, when(r.posted_at || r.at)), el("td", {}, r.type),
      el("td", {}, articleLink(r.sku)), el("td", {}, r.warehouse), el("td", { class: "num" }, r.qty_change), el("td", { class: "num" }, r.qty_after),
      el("td", {}, r.posted_by || r.by || ""));
    const loadMovements = async () => {
      const page = await api("GET", "/ledger/recent?limit=20");
      $("#movements tbody", root).replaceChildren(...page.items.map((r) => movementRow(r, false)));
    };
    const onMovement = (m) => {
      const tbody = $("#movements tbody", root);
      for (const r of m.rows || []) {
        tbody.prepend(movementRow({ type: m.type, sku: m.sku, warehouse: r.warehouse, qty_change: r.qty_change, qty_after: r.qty_after, at: m.at, by: m.by }, true));
      }
      while (tbody.rows.length > 20) tbody.deleteRow(-1);
      balancesSoon();
    };

    // ---- reports ----
    const loadReports = async () => {
      const page = await api("GET", "/reports?limit=10");
      const mayDelete = (r) => session.role === "admin" || r.requested_by === session.name;
      $("#reports", root).replaceChildren(...page.items.map((r) => {
        const li = el("li", { "data-report-id": r.id, "data-state": r.state },
          el("span", { class: "what" }, `${r.type.replace(/_/g, " ")} (${r.format})${r.params && r.params.sku ? ` of ${r.params.sku}` : ""}${r.rows != null ? `, ${r.rows} rows` : ""}`),
          el("span", { class: "when" }, when(r.created_at)));
        if (r.state === "running" || r.state === "queued") {
          li.append(el("progress", { max: "100", value: String(r.progress), "aria-label": "progress" }));
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
      $("#reports-empty", root).hidden = page.items.length > 0;
      if (page.items.some((r) => r.state === "running" || r.state === "queued")) soon("reportTimer", loadReports, 1000);
    };
    const deleteReport = async (id) => {
      try {
        await api("DELETE", `/reports/${id}`);
        await loadReports();
      } catch (e) { toast(`Failed: ${e.message}`); }
    };
    $("#report-form", root).addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const params = {};
      const sku = $("#r-sku", root).value.trim();
      if (sku) params.sku = sku;
      if ($("#r-from", root).value) params.from = `${$("#r-from", root).value}T00:00:00Z`;
      if ($("#r-to", root).value) params.to = `${$("#r-to", root).value}T00:00:00Z`;
      try {
        await api("POST", "/reports", { type: $("#r-type", root).value, format: $("#r-format", root).value, params });
        await loadReports();
      } catch (e) { toast(`Report refused: ${e.message}`); }
    });

    // New filters start again from the first page.
    const refilter = () => { body.replaceChildren(); balancesSoon(); };
    for (const id of ["#f-sku", "#f-warehouse"]) $(id, root).addEventListener("input", refilter);
    $("#f-level", root).addEventListener("change", refilter);
    $("#balances-more", root).addEventListener("click", () => moreBalances().catch(failed));
    $("#filters", root).addEventListener("submit", (ev) => ev.preventDefault());

    const loadAll = () => Promise.all([loadBalances(), loadAlerts(), loadJobs(), loadMovements(), loadReports(), loadIntegrations()]);
    await loadAll();
    const poll = setInterval(() => loadIntegrations().catch(failed), 10000);
    return {
      leave() { st.gone = true; clearInterval(poll); for (const t of st.timers) clearTimeout(t); },
      onEvent(m) {
        switch (m.type) {
          case "stock_alert": onAlert(m.data); balancesSoon(); break;
          case "stock_changed": onMovement(m.data); if (st.alerts.size) soon("alertTimer", loadAlerts, 300); break;
          case "job_update": renderQueues(m.data); soon("jobTimer", loadJobs, 300); break;
          case "report_ready": toast(`Report ready: ${(m.data.kind || "").replace(/_/g, " ")}`); loadReports().catch(failed); break;
          case "resync": loadAll().catch(failed); break;
          default: break;
        }
      },
    };
  },
};
