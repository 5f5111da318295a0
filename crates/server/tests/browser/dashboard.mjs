// Drives the dashboard in headless Chromium through each page as a clerk's or manager's day
// would: sign in, the live overview, create a warehouse and an article, receive, issue beyond
// stock, transfer, count, a 40-line batch with a bad line, a double click, the article's page,
// and a viewer who is offered no forms. axe-core checks every page; each page is photographed
// at 1366 and 390 px and must not scroll sideways on a phone.
// Usage: node dashboard.mjs BASE_URL TOKEN SCREENSHOT_DIR [VIEWER_TOKEN]
// Prints one JSON line with what it measured; exits non-zero on any failure.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

// axe-core, evaluated in the page through the DevTools protocol (the page's CSP allows no
// injected script tags).
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
async function accessible(p, where) {
  await p.evaluate(axeSource);
  const found = await p.evaluate(async () => (await axe.run(document, { resultTypes: ["violations"] })).violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`));
  if (found.length) throw new Error(`axe-core on ${where}: ${found.join("; ")}`);
}

const [base, token, shots, viewerToken] = process.argv.slice(2);
if (!base || !token || !shots) {
  console.error("usage: node dashboard.mjs BASE_URL TOKEN SCREENSHOT_DIR [VIEWER_TOKEN]");
  process.exit(2);
}

async function api(method, path, body) {
  const r = await fetch(`${base}/api/v1${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
  return r.json();
}
const ledger = async (q) => (await api("GET", `/ledger?limit=1000&${q}`)).items;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const result = { pages: [] };
let page;
const errors = [];
// The browser logs each refused request; the refusals this test provokes are expected.
const expectRefusals = () => {
  for (let i = errors.length - 1; i >= 0; i--) if (/status of (404|409|422)/.test(errors[i])) errors.splice(i, 1);
};

// axe-core, then screenshots at 1366 and 390 px; at 390 nothing may be wider than the screen.
async function check(p, name, where) {
  await accessible(p, where);
  await p.screenshot({ path: `${shots}/${name}-1366.png`, fullPage: true });
  await p.setViewportSize({ width: 390, height: 844 });
  await p.waitForTimeout(50);
  const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) throw new Error(`${where} is ${overflow}px wider than a phone screen`);
  await accessible(p, `${where} at 390 px`);
  await p.screenshot({ path: `${shots}/${name}-390.png`, fullPage: true });
  await p.setViewportSize({ width: 1366, height: 768 });
  result.pages.push(name);
}

async function go(p, hash, ready) {
  await p.evaluate((h) => { location.hash = h; }, hash);
  await p.waitForSelector(ready);
}

const toastSays = (p, text) => p.waitForFunction((t) => document.querySelector("#toast").textContent.startsWith(t), text);
// The posting page lists what it posted, newest first (a toast may be replaced by an alert's).
const postedSays = (p, text) => p.waitForFunction((t) => document.querySelector("#posted li")?.textContent.startsWith(t), text);

try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  page = await context.newPage();
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });

  await page.goto(base);
  await page.waitForSelector("#signin:not([hidden])");
  await accessible(page, "the sign-in page");
  // A wrong token is refused with a message.
  await page.fill("#token", "mlk_wrong");
  await page.click("#signin-form button");
  await page.waitForFunction(() => document.querySelector("#signin-error").textContent.length > 0);
  errors.length = 0; // the browser logs the refused request; that one was expected

  await page.fill("#token", token);
  await page.click("#signin-form button");
  await page.waitForSelector("#app:not([hidden])");
  if (await page.isVisible("#signin")) throw new Error("the sign-in form is still shown");
  await page.waitForSelector("#live.on", { timeout: 5000 });
  await page.waitForSelector('#balances tbody tr[data-level="NORMAL"]');
  result.signed_in = true;

  // ---- the overview: live alerts ----
  // A movement that takes DASH-1 below its minimum: the alert must appear without a reload.
  await api("POST", "/movements", { type: "issue", sku: "DASH-1", warehouse: "MAIN", qty: "17" });
  const posted = Date.now();
  await page.waitForSelector('#alerts-feed li[data-level="CRITICAL"]', { timeout: 1000 });
  result.alert_ms = Date.now() - posted;
  await page.waitForSelector('#balances tbody tr[data-level="CRITICAL"]', { timeout: 2000 });
  await page.waitForFunction(() => document.querySelector("#alerts-count").textContent === "1");
  // Names beside SKUs; an open alert follows the balance's quantity as it moves on.
  await page.waitForFunction(() => [...document.querySelectorAll("#balances tbody td .name")]
    .some((e) => e.textContent.trim() === "Dashboard bolt"));
  await api("POST", "/movements", { type: "issue", sku: "DASH-1", warehouse: "MAIN", qty: "1" });
  await page.waitForFunction(() => {
    const what = document.querySelector('#alerts-feed li[data-level="CRITICAL"] .what');
    return what && what.textContent.startsWith("DASH-1 (Dashboard bolt) in MAIN: 2 left, 3 when it became CRITICAL");
  }, null, { timeout: 3000 });
  result.alert_follows_balance = true;

  // ---- warehouses: create one; a refusal shows beside its field ----
  await page.click('#nav a[href="#/warehouses"]');
  await page.waitForSelector('#warehouses tbody tr[data-code="MAIN"]');
  await page.fill("#warehouse-form [name=code]", "MAIN");
  await page.fill("#warehouse-form [name=name]", "Again");
  await page.click("#warehouse-form button[type=submit]");
  await page.waitForFunction(() => document.querySelector('#warehouse-form [data-error-for="code"]').textContent.length > 0);
  await page.fill("#warehouse-form [name=code]", "SIDE");
  await page.fill("#warehouse-form [name=name]", "Side store");
  await page.keyboard.press("Enter");
  await page.waitForSelector('#warehouses tbody tr[data-code="SIDE"]');
  result.warehouse_created = true;
  // Renamed in place.
  await page.click('#warehouses tbody tr[data-code="SIDE"] button:text("Rename")');
  await page.fill('#warehouses tbody tr[data-code="SIDE"] input', "Side store (north)");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelector('#warehouses tbody tr[data-code="SIDE"]')?.textContent.includes("north"));
  // Found by a word of its name.
  await page.fill("#w-q", "NORTH");
  await page.waitForFunction(() => [...document.querySelectorAll("#warehouses tbody tr")].map((r) => r.dataset.code).join() === "SIDE");
  await page.fill("#w-q", "");
  await page.waitForSelector('#warehouses tbody tr[data-code="MAIN"]');
  expectRefusals();
  await check(page, "warehouses", "the warehouses page");

  // ---- articles: a bad figure is shown at its field; create; find it by name ----
  await page.click('#nav a[href="#/articles"]');
  await page.waitForSelector('#articles tbody tr[data-sku="DASH-1"]');
  await page.click("#new-article-details summary");
  await page.fill("#article-form [name=sku]", "NEW-1");
  await page.fill("#article-form [name=name]", "Blue widget");
  await page.selectOption("#article-form [name=valuation]", "fifo");
  await page.fill("#article-form [name=min_qty]", "lots");
  await page.click("#article-form button[type=submit]");
  await page.waitForFunction(() => document.querySelector('#article-form [data-error-for="min_qty"]').textContent.includes("min_qty"));
  if (!(await page.evaluate(() => document.activeElement.name === "min_qty"))) throw new Error("focus did not go to the field at fault");
  await page.fill("#article-form [name=min_qty]", "2");
  await page.click("#article-form button[type=submit]");
  await page.waitForSelector("#art-sku:text('NEW-1')");
  result.article_created = true;
  // A duplicate SKU is refused at the SKU field.
  await page.click('#nav a[href="#/articles"]');
  await page.waitForSelector('#articles tbody tr[data-sku="NEW-1"]');
  await page.click("#new-article-details summary");
  await page.fill("#article-form [name=sku]", "NEW-1");
  await page.fill("#article-form [name=name]", "Twice");
  await page.click("#article-form button[type=submit]");
  await page.waitForFunction(() => document.querySelector('#article-form [data-error-for="sku"]').textContent.length > 0);
  await page.fill("#a-q", "widget");
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("#articles tbody tr")];
    return rows.length === 1 && rows[0].dataset.sku === "NEW-1";
  });
  result.article_search = true;
  expectRefusals();
  await check(page, "articles", "the articles page");

  // ---- posting, keyboard first, as a scanner would: the SKU and Enter, the quantity and Enter ----
  await page.click('#nav a[href="#/post"]');
  await page.waitForSelector("#post-form #p-warehouse option", { state: "attached" });
  await page.selectOption("#p-type", "receipt");
  await page.selectOption("#p-warehouse", "MAIN");
  await page.fill("#p-cost", "1.5");
  await page.fill("#p-ref", "DN-1001");
  await page.focus("#p-sku");
  await page.keyboard.type("NEW-1");
  await page.keyboard.press("Enter");
  if (!(await page.evaluate(() => document.activeElement.id === "p-qty"))) throw new Error("Enter in the article field did not move to the quantity");
  await page.keyboard.type("10");
  await page.keyboard.press("Enter");
  await postedSays(page, "Posted: receipt of 10 NEW-1");
  if (!(await page.evaluate(() => document.activeElement.id === "p-sku"))) throw new Error("focus did not return to the article field");
  // The next line straight away: a second receipt at another cost (a second FIFO layer).
  await page.fill("#p-cost", "2");
  await page.focus("#p-sku");
  await page.keyboard.type("NEW-1");
  await page.keyboard.press("Enter");
  await page.keyboard.type("5");
  await page.keyboard.press("Enter");
  await postedSays(page, "Posted: receipt of 5 NEW-1");
  if ((await ledger("sku=NEW-1")).length !== 2) throw new Error("the receipts were not posted once each");
  result.posted_from_keyboard = true;
  // Suggestions as you type: a name finds the SKU.
  await page.fill("#p-sku", "Blue");
  await page.waitForSelector('#p-articles option[value="NEW-1"]', { state: "attached" });
  result.suggestions = true;
  // An issue beyond the stock is refused, saying what is available.
  await page.selectOption("#p-type", "issue");
  await page.fill("#p-sku", "NEW-1");
  await page.fill("#p-qty", "1000");
  await page.click("#p-submit");
  await page.waitForFunction(() => document.querySelector('#post-form [data-error-for="qty"]').textContent.includes("15 available"));
  if ((await ledger("sku=NEW-1")).length !== 2) throw new Error("a refused issue wrote something");
  result.refusal_shown = true;
  expectRefusals();
  // An issue that fits; a transfer to SIDE; a count there.
  await page.fill("#p-qty", "4");
  await page.keyboard.press("Enter");
  await postedSays(page, "Posted: issue of 4 NEW-1");
  await page.selectOption("#p-type", "transfer");
  await page.selectOption("#p-warehouse", "MAIN");
  await page.selectOption("#p-to", "SIDE");
  await page.fill("#p-sku", "NEW-1");
  await page.fill("#p-qty", "3");
  await page.keyboard.press("Enter");
  await postedSays(page, "Posted: transfer of 3 NEW-1 in MAIN to SIDE");
  await page.selectOption("#p-type", "count");
  await page.selectOption("#p-warehouse", "SIDE");
  await page.fill("#p-cost", "");
  await page.fill("#p-sku", "NEW-1");
  await page.fill("#p-qty", "2");
  await page.keyboard.press("Enter");
  await postedSays(page, "Posted: count of 2 NEW-1 in SIDE");
  result.issue_transfer_count = true;
  // A double click posts once.
  const beforeDouble = (await ledger("sku=DASH-1")).length;
  await page.selectOption("#p-type", "receipt");
  await page.selectOption("#p-warehouse", "MAIN");
  await page.fill("#p-cost", "0.5");
  await page.fill("#p-sku", "DASH-1");
  await page.fill("#p-qty", "1");
  await page.dblclick("#p-submit");
  await postedSays(page, "Posted: receipt of 1 DASH-1");
  await page.waitForTimeout(300);
  const twice = (await ledger("sku=DASH-1")).length - beforeDouble;
  if (twice !== 1) throw new Error(`a double click posted ${twice} times`);
  result.double_click_posts_once = true;
  expectRefusals();
  // Forty lines with one bad (an unknown article on line 17): nothing is posted and line 17 is
  // named; fixed, all forty post as one batch.
  const before40 = (await ledger("sku=DASH-1")).length;
  const lines = Array.from({ length: 40 }, (_, i) => `${i === 16 ? "NOPE-9" : "DASH-1"} 0.01 0.5`);
  await page.fill("#b-lines", lines.join("\n"));
  await page.click("#b-submit");
  await page.waitForSelector('#b-errors li[data-line="17"][data-field="sku"]');
  if ((await ledger("sku=DASH-1")).length !== before40) throw new Error("a batch with a bad line wrote something");
  // The bad line is selected in the text area.
  const selected = await page.evaluate(() => { const t = document.querySelector("#b-lines"); return t.value.slice(t.selectionStart, t.selectionEnd); });
  if (selected !== "NOPE-9 0.01 0.5") throw new Error(`the bad line is not selected: ${selected}`);
  // Lines that cannot be read are all named at once (a quantity that is not a number on line
  // 17, a bad SKU on line 30), the first selected.
  lines[16] = "DASH-1 lots 0.5";
  lines[29] = "bad!sku 1 0.5";
  await page.fill("#b-lines", lines.join("\n"));
  await page.click("#b-submit");
  await page.waitForSelector('#b-errors li[data-line="17"][data-field="qty"]');
  await page.waitForSelector('#b-errors li[data-line="30"][data-field="sku"]');
  if ((await ledger("sku=DASH-1")).length !== before40) throw new Error("a batch with bad lines wrote something");
  lines[29] = "DASH-1 0.01 0.5";
  expectRefusals();
  lines[16] = "DASH-1 0.01 0.5";
  await page.fill("#b-lines", lines.join("\n"));
  await page.click("#b-submit");
  await postedSays(page, "Posted 40 lines");
  if ((await ledger("sku=DASH-1")).length !== before40 + 40) throw new Error("the batch did not post its 40 lines");
  result.batch_of_40 = true;
  await check(page, "post", "the posting page");

  // ---- the article's page: stock, layers, ledger, alerts, reports, locked valuation ----
  await go(page, "#/articles/NEW-1", '#art-stock tbody tr[data-warehouse="SIDE"]');
  const art = await page.evaluate(() => ({
    stock: [...document.querySelectorAll("#art-stock tbody tr")].map((r) => [r.dataset.warehouse, r.cells[1].textContent, r.dataset.level]),
    layers: [...document.querySelectorAll("#art-layers tbody tr")].map((r) => [r.dataset.warehouse, r.cells[2].textContent, r.cells[3].textContent]),
    ledger: [...document.querySelectorAll("#art-ledger tbody tr")].map((r) => r.dataset.type),
    locked: document.querySelector("#article-form select").disabled,
  }));
  const want = { stock: [["MAIN", "8", "NORMAL"], ["SIDE", "2", "LOW"]], layers: [["MAIN", "3", "1.5"], ["MAIN", "5", "2"], ["SIDE", "2", "1.5"]] };
  if (JSON.stringify(art.stock) !== JSON.stringify(want.stock)) throw new Error(`stock by warehouse: ${JSON.stringify(art.stock)}`);
  if (JSON.stringify(art.layers) !== JSON.stringify(want.layers)) throw new Error(`FIFO layers: ${JSON.stringify(art.layers)}`);
  if (art.ledger.join() !== "receipt,receipt,issue,transfer,transfer,count") throw new Error(`ledger: ${art.ledger.join()}`);
  if (!art.locked) throw new Error("the valuation method is not shown locked");
  result.article_page = art;
  // Its alert (SIDE counted to 2, its minimum: LOW) is listed.
  await page.waitForSelector("#art-alerts li[data-alert-id]");
  // Filtered by dates: from tomorrow there is nothing; cleared, everything again.
  const tomorrow = new Date(Date.now() + 86400000).toISOString().slice(0, 10);
  await page.fill("#l-from", tomorrow);
  await page.dispatchEvent("#l-from", "change");
  await page.waitForSelector("#art-ledger-empty:not([hidden])");
  await page.fill("#l-from", "");
  await page.dispatchEvent("#l-from", "change");
  await page.waitForFunction(() => [...document.querySelectorAll("#art-ledger tbody tr")].length === 6);
  // Filtered by warehouse: only SIDE's rows.
  await page.selectOption("#l-warehouse", "SIDE");
  await page.waitForFunction(() => [...document.querySelectorAll("#art-ledger tbody tr")].length === 2);
  // A new posting appears without a reload.
  await api("POST", "/movements", { type: "receipt", sku: "NEW-1", warehouse: "SIDE", qty: "1", unit_cost: "3" });
  await page.waitForFunction(() => [...document.querySelectorAll("#art-ledger tbody tr")].length === 3, null, { timeout: 3000 });
  await page.waitForFunction(() => document.querySelector('#art-stock tbody tr[data-warehouse="SIDE"]').cells[1].textContent === "3");
  result.article_page_live = true;
  // Edited from its page.
  await page.fill("#article-form [name=name]", "Blue widget, large");
  await page.click("#article-form button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#art-name").textContent === "Blue widget, large");
  // A report of it, requested from its page and offered for download.
  await page.click('#art-report-buttons button[data-report="ledger"]');
  await page.waitForSelector('#art-reports li[data-state="completed"] button', { timeout: 10000 });
  result.article_report = true;
  await check(page, "article", "an article's page");

  // ---- the overview's jobs, integrations and reports ----
  await page.click('#nav a[href="#/"]');
  await page.waitForSelector("#movements tbody tr");
  // The jobs panel lists the discarded job with its error and retries it.
  await page.waitForSelector('#failed li[data-job-id] .err');
  result.failed_job_shown = true;
  await page.click("#failed li[data-job-id] button");
  await toastSays(page, "Job");
  await page.waitForFunction(() => document.querySelector("#toast").textContent.includes("will run again"));
  result.retried = true;
  // A waiting job is cancelled from the page.
  await page.waitForSelector('#waiting li[data-job-id] button', { timeout: 5000 });
  await page.click("#waiting li[data-job-id] button");
  await page.waitForFunction(() => document.querySelector("#toast").textContent.includes("cancelled"));
  result.cancelled = true;
  // A parked command from another system is shown with its reason and replayed from the page.
  await page.waitForSelector("#integrations:not([hidden]) #inbox li[data-inbox-id] .err");
  await page.click("#inbox li[data-inbox-id] button");
  await page.waitForFunction(() => document.querySelector("#toast").textContent.includes("posted"));
  result.inbox_replayed = true;
  // A report is requested from the page, followed, and offered for download.
  await page.selectOption("#r-type", "valuation");
  await page.click("#report-form button");
  await page.waitForSelector('#reports li[data-state="completed"] button', { timeout: 10000 });
  const download = page.waitForEvent("download");
  await page.click('#reports li[data-state="completed"] button');
  const file = await download;
  result.report_download = file.suggestedFilename();
  await check(page, "dashboard", "the overview");
  result.accessible = true;
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);

  // ---- a viewer is offered nothing it may not do ----
  if (viewerToken) {
    const viewer = await (await browser.newContext({ viewport: { width: 1366, height: 768 } })).newPage();
    viewer.on("pageerror", (e) => errors.push(`viewer: ${e}`));
    await viewer.goto(base);
    await viewer.fill("#token", viewerToken);
    await viewer.click("#signin-form button");
    await viewer.waitForSelector("#app:not([hidden])");
    await viewer.waitForSelector("#balances tbody tr");
    const offered = {};
    const forms = () => viewer.evaluate(() => [...document.querySelectorAll("#view form")]
      .filter((f) => !f.closest("[hidden]") && !f.matches(".filters, [role=search]")).map((f) => f.id || f.className)
      .concat([...document.querySelectorAll("#view button")].filter((b) => !b.closest("[hidden]") && !b.closest(".filters"))
        .map((b) => b.textContent).filter((t) => !/Show more|Download|report/.test(t))));
    offered.nav_post = await viewer.isVisible("#nav-post");
    offered.overview = (await forms()).filter((f) => f !== "report-form" && f !== "Request");
    await accessible(viewer, "the overview as a viewer");
    await viewer.screenshot({ path: `${shots}/dashboard-viewer.png`, fullPage: true });
    await go(viewer, "#/articles", '#articles tbody tr[data-sku="NEW-1"]');
    offered.articles = await forms();
    await accessible(viewer, "the articles page as a viewer");
    await go(viewer, "#/articles/NEW-1", "#art-ledger tbody tr");
    offered.article = await forms();
    await accessible(viewer, "an article's page as a viewer");
    await go(viewer, "#/warehouses", '#warehouses tbody tr[data-code="SIDE"]');
    offered.warehouses = await forms();
    await go(viewer, "#/post", ".page-title");
    offered.post = await forms();
    const any = offered.nav_post || Object.values(offered).some((v) => Array.isArray(v) && v.length);
    if (any) throw new Error(`a viewer is offered ${JSON.stringify(offered)}`);
    result.viewer_sees_no_forms = true;
  }
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  console.log(JSON.stringify(result));
} catch (e) {
  if (page) await page.screenshot({ path: `${shots}/dashboard-failure.png`, fullPage: true }).catch(() => {});
  console.error(String(e && e.stack ? e.stack : e));
  console.log(JSON.stringify(result));
  process.exitCode = 1;
} finally {
  await browser.close();
}
