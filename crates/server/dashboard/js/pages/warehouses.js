// Warehouses (`#/warehouses`): search by code or name, the list (paged, archived ones on
// request), and for managers
// and admins create, rename and archive.

import { $, api, el, failed, toast, field, values, once, showError, clearErrors, pager, debounce, may } from "../core.js";

const MARKUP = `
<h2 class="page-title">Warehouses</h2>
<section class="card" aria-labelledby="new-warehouse-h" id="new-warehouse" hidden>
  <h3 id="new-warehouse-h">New warehouse</h3>
</section>
<section class="card" aria-labelledby="warehouses-list-h">
  <h3 id="warehouses-list-h" class="visually-hidden">All warehouses</h3>
  <form class="filters" id="warehouses-filters" role="search">
    <input id="w-q" type="search" placeholder="Code or name" aria-label="Search warehouses by code or name" autocomplete="off">
    <label class="check"><input id="w-archived" type="checkbox"> Archived too</label>
  </form>
  <div class="scroll" tabindex="0" role="region" aria-label="Warehouses table">
    <table id="warehouses"><thead><tr><th>Code</th><th>Name</th><th>State</th><th><span class="visually-hidden">Actions</span></th></tr></thead><tbody></tbody></table>
  </div>
  <p id="warehouses-empty" class="muted" hidden>No warehouses yet.</p>
  <button id="warehouses-more" type="button" hidden>Show more</button>
</section>`;

export default {
  title: () => "Warehouses",
  async mount(root) {
    root.innerHTML = MARKUP;
    const tbody = $("#warehouses tbody", root);

    // A row, or (being renamed) a row holding the rename form.
    const row = (w) => {
      const tr = el("tr", { "data-code": w.code });
      const actions = el("td", { class: "actions" });
      if (may.catalog()) {
        actions.append(
          el("button", { type: "button", class: "small ghost", onclick: () => rename(tr, w) }, "Rename"),
          el("button", { type: "button", class: "small ghost", onclick: () => setArchived(tr, w, !w.archived) }, w.archived ? "Restore" : "Archive"));
      }
      tr.append(el("td", { class: "sku" }, w.code), el("td", {}, w.name),
        el("td", {}, w.archived ? el("span", { class: "tag" }, "archived") : ""), actions);
      return tr;
    };
    const rename = (tr, w) => {
      const form = el("form", { class: "inline-form", novalidate: true },
        field(`New name of ${w.code}`, "name", el("input", { value: w.name, autocomplete: "off" })),
        el("button", { type: "submit", class: "small" }, "Save"),
        el("button", { type: "button", class: "small ghost", onclick: () => tr.replaceWith(row(w)) }, "Cancel"),
        el("p", { class: "error form-error", role: "alert", "data-error-for": "" }));
      const send = once();
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const r = await send("PATCH", `/warehouses/${encodeURIComponent(w.code)}`, values(form), form.querySelector("button[type=submit]"));
        if (r.skipped) return;
        if (r.error) { showError(form, r.error); return; }
        tr.replaceWith(row(r.data));
        toast(`Renamed ${w.code}`);
      });
      tr.replaceChildren(el("td", { colspan: "4" }, form));
      form.querySelector("input").focus();
    };
    const setArchived = async (tr, w, archived) => {
      try {
        const updated = await api("PATCH", `/warehouses/${encodeURIComponent(w.code)}`, { archived });
        tr.replaceWith(row(updated));
        toast(archived ? `${w.code} archived: it takes no more movements` : `${w.code} restored`);
      } catch (e) { toast(e.message); }
    };

    const reload = pager({
      more: $("#warehouses-more", root),
      load: (after) => {
        const q = new URLSearchParams({ limit: "100" });
        if ($("#w-archived", root).checked) q.set("archived", "true");
        const text = $("#w-q", root).value.trim();
        if (text) q.set("q", text);
        if (after) q.set("after", after);
        return api("GET", `/warehouses?${q}`);
      },
      render: (items, append) => {
        if (append) tbody.append(...items.map(row));
        else tbody.replaceChildren(...items.map(row));
        $("#warehouses-empty", root).hidden = tbody.rows.length > 0;
      },
    });
    const research = debounce(() => reload().catch(failed), 150);
    $("#w-archived", root).addEventListener("change", research);
    $("#w-q", root).addEventListener("input", research);
    $("#warehouses-filters", root).addEventListener("submit", (ev) => ev.preventDefault());

    if (may.catalog()) {
      $("#new-warehouse", root).hidden = false;
      const form = el("form", { class: "form-grid", id: "warehouse-form", novalidate: true },
        field("Code", "code", el("input", { autocomplete: "off", spellcheck: "false", required: true }), "Letters, digits, - or _; it cannot change later."),
        field("Name", "name", el("input", { autocomplete: "off", required: true })),
        el("button", { type: "submit" }, "Create warehouse"),
        el("p", { class: "error form-error", role: "alert", "data-error-for": "" }));
      $("#new-warehouse", root).append(form);
      const send = once();
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const r = await send("POST", "/warehouses", values(form), form.querySelector("button[type=submit]"));
        if (r.skipped) return;
        if (r.error) { showError(form, r.error); return; }
        clearErrors(form);
        form.reset();
        toast(`Created warehouse ${r.data.code}`);
        await reload();
      });
    }
    await reload();
    return {};
  },
};
