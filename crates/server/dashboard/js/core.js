// What every page shares: the session (token, role), the API client, DOM helpers, the toast,
// and the submission of a form with an Idempotency-Key and its errors shown beside its fields.

export const session = { token: null, role: null, name: null };

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

/** An element with attributes (`on*` become listeners) and children (text or nodes). */
export function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, "");
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

export function toast(text) {
  const t = $("#toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

/**
 * An API error: `status`, and the body's `code`, `field` and `message`; `errors` lists every
 * error when the request had several (each unreadable line of a batch), else just this one.
 */
export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || null;
    this.field = e.field || null;
    this.errors = Array.isArray(e.errors) && e.errors.length ? e.errors : [{ code: this.code, field: this.field, message: this.message }];
  }
}

/** Calls `/api/v1{path}` with the session's token; throws `ApiError` on a refusal. */
export async function api(method, path, body, headers = {}) {
  const opts = { method, headers: { Authorization: `Bearer ${session.token}`, ...headers } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const r = await fetch(`/api/v1${path}`, opts);
  const data = r.status === 204 ? null : await r.json().catch(() => null);
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

export const may = {
  post: () => session.role !== null && session.role !== "viewer",
  catalog: () => session.role === "admin" || session.role === "manager",
  manage: () => session.role === "admin" || session.role === "manager",
};

export const when = (t) => (t ? new Date(t).toLocaleString() : "");
export const levelBadge = (l) => el("span", { class: `level ${l}` }, l.replace(/_/g, " "));
export const articleLink = (sku, name) => el("a", { href: `#/articles/${encodeURIComponent(sku)}`, class: "sku" }, sku,
  name ? el("span", { class: "name" }, ` ${name}`) : null);

/** Reports a failure of a background load: a lost sign-in goes back to the sign-in form. */
export function failed(e) {
  if (e && e.status === 401) window.dispatchEvent(new CustomEvent("malaka:signout", { detail: "Your token is no longer valid." }));
  else toast(e && e.message ? e.message : String(e));
}

/**
 * A submitter that posts at most once: one request in flight (a double click is ignored), the
 * same Idempotency-Key while the same body is retried after a network failure, a new key once
 * it was answered.
 */
export function once() {
  let busy = false;
  let pending = null;
  return async (method, path, body, button) => {
    if (busy) return { skipped: true };
    const text = JSON.stringify(body);
    if (!pending || pending.text !== text) pending = { text, key: crypto.randomUUID() };
    busy = true;
    if (button) button.disabled = true;
    try {
      const data = await api(method, path, text, { "Idempotency-Key": pending.key });
      pending = null;
      return { data };
    } catch (e) {
      if (e instanceof ApiError) pending = null; // answered: a new attempt is a new request
      return { error: e };
    } finally {
      busy = false;
      if (button) button.disabled = false;
    }
  };
}

/** What to tell a person about a failed request: the API's message, or that it was not sent. */
export const describe = (e) => (e instanceof ApiError ? e.message : `Not sent (${e.message}); try again.`);

/**
 * Shows an error beside the field it names (an element `[data-field="name"]` in `form`), or in
 * the form's `[data-field=""]` when it names none there. Returns the element that shows it.
 */
export function showError(form, e) {
  clearErrors(form);
  const field = e.field && form.querySelector(`[data-error-for="${CSS.escape(e.field)}"]`);
  const target = field || form.querySelector('[data-error-for=""]');
  const message = describe(e);
  if (target) target.textContent = message;
  else toast(message);
  const input = field && form.querySelector(`[name="${CSS.escape(e.field)}"]`);
  if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
  return target;
}

export function clearErrors(form) {
  for (const e of form.querySelectorAll("[data-error-for]")) e.textContent = "";
  for (const i of form.querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
}

/** A labelled form control with its error slot: `<label>Text <input name></label><span error>`. */
export function field(label, name, control, hint) {
  const id = `f-${name}-${field.seq = (field.seq || 0) + 1}`;
  control.id = id;
  control.name = name;
  const err = el("span", { class: "error field-error", id: `${id}-err`, "data-error-for": name });
  control.setAttribute("aria-describedby", `${id}-err`);
  return el("div", { class: "field" }, el("label", { for: id }, label), control, hint ? el("small", { class: "muted" }, hint) : null, err);
}

/** The form's values by control name, trimmed; empty ones left out. */
export function values(form) {
  const out = {};
  for (const c of form.elements) {
    if (!c.name) continue;
    if (c.type === "checkbox") out[c.name] = c.checked;
    else if (c.value.trim() !== "") out[c.name] = c.value.trim();
  }
  return out;
}

/** "Show more" paging over a list endpoint answering `{items, next}`. */
export function pager({ load, render, more, cursor = "after" }) {
  let next = null;
  let seq = 0;
  const reload = async () => {
    const mine = ++seq;
    const page = await load(null, cursor);
    if (mine !== seq) return; // a newer search answered first
    next = page.next;
    render(page.items, false);
    more.hidden = !next;
  };
  more.addEventListener("click", async () => {
    if (!next) return;
    const page = await load(next, cursor).catch((e) => { failed(e); return null; });
    if (!page) return;
    next = page.next;
    render(page.items, true);
    more.hidden = !next;
  });
  return reload;
}

export function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

/** Downloads a completed report (its URL needs the token, so it is fetched, then saved). */
export async function downloadReport(r) {
  const resp = await fetch(r.download, { headers: { Authorization: `Bearer ${session.token}` } });
  if (!resp.ok) { toast(`Download failed: HTTP ${resp.status}`); return; }
  const url = URL.createObjectURL(await resp.blob());
  const a = el("a", { href: url, download: `${r.type}-${r.id}.${r.format}` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
