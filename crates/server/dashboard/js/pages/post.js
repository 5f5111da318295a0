// Posting (`#/post`): one form for receipts, issues, transfers and counts, keyboard- and
// scanner-first (a scanner types the SKU and Enter; Enter in the quantity posts; focus returns
// to the article), and many lines at once as one all-or-nothing batch. Every submission carries
// an Idempotency-Key, so a double click or a retry posts once.

import { $, api, el, failed, toast, once, showError, clearErrors, debounce, describe, may } from "../core.js";

const MARKUP = `
<h2 class="page-title">Post a movement</h2>
<section class="card post" id="post" aria-labelledby="post-h">
  <h3 id="post-h" class="visually-hidden">Movement</h3>
  <form id="post-form" class="post-form" novalidate>
    <div class="field"><label for="p-type">Type</label>
      <select id="p-type" name="type">
        <option value="receipt">Receipt</option><option value="issue">Issue</option>
        <option value="transfer">Transfer</option><option value="count">Count</option>
      </select></div>
    <div class="field wide"><label for="p-sku">Article (SKU or name)</label>
      <input id="p-sku" name="sku" list="p-articles" autocomplete="off" spellcheck="false"
             aria-describedby="p-sku-err" required>
      <datalist id="p-articles"></datalist>
      <span id="p-sku-err" class="error field-error" data-error-for="sku"></span></div>
    <div class="field"><label for="p-warehouse">Warehouse</label>
      <select id="p-warehouse" name="warehouse" aria-describedby="p-warehouse-err"></select>
      <span id="p-warehouse-err" class="error field-error" data-error-for="warehouse"></span></div>
    <div class="field" id="p-to-field" hidden><label for="p-to">To warehouse</label>
      <select id="p-to" name="to_warehouse" aria-describedby="p-to-err"></select>
      <span id="p-to-err" class="error field-error" data-error-for="to_warehouse"></span></div>
    <div class="field"><label for="p-qty" id="p-qty-label">Quantity</label>
      <input id="p-qty" name="qty" inputmode="decimal" autocomplete="off" aria-describedby="p-qty-err" required>
      <span id="p-qty-err" class="error field-error" data-error-for="qty"></span></div>
    <div class="field" id="p-cost-field"><label for="p-cost">Unit cost</label>
      <input id="p-cost" name="unit_cost" inputmode="decimal" autocomplete="off" aria-describedby="p-cost-err">
      <span id="p-cost-err" class="error field-error" data-error-for="unit_cost"></span></div>
    <div class="field"><label for="p-ref">Reference</label>
      <input id="p-ref" name="reference" autocomplete="off" aria-describedby="p-ref-err">
      <span id="p-ref-err" class="error field-error" data-error-for="reference"></span></div>
    <div class="field wide"><label for="p-note">Note</label>
      <input id="p-note" name="note" autocomplete="off" aria-describedby="p-note-err">
      <span id="p-note-err" class="error field-error" data-error-for="note"></span></div>
    <button id="p-submit" type="submit">Post</button>
    <p id="post-error" class="error form-error" role="alert" data-error-for=""></p>
  </form>
</section>
<section class="card batch" id="batch" aria-labelledby="batch-h">
  <h3 id="batch-h">Many lines at once (a delivery, a count sheet)</h3>
  <form id="batch-form" novalidate>
    <label for="b-lines">One line each: SKU, quantity (1 when left out), unit cost. Type, warehouse,
      reference and note are the form's above. All lines post together or none does.</label>
    <textarea id="b-lines" rows="8" spellcheck="false" aria-describedby="b-errors"></textarea>
    <button id="b-submit" type="submit">Post all lines</button>
    <ul id="b-errors" class="error" role="alert"></ul>
  </form>
</section>
<section class="card" aria-labelledby="posted-h">
  <h3 id="posted-h">Posted here</h3>
  <ul id="posted" class="feed" aria-live="polite"></ul>
</section>`;

export default {
  title: () => "Post",
  async mount(root) {
    if (!may.post()) {
      root.append(el("h2", { class: "page-title" }, "Post a movement"), el("p", { class: "muted" }, "Your role may not post movements."));
      return {};
    }
    root.innerHTML = MARKUP;
    const form = $("#post-form", root);
    const shape = () => {
      const type = $("#p-type", root).value;
      $("#p-to-field", root).hidden = type !== "transfer";
      $("#p-cost-field", root).hidden = type !== "receipt" && type !== "count";
      $("#p-qty-label", root).textContent = type === "count" ? "Counted quantity" : "Quantity";
    };
    const page = await api("GET", "/warehouses?limit=1000");
    const options = () => page.items.map((w) => el("option", { value: w.code }, `${w.code} ${w.name}`));
    $("#p-warehouse", root).replaceChildren(...options());
    $("#p-to", root).replaceChildren(...options());
    if (page.items.length > 1) $("#p-to", root).selectedIndex = 1;
    shape();

    // Suggestions as you type: SKUs starting with the text or names holding it.
    let asked = 0;
    const suggest = debounce(async () => {
      const text = $("#p-sku", root).value.trim();
      if (!text) return;
      const mine = ++asked;
      const found = await api("GET", `/articles?limit=20&q=${encodeURIComponent(text)}`).catch((e) => { failed(e); return null; });
      if (!found || mine !== asked) return;
      $("#p-articles", root).replaceChildren(...found.items.map((a) => el("option", { value: a.sku }, a.name)));
    }, 120);

    const movement = () => {
      const v = (id) => $(id, root).value.trim();
      const type = v("#p-type");
      const m = { type, sku: v("#p-sku"), warehouse: v("#p-warehouse"), qty: v("#p-qty") };
      if (type === "transfer") m.to_warehouse = v("#p-to");
      if ((type === "receipt" || type === "count") && v("#p-cost")) m.unit_cost = v("#p-cost");
      if (v("#p-ref")) m.reference = v("#p-ref");
      if (v("#p-note")) m.note = v("#p-note");
      return m;
    };
    const posted = (text) => {
      const list = $("#posted", root);
      list.prepend(el("li", { class: "flash" }, el("span", { class: "what" }, text)));
      while (list.children.length > 20) list.lastChild.remove();
      toast(text);
    };

    const send = once();
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const m = movement();
      const r = await send("POST", "/movements", m, $("#p-submit", root));
      if (r.skipped) return; // a double click: the first one is under way
      if (r.error) {
        if (r.error.status === 401) { failed(r.error); return; }
        showError(form, r.error);
        return;
      }
      clearErrors(form);
      posted(`Posted: ${m.type} of ${m.qty} ${m.sku} in ${m.warehouse}${m.to_warehouse ? ` to ${m.to_warehouse}` : ""}`);
      $("#p-qty", root).value = "";
      $("#p-sku", root).value = "";
      $("#p-sku", root).focus();
    });
    $("#p-type", root).addEventListener("change", shape);
    $("#p-sku", root).addEventListener("input", suggest);
    // A scanner types the SKU and Enter: with no quantity yet, Enter moves on to it.
    $("#p-sku", root).addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !$("#p-qty", root).value.trim()) { ev.preventDefault(); $("#p-qty", root).focus(); }
    });

    // ---- many lines: one batch, all or nothing; a refusal names its line ----
    const batchLines = () => {
      const base = movement();
      const lines = $("#b-lines", root).value.split("\n");
      const out = [];
      lines.forEach((l, at) => {
        if (!l.trim()) return;
        const [sku, qty, cost] = l.trim().split(/[\s,;]+/);
        const m = { ...base, sku, qty: qty || "1" };
        delete m.unit_cost;
        if ((m.type === "receipt" || m.type === "count") && (cost || base.unit_cost)) m.unit_cost = cost || base.unit_cost;
        out.push({ m, line: at + 1, text: l });
      });
      return out;
    };
    // Selects a line of the text area, so the line at fault is in view and marked.
    const selectLine = (line) => {
      const ta = $("#b-lines", root);
      const lines = ta.value.split("\n");
      const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
      ta.focus();
      ta.setSelectionRange(start, start + lines[line - 1].length);
    };
    const sendBatch = once();
    $("#batch-form", root).addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const errors = $("#b-errors", root);
      errors.replaceChildren();
      const lines = batchLines();
      if (!lines.length) return;
      const r = await sendBatch("POST", "/movements/batch", { movements: lines.map((x) => x.m) }, $("#b-submit", root));
      if (r.skipped) return;
      if (r.error) {
        const e = r.error;
        if (e.status === 401) { failed(e); return; }
        // Each line at fault (every unreadable one, or the one the ledger refused), by its line
        // number in the text area; the first is selected.
        const marked = (e.errors || []).map((x) => {
          const at = /^movements\[(\d+)\](?:\.(\w+))?/.exec(x.field || "");
          const found = at && lines[Number(at[1])];
          if (!found) return null;
          const message = (x.message || "").replace(/^movements\[\d+\]: /, "");
          return el("li", { "data-line": found.line, "data-field": at[2] || "" }, `Line ${found.line} (${found.m.sku}): ${message}`);
        }).filter((x) => x);
        if (marked.length) {
          errors.replaceChildren(...marked, el("li", {}, "Nothing was posted."));
          selectLine(Number(marked[0].dataset.line));
        } else {
          // The batch as a whole (too many lines), or not sent at all.
          errors.replaceChildren(el("li", {}, describe(e)), e.status ? el("li", {}, "Nothing was posted.") : "");
        }
        return;
      }
      posted(`Posted ${lines.length} lines`);
      $("#b-lines", root).value = "";
      $("#b-lines", root).focus();
    });
    return { focus: $("#p-sku", root) };
  },
};
