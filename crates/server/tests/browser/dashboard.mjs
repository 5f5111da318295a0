// Drives the dashboard in headless Chromium: sign in with a token, check the panels, post a
// movement through the API, and wait for its alert to appear without a reload (within 1 s).
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
  console.error("usage: node dashboard.mjs BASE_URL TOKEN SCREENSHOT_DIR");
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

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const result = {};
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  page = await context.newPage();
  const errors = [];
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

  // A movement that takes DASH-1 below its minimum: the alert must appear without a reload.
  await api("POST", "/movements", { type: "issue", sku: "DASH-1", warehouse: "MAIN", qty: "17" });
  const posted = Date.now();
  await page.waitForSelector('#alerts-feed li[data-level="CRITICAL"]', { timeout: 1000 });
  result.alert_ms = Date.now() - posted;
  await page.waitForSelector('#balances tbody tr[data-level="CRITICAL"]', { timeout: 2000 });
  await page.waitForFunction(() => document.querySelector("#alerts-count").textContent === "1");
  // Names beside SKUs; an open alert follows the balance's quantity as it moves on.
  await page.waitForFunction(() => [...document.querySelectorAll("#balances tbody td .name")]
    .some((e) => e.textContent === "Dashboard bolt"));
  await api("POST", "/movements", { type: "issue", sku: "DASH-1", warehouse: "MAIN", qty: "1" });
  await page.waitForFunction(() => {
    const what = document.querySelector('#alerts-feed li[data-level="CRITICAL"] .what');
    return what && what.textContent.startsWith("DASH-1 (Dashboard bolt) in MAIN: 2 left");
  }, null, { timeout: 3000 });
  result.alert_follows_balance = true;

  // Posting from the keyboard, as a scanner would: the SKU and Enter, the quantity and Enter.
  const ledgerRows = async () => (await api("GET", "/ledger?sku=DASH-1&limit=1000")).items.length;
  await page.waitForSelector("#post:not([hidden])");
  const before = await ledgerRows();
  await page.selectOption("#p-type", "receipt");
  await page.fill("#p-cost", "0.5");
  await page.focus("#p-sku");
  await page.keyboard.type("DASH-1");
  await page.keyboard.press("Enter");
  if (!(await page.evaluate(() => document.activeElement.id === "p-qty"))) throw new Error("Enter in the article field did not move to the quantity");
  await page.keyboard.type("5");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelector("#toast").textContent.startsWith("Posted"));
  if (!(await page.evaluate(() => document.activeElement.id === "p-sku"))) throw new Error("focus did not return to the article field");
  if ((await ledgerRows()) !== before + 1) throw new Error("the receipt was not posted once");
  result.posted_from_keyboard = true;
  // An issue beyond the stock is refused, saying what is available.
  await page.selectOption("#p-type", "issue");
  await page.fill("#p-sku", "DASH-1");
  await page.fill("#p-qty", "1000");
  await page.click("#p-submit");
  await page.waitForFunction(() => [...document.querySelectorAll("#post-form .error")].some((e) => e.textContent.includes("available")));
  if ((await ledgerRows()) !== before + 1) throw new Error("a refused issue wrote something");
  result.refusal_shown = true;
  // The browser logs the refused request (409); that one was expected.
  for (let i = errors.length - 1; i >= 0; i--) if (errors[i].includes("409 (Conflict)")) errors.splice(i, 1);
  // A double click posts once (a receipt: the stock stays LOW, so no alert toast hides ours,
  // nor the inbox replay's below).
  await page.selectOption("#p-type", "receipt");
  await page.fill("#p-qty", "1");
  await page.dblclick("#p-submit");
  await page.waitForFunction(() => document.querySelector("#toast").textContent.startsWith("Posted: receipt of 1"));
  await page.waitForTimeout(300);
  if ((await ledgerRows()) !== before + 2) throw new Error(`a double click posted ${(await ledgerRows()) - before - 1} times`);
  result.double_click_posts_once = true;
  // Forty lines with one bad: nothing is posted and the line is named; fixed, all forty post as
  // one batch (receipts of 0.01: the stock stays LOW, so no alert toast hides ours).
  const before40 = await ledgerRows();
  await page.click("#batch summary");
  const lines = Array.from({ length: 40 }, (_, i) => `DASH-1 ${i === 16 ? "lots" : "0.01"} 0.5`);
  await page.fill("#b-lines", lines.join("\n"));
  await page.click("#b-submit");
  await page.waitForSelector('#b-errors li[data-line="17"]');
  if ((await ledgerRows()) !== before40) throw new Error("a batch with a bad line wrote something");
  for (let i = errors.length - 1; i >= 0; i--) if (errors[i].includes("422 (Unprocessable")) errors.splice(i, 1);
  lines[16] = "DASH-1 0.01 0.5";
  await page.fill("#b-lines", lines.join("\n"));
  await page.click("#b-submit");
  await page.waitForFunction(() => document.querySelector("#toast").textContent === "Posted 40 lines");
  if ((await ledgerRows()) !== before40 + 40) throw new Error("the batch did not post its 40 lines");
  result.batch_of_40 = true;
  await page.waitForSelector("#movements tbody tr");
  // The jobs panel lists the discarded job with its error and retries it.
  await page.waitForSelector('#failed li[data-job-id] .err');
  result.failed_job_shown = true;
  await page.click("#failed li[data-job-id] button");
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
  await accessible(page, "the dashboard");
  result.accessible = true;
  await page.screenshot({ path: `${shots}/dashboard-1366.png`, fullPage: true });

  // Readable on a phone: one column, nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  result.phone_overflow_px = overflow;
  if (overflow > 0) throw new Error(`the page is ${overflow}px wider than a phone screen`);
  await page.screenshot({ path: `${shots}/dashboard-390.png`, fullPage: true });
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);

  // A viewer is offered nothing it may not do: no posting form, no Acknowledge, no Retry.
  if (viewerToken) {
    const viewer = await (await browser.newContext({ viewport: { width: 1366, height: 768 } })).newPage();
    await viewer.goto(base);
    await viewer.fill("#token", viewerToken);
    await viewer.click("#signin-form button");
    await viewer.waitForSelector("#app:not([hidden])");
    await viewer.waitForSelector('#balances tbody tr');
    const offered = await viewer.evaluate(() => ({
      post: !document.querySelector("#post").hidden,
      ack: document.querySelectorAll("#alerts-feed button").length,
      retry: document.querySelectorAll("#failed button, #waiting button").length,
    }));
    if (offered.post || offered.ack || offered.retry) throw new Error(`a viewer is offered ${JSON.stringify(offered)}`);
    await accessible(viewer, "the dashboard as a viewer");
    await viewer.screenshot({ path: `${shots}/dashboard-viewer.png`, fullPage: true });
    result.viewer_sees_no_forms = true;
  }
  console.log(JSON.stringify(result));
} catch (e) {
  if (page) await page.screenshot({ path: `${shots}/dashboard-failure.png`, fullPage: true }).catch(() => {});
  console.error(String(e && e.stack ? e.stack : e));
  console.log(JSON.stringify(result));
  process.exitCode = 1;
} finally {
  await browser.close();
}
