// Articles (`#/articles`): search by SKU or name, page through, create one (managers and
// admins). `articleForm` is also the article page's edit form.

import { $, api, el, failed, field, values, once, showError, clearErrors, pager, debounce, may } from "../core.js";

const MARKUP = `
<h2 class="page-title">Articles</h2>
<section class="card" aria-labelledby="new-article-h" id="new-article" hidden>
  <details id="new-article-details">
    <summary><h3 id="new-article-h">New article</h3></summary>
  </details>
</section>
<section class="card" aria-labelledby="articles-list-h">
  <h3 id="articles-list-h" class="visually-hidden">All articles</h3>
  <form id="articles-search" class="filters" role="search">
    <input id="a-q" type="search" placeholder="SKU or name" aria-label="Search articles by SKU or name" autocomplete="off">
    <label class="check"><input id="a-archived" type="checkbox"> Archived too</label>
  </form>
  <div class="scroll" tabindex="0" role="region" aria-label="Articles table">
    <table id="articles">
      <thead><tr><th>SKU</th><th>Name</th><th>Unit</th><th>Valuation</th><th class="num">Min</th><th class="num">Reorder</th><th>State</th></tr></thead>
      <tbody></tbody>
    </table>
  </div>
  <p id="articles-empty" class="muted" hidden>No articles match.</p>
  <button id="articles-more" type="button" hidden>Show more</button>
</section>`;

const VALUATIONS = [["moving_average", "Moving average"], ["fifo", "FIFO"]];

/**
 * The article form: `a` is the article being edited (none for a new one). `locked` disables
 * the valuation method (an article with postings keeps its method). Errors from the API appear
 * beside the field they name.
 */
export function articleForm(a, { locked = false, submitLabel }) {
  const input = (name, attrs = {}) => el("input", { autocomplete: "off", spellcheck: "false", ...attrs, value: a ? a[name] ?? "" : attrs.value });
  const valuation = el("select", { disabled: locked || undefined },
    ...VALUATIONS.map(([v, t]) => el("option", { value: v, selected: a ? a.valuation === v : v === "moving_average" }, t)));
  const negative = el("input", { type: "checkbox" });
  negative.checked = !!(a && a.allow_negative);
  const form = el("form", { class: "form-grid", novalidate: true },
    a ? null : field("SKU", "sku", input("sku", { required: true })),
    field("Name", "name", input("name", { required: true })),
    field("Unit", "unit", input("unit", { value: "pcs" })),
    field("Valuation", "valuation", valuation,
      locked ? "Locked: the article has postings, and its ledger was valued by this method." : "How issues are valued: the running average, or the oldest receipts first."),
    field("Minimum quantity", "min_qty", input("min_qty", { inputmode: "decimal", value: "0" }), "LOW at or below it, CRITICAL at or below half."),
    field("Reorder quantity", "reorder_qty", input("reorder_qty", { inputmode: "decimal", value: "0" })),
    el("div", { class: "field check" }, el("label", {}, negative, " Allow negative stock")),
    el("button", { type: "submit" }, submitLabel),
    el("p", { class: "error form-error", role: "alert", "data-error-for": "" }));
  negative.name = "allow_negative";
  if (locked) valuation.name = "";
  return form;
}

export default {
  title: () => "Articles",
  async mount(root) {
    root.innerHTML = MARKUP;
    const tbody = $("#articles tbody", root);
    const row = (a) => el("tr", { "data-sku": a.sku },
      el("td", {}, el("a", { href: `#/articles/${encodeURIComponent(a.sku)}`, class: "sku" }, a.sku)),
      el("td", {}, a.name), el("td", {}, a.unit), el("td", {}, a.valuation === "fifo" ? "FIFO" : "Moving average"),
      el("td", { class: "num" }, a.min_qty), el("td", { class: "num" }, a.reorder_qty),
      el("td", {}, a.archived ? el("span", { class: "tag" }, "archived") : ""));
    const reload = pager({
      more: $("#articles-more", root),
      load: (after) => {
        const q = new URLSearchParams({ limit: "50" });
        const text = $("#a-q", root).value.trim();
        if (text) q.set("q", text);
        if ($("#a-archived", root).checked) q.set("archived", "true");
        if (after) q.set("after", after);
        return api("GET", `/articles?${q}`);
      },
      render: (items, append) => {
        if (append) tbody.append(...items.map(row));
        else tbody.replaceChildren(...items.map(row));
        $("#articles-empty", root).hidden = tbody.rows.length > 0;
      },
    });
    const research = debounce(() => reload().catch(failed), 150);
    $("#a-q", root).addEventListener("input", research);
    $("#a-archived", root).addEventListener("change", research);
    $("#articles-search", root).addEventListener("submit", (ev) => { ev.preventDefault(); reload().catch(failed); });

    if (may.catalog()) {
      $("#new-article", root).hidden = false;
      const form = articleForm(null, { submitLabel: "Create article" });
      form.id = "article-form";
      $("#new-article-details", root).append(form);
      const send = once();
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const body = values(form);
        const r = await send("POST", "/articles", body, form.querySelector("button[type=submit]"));
        if (r.skipped) return;
        if (r.error) { showError(form, r.error); return; }
        clearErrors(form);
        location.hash = `#/articles/${encodeURIComponent(r.data.sku)}`;
      });
    }
    await reload();
    return {};
  },
};
