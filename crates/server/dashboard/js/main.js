// The dashboard's shell: sign-in, the page router (one module per page under pages/, chosen by
// the URL's hash), and the live WebSocket whose messages go to the page on screen.

import { $, $$, api, session, toast, failed } from "./core.js";
import overview from "./pages/overview.js";
import post from "./pages/post.js";
import articles from "./pages/articles.js";
import article from "./pages/article.js";
import warehouses from "./pages/warehouses.js";

// `#/articles/SKU` -> the article page with params ["SKU"]. The first match wins.
const routes = [
  [/^$/, overview],
  [/^post$/, post],
  [/^articles$/, articles],
  [/^articles\/([^/]+)$/, article],
  [/^warehouses$/, warehouses],
];

const live = { ws: null, lastId: null, retry: 0 };
let current = null; // { page, handle }

function route() {
  const path = location.hash.replace(/^#\/?/, "").split("?")[0];
  for (const [re, page] of routes) {
    const m = re.exec(path);
    if (m) return { page, params: m.slice(1).map(decodeURIComponent), path };
  }
  return { page: overview, params: [], path: "" };
}

async function show() {
  if (!session.token) return;
  const { page, params, path } = route();
  if (current && current.handle && current.handle.leave) current.handle.leave();
  const root = $("#view");
  root.replaceChildren();
  document.title = `${page.title(params)} · Malaka`;
  for (const a of $$("#nav a")) {
    const target = a.getAttribute("href").replace(/^#\/?/, "");
    const here = target === path || (target !== "" && path.startsWith(`${target}/`));
    if (here) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const handle = { leave: null, onEvent: null, focus: null };
  current = { page, handle };
  try {
    Object.assign(handle, (await page.mount(root, params)) || {});
  } catch (e) {
    failed(e);
  }
  // Focus where the page's work starts (the posting page: the article field, for a scanner), or
  // its heading, so a keyboard or screen reader user starts at the new page.
  const h = handle.focus || root.querySelector("h2");
  if (h && show.moved) {
    if (!handle.focus) h.tabIndex = -1;
    h.focus({ preventScroll: true });
  }
  show.moved = true;
}

function setLive(on, text) {
  const l = $("#live");
  l.className = `live ${on ? "on" : "off"}`;
  l.textContent = text || (on ? "live" : "reconnecting…");
}

async function connect() {
  if (!session.token) return;
  let ticket;
  try {
    ticket = (await api("POST", "/ws/ticket")).ticket;
  } catch (e) {
    if (e.status === 401) { signOut("Your token is no longer valid."); return; }
    reconnectLater();
    return;
  }
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const q = new URLSearchParams({ ticket });
  if (live.lastId != null) q.set("since", String(live.lastId));
  const ws = new WebSocket(`${proto}://${location.host}/api/v1/ws?${q}`, ["malaka.v1"]);
  live.ws = ws;
  ws.onopen = () => { live.retry = 0; setLive(true); };
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.id != null) live.lastId = m.id;
    if (m.type === "resync") live.lastId = null;
    if (m.type === "stock_alert" && (m.data.action === "raised" || m.data.action === "escalated")) {
      const a = m.data.alert;
      toast(`${a.level.replace(/_/g, " ")}: ${a.sku} in ${a.warehouse}`);
    }
    if (current && current.handle.onEvent) {
      try { current.handle.onEvent(m); } catch (e) { failed(e); }
    }
  };
  ws.onclose = (ev) => {
    if (live.ws !== ws) return;
    setLive(false);
    live.ws = null;
    if (session.token) reconnectLater(ev.code === 4001 ? 0 : undefined);
  };
}

function reconnectLater(delay) {
  setTimeout(connect, delay ?? Math.min(10000, 500 * 2 ** live.retry++));
}

async function signIn(token) {
  session.token = token;
  const me = await api("GET", "/me").catch((e) => { if (e.status === 404) return null; throw e; });
  session.role = me ? me.role : null;
  session.name = me ? me.name : null;
  $("#who").textContent = me ? `${me.name} (${me.role})` : "";
  localStorage.setItem("malaka.token", token);
  $("#signin").hidden = true;
  $("#app").hidden = false;
  $("#signout").hidden = false;
  // What a role may not do is not offered: a viewer has no posting page.
  $("#nav-post").hidden = session.role === "viewer";
  show.moved = false;
  await show();
  connect();
}

function signOut(message) {
  session.token = null;
  localStorage.removeItem("malaka.token");
  if (live.ws) { const ws = live.ws; live.ws = null; ws.close(); }
  if (current && current.handle.leave) current.handle.leave();
  current = null;
  $("#view").replaceChildren();
  $("#app").hidden = true;
  $("#signout").hidden = true;
  $("#who").textContent = "";
  $("#signin").hidden = false;
  $("#signin-error").textContent = message || "";
  setLive(false, "offline");
}

$("#signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("#signin-error").textContent = "";
  try {
    await signIn($("#token").value.trim());
  } catch (e) {
    session.token = null;
    $("#app").hidden = true;
    $("#signin").hidden = false;
    $("#signin-error").textContent = e.status === 401 ? "That token is not valid." : e.message;
  }
});
$("#signout").addEventListener("click", () => signOut());
window.addEventListener("malaka:signout", (ev) => signOut(ev.detail));
window.addEventListener("hashchange", () => show());

const saved = localStorage.getItem("malaka.token");
if (saved) signIn(saved).catch(() => signOut());
else signOut();
