// An article (`#/articles/SKU`): its stock per warehouse (quantity, value, rate, level), FIFO
// layers, the ledger (paged, filtered by warehouse and dates), its alerts, reports of it, and
// for managers the edit form and archive. Live: a posting of it reloads what it changed.

import { $, api, el, failed, toast, values, once, showError, clearErrors, pager, may, when, levelBadge, downloadReport } from "../core.js";
import { articleForm } from "./articles.js";

const MARKUP = `
<nav class="crumbs" aria-label="Breadcrumb"><a href="#/articles">Articles</a></nav>
<h2 class="page-title" id="art-title"><span class="sku" id="art-sku"></span> <span id="art-name"></span> <span id="art-archived" class="tag" hidden>archived</span></h2>
<p class="muted" id="art-facts"></p>
<div class="grid two">
  <section class="card" aria-labelledby="art-stock-h">
    <h3 id="art-stock-h">Stock by warehouse</h3>
    <div class="scroll" tabindex="0" role="region" aria-label="Stock by warehouse table">
      <table id="art-stock"><thead><tr><th>Warehouse</th><th class="num">Qty</th><th class="num">Value</th><th class="num">Rate</th><th>Level</th></tr></thead><tbody></tbody></table>
    </div>
    <p id="art-stock-empty" class="muted" hidden>No stock has been posted.</p>
  </section>
  <section class="card" aria-labelledby="art-layers-h">
    <h3 id="art-layers-h">FIFO layers</h3>
    <div class="scroll" tabindex="0" role="region" aria-label="FIFO layers table">
      <table id="art-layers"><thead><tr><th>Warehouse</th><th>Received</th><th class="num">Qty</th><th class="num">Rate</th></tr></thead><tbody></tbody></table>
    </div>
    <p id="art-layers-empty" class="muted" hidden></p>
  </section>
</div>
<section class="card" aria-labelledby="art-ledger-h">
  <h3 id="art-ledger-h">Ledger</h3>
  <form id="ledger-filters" class="filters">
    <select id="l-warehouse" aria-label="Ledger warehouse"><option value="">All warehouses</option></select>
    <label class="inline">From <input id="l-from" type="date"></label>
    <label class="inline">Before <input id="l-to" type="date"></label>
  </form>
  <div class="scroll" tabindex="0" role="region" aria-label="Ledger table">
    <table id="art-ledger"><thead><tr><th>Posted</th><th>Type</th><th>Warehouse</th><th class="num">Change</th><th class="num">Unit cost</th><th class="num">Value change</th><th class="num">Qty after</th><th class="num">Value after</th><th>Reference</th><th>By</th></tr></thead><tbody></tbody></table>
  </div>
  <p id="art-ledger-empty" class="muted" hidden>No ledger rows match.</p>
  <button id="art-ledger-more" type="button" hidden>Show more</button>
</section>
<div class="grid two">
  <section class="card" aria-labelledby="art-alerts-h">
    <h3 id="art-alerts-h">Alerts</h3>
    <ul id="art-alerts" class="feed"></ul>
    <p id="art-alerts-empty" class="muted" hidden>No alerts.</p>
  </section>
  <section class="card" aria-labelledby="art-reports-h">
    <h3 id="art-reports-h">Reports of this article</h3>
    <div class="filters" id="art-report-buttons"></div>
    <ul id="art-reports" class="feed"></ul>
    <p class="muted"><a href="#/">All reports are on the overview.</a></p>
  </section>
</div>
<section class="card" aria-labelledby="art-edit-h" id="art-edit" hidden>
  <h3 id="art-edit-h">Edit</h3>
  <div id="art-edit-form"></div>
  <div class="actions"><button id="art-archive" type="button" class="ghost"></button></div>
</section>`;

const REPORTS = [["ledger", "Ledger"], ["valuation", "Valuation"], ["stock_balance", "Stock balance"], ["ageing", "Ageing"]];

export default {
  title: (params) => params[0],
  async mount(root, [sku]) {
    root.innerHTML = MARKUP;
    const enc = encodeURIComponent(sku);
    let article = await api("GET", `/articles/${enc}`).catch((e) => {
      if (e.status === 404 || e.status === 422) return null;
      throw e;
    });
    if (!article) {
      root.replaceChildren(el("h2", { class: "page-title" }, "No such article"),
        el("p", {}, `There is no article ${sku}. `, el("a", { href: "#/articles" }, "Back to articles")));
      return {};
    }
    let gone = false;
    let hasPostings = false;

    const showHeader = () => {
      $("#art-sku", root).textContent = article.sku;
      $("#art-name", root).textContent = article.name;
      $("#art-archived", root).hidden = !article.archived;
      $("#art-facts", root).textContent = `Unit ${article.unit} · ${article.valuation === "fifo" ? "FIFO" : "Moving average"}${hasPostings ? " (locked)" : ""} · minimum ${article.min_qty} · reorder ${article.reorder_qty}${article.allow_negative ? " · may go negative" : ""}`;
    };

    // ---- stock and layers ----
    const loadStock = async () => {
      const [page, val] = await Promise.all([
        api("GET", `/balances?sku=${enc}&limit=1000`),
        api("GET", `/articles/${enc}/valuation`),
      ]);
      $("#art-stock tbody", root).replaceChildren(...page.items.map((b) => el("tr", { "data-warehouse": b.warehouse, "data-level": b.level },
        el("td", {}, b.warehouse), el("td", { class: "num" }, b.qty), el("td", { class: "num" }, b.value),
        el("td", { class: "num" }, b.rate), el("td", {}, levelBadge(b.level)))));
      $("#art-stock-empty", root).hidden = page.items.length > 0;
      const layers = val.warehouses.flatMap((w) => w.layers.map((l) => ({ ...l, warehouse: w.warehouse })));
      $("#art-layers tbody", root).replaceChildren(...layers.map((l) => el("tr", { "data-warehouse": l.warehouse },
        el("td", {}, l.warehouse), el("td", {}, l.received_at ? when(l.received_at) : ""), el("td", { class: "num" }, l.qty), el("td", { class: "num" }, l.rate))));
      const empty = $("#art-layers-empty", root);
      empty.hidden = layers.length > 0;
      empty.textContent = val.valuation === "fifo" ? "No open layers." : "Valued at the moving average: no layers are kept.";
      const warehouses = [...new Set(page.items.map((b) => b.warehouse))];
      const select = $("#l-warehouse", root);
      const chosen = select.value;
      select.replaceChildren(el("option", { value: "" }, "All warehouses"), ...warehouses.map((w) => el("option", { value: w, selected: w === chosen }, w)));
    };

    // ---- ledger ----
    const ledgerBody = $("#art-ledger tbody", root);
    const ledgerRow = (r) => el("tr", { "data-ledger-id": r.id, "data-type": r.type },
      el("td", {}, when(r.posted_at)), el("td", {}, r.type), el("td", {}, r.warehouse),
      el("td", { class: "num" }, r.qty_change), el("td", { class: "num" }, r.unit_cost), el("td", { class: "num" }, r.value_change),
      el("td", { class: "num" }, r.qty_after), el("td", { class: "num" }, r.value_after), el("td", {}, r.reference || ""), el("td", {}, r.posted_by));
    const loadLedger = pager({
      more: $("#art-ledger-more", root),
      cursor: "cursor",
      load: (cursor) => {
        const q = new URLSearchParams({ sku, limit: "50" });
        const w = $("#l-warehouse", root).value;
        if (w) q.set("warehouse", w);
        if ($("#l-from", root).value) q.set("from", $("#l-from", root).value);
        if ($("#l-to", root).value) q.set("to", $("#l-to", root).value);
        if (cursor) q.set("cursor", cursor);
        return api("GET", `/ledger?${q}`);
      },
      render: (items, append) => {
        if (append) ledgerBody.append(...items.map(ledgerRow));
        else ledgerBody.replaceChildren(...items.map(ledgerRow));
        $("#art-ledger-empty", root).hidden = ledgerBody.rows.length > 0;
      },
    });
    for (const id of ["#l-warehouse", "#l-from", "#l-to"]) {
      $(id, root).addEventListener("change", () => loadLedger().catch((e) => toast(e.message)));
    }
    $("#ledger-filters", root).addEventListener("submit", (ev) => ev.preventDefault());

    // ---- alerts ----
    const loadAlerts = async () => {
      const page = await api("GET", `/alerts?sku=${enc}&limit=50`);
      $("#art-alerts", root).replaceChildren(...page.items.map((a) => el("li", { "data-alert-id": a.id, "data-state": a.state },
        levelBadge(a.level),
        el("span", { class: "what" }, `${a.warehouse}: ${a.current_qty ?? a.qty} now, ${a.qty} when it became ${a.level.replace(/_/g, " ")} (min ${a.min_qty})`),
        el("span", { class: "when" }, a.state === "open" ? `raised ${when(a.raised_at)}` : `cleared ${when(a.cleared_at)}`))));
      $("#art-alerts-empty", root).hidden = page.items.length > 0;
    };

    // ---- reports of it ----
    const loadReports = async () => {
      const page = await api("GET", "/reports?limit=100");
      const mine = page.items.filter((r) => r.params && r.params.sku === article.sku).slice(0, 10);
      $("#art-reports", root).replaceChildren(...mine.map((r) => {
        const li = el("li", { "data-report-id": r.id, "data-state": r.state },
          el("span", { class: "what" }, `${r.type.replace(/_/g, " ")} (${r.format})`), el("span", { class: "when" }, when(r.created_at)));
        if (r.state === "completed") li.append(el("button", { class: "small", onclick: () => downloadReport(r) }, "Download"));
        else li.append(el("span", { class: "when" }, r.state));
        return li;
      }));
      if (!gone && mine.some((r) => r.state === "queued" || r.state === "running")) setTimeout(() => { if (!gone) loadReports().catch(failed); }, 1000);
    };
    $("#art-report-buttons", root).append(...REPORTS.map(([type, label]) => el("button", {
      type: "button", class: "small ghost", "data-report": type,
      onclick: async () => {
        try {
          await api("POST", "/reports", { type, format: "csv", params: { sku: article.sku } });
          await loadReports();
        } catch (e) { toast(`Report refused: ${e.message}`); }
      },
    }, `${label} report`)));

    // ---- edit and archive (managers, admins) ----
    const showEdit = () => {
      if (!may.catalog()) return;
      $("#art-edit", root).hidden = false;
      const form = articleForm(article, { locked: hasPostings, submitLabel: "Save changes" });
      form.id = "article-form";
      const send = once();
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const r = await send("PATCH", `/articles/${enc}`, values(form), form.querySelector("button[type=submit]"));
        if (r.skipped) return;
        if (r.error) { showError(form, r.error); return; }
        clearErrors(form);
        article = r.data;
        showHeader();
        toast(`Saved ${article.sku}`);
      });
      $("#art-edit-form", root).replaceChildren(form);
      const archive = $("#art-archive", root);
      archive.textContent = article.archived ? "Restore (take movements again)" : "Archive (no more movements)";
      archive.onclick = async () => {
        try {
          article = await api("PATCH", `/articles/${enc}`, { archived: !article.archived });
          showHeader();
          showEdit();
          toast(article.archived ? `${article.sku} archived` : `${article.sku} restored`);
        } catch (e) { toast(e.message); }
      };
    };

    const firstRow = await api("GET", `/ledger?sku=${enc}&limit=1`);
    hasPostings = firstRow.items.length > 0;
    showHeader();
    showEdit();
    await Promise.all([loadStock(), loadLedger(), loadAlerts(), loadReports()]);
    let timer = null;
    return {
      leave() { gone = true; clearTimeout(timer); },
      onEvent(m) {
        const mine = (m.type === "stock_changed" && m.data.sku === article.sku) || (m.type === "stock_alert" && m.data.alert.sku === article.sku);
        if (m.type === "report_ready") loadReports().catch(failed);
        if (!mine) return;
        clearTimeout(timer);
        timer = setTimeout(async () => {
          if (gone) return;
          const locked = hasPostings;
          hasPostings = true;
          if (!locked) { showHeader(); showEdit(); }
          await Promise.all([loadStock(), loadLedger(), loadAlerts()]).catch(failed);
        }, 150);
      },
    };
  },
};
