//! The inventory API through real HTTP on every backend: valuation, transfers, counts, negative
//! stock, concurrency, batches, idempotency, roles, validation, archiving, the ledger, balances
//! and the outbox events postings write.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use crate::common;
use crate::common::on_both;

use std::collections::HashSet;
use std::str::FromStr;

use common::TestApp;
use malaka_server::auth::Role;
use reqwest::{Method, StatusCode};
use rust_decimal::Decimal;
use serde_json::{Value, json};

// ---- helpers ----------------------------------------------------------------------------------

/// A decimal from a JSON string or number.
fn d(v: &Value) -> Decimal {
    match v {
        Value::String(s) => Decimal::from_str(s).unwrap_or_else(|e| panic!("{s:?}: {e}")),
        Value::Number(n) => Decimal::from_str(&n.to_string()).unwrap(),
        other => panic!("not a decimal: {other}"),
    }
}

/// A decimal literal.
fn n(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// Sends `method` to `path` with `token` (if any) and `body` (if any) as JSON; the status and the
/// parsed body (`Null` when empty).
async fn call(
    app: &TestApp,
    method: Method,
    token: Option<&str>,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut req = app.client.request(method, app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req.send().await.expect("request");
    let status = r.status();
    let text = r.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    };
    (status, value)
}

async fn get(app: &TestApp, token: &str, path: &str) -> Value {
    let (s, v) = call(app, Method::GET, Some(token), path, None).await;
    assert_eq!(s, 200, "GET {path}: {v}");
    v
}

async fn post(app: &TestApp, token: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    call(app, Method::POST, Some(token), path, Some(body)).await
}

async fn patch(app: &TestApp, token: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    call(app, Method::PATCH, Some(token), path, Some(body)).await
}

async fn warehouse(app: &TestApp, token: &str, code: &str) {
    let (s, v) = post(
        app,
        token,
        "/api/v1/warehouses",
        &json!({"code": code, "name": format!("Warehouse {code}")}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["code"], code);
}

/// Creates an article: `extra` adds fields (`valuation`, `min_qty`, `allow_negative`, ...).
async fn article(app: &TestApp, token: &str, sku: &str, extra: Value) -> Value {
    let mut body = json!({"sku": sku, "name": format!("Article {sku}")});
    if let Value::Object(m) = extra {
        body.as_object_mut().unwrap().extend(m);
    }
    let (s, v) = post(app, token, "/api/v1/articles", &body).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["sku"], sku);
    v
}

/// The `key` of each item of a page, in order.
fn keys(page: &Value, key: &str) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[key].as_str().unwrap().to_owned())
        .collect()
}

/// Posts a movement and expects 201.
async fn posted(app: &TestApp, token: &str, body: Value) -> Value {
    let (s, v) = post(app, token, "/api/v1/movements", &body).await;
    assert_eq!(s, 201, "{body} -> {v}");
    v
}

async fn receipt(app: &TestApp, token: &str, sku: &str, wh: &str, qty: &str, cost: &str) -> Value {
    posted(
        app,
        token,
        json!({"type": "receipt", "sku": sku, "warehouse": wh, "qty": qty, "unit_cost": cost}),
    )
    .await
}

async fn issue(app: &TestApp, token: &str, sku: &str, wh: &str, qty: &str) -> Value {
    posted(
        app,
        token,
        json!({"type": "issue", "sku": sku, "warehouse": wh, "qty": qty}),
    )
    .await
}

async fn count(app: &TestApp, token: &str, sku: &str, wh: &str, qty: &str) -> Value {
    posted(
        app,
        token,
        json!({"type": "count", "sku": sku, "warehouse": wh, "qty": qty}),
    )
    .await
}

/// The one balance of (`sku`, `wh`), if it exists.
async fn balance(app: &TestApp, token: &str, sku: &str, wh: &str) -> Option<Value> {
    let v = get(
        app,
        token,
        &format!("/api/v1/balances?sku={sku}&warehouse={wh}"),
    )
    .await;
    let items = v["items"].as_array().unwrap();
    assert!(items.len() <= 1, "{v}");
    items.first().cloned()
}

/// (qty, value) of a balance; (0, 0) when it does not exist.
async fn stock(app: &TestApp, token: &str, sku: &str, wh: &str) -> (Decimal, Decimal) {
    balance(app, token, sku, wh)
        .await
        .map_or((Decimal::ZERO, Decimal::ZERO), |b| {
            (d(&b["qty"]), d(&b["value"]))
        })
}

/// Every ledger row matching `query` (`sku=A&...`, may be empty), following the cursor.
async fn ledger_all(app: &TestApp, token: &str, query: &str, limit: u32) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/api/v1/ledger?limit={limit}");
        if !query.is_empty() {
            path.push('&');
            path.push_str(query);
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = get(app, token, &path).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= limit as usize, "{page}");
        rows.extend(items.iter().cloned());
        pages += 1;
        assert!(pages < 10_000, "the cursor never ends");
        match &page["next"] {
            Value::Null => break,
            Value::String(s) => cursor = Some(s.clone()),
            other => panic!("next is {other}"),
        }
    }
    rows
}

async fn ledger_len(app: &TestApp, token: &str) -> usize {
    ledger_all(app, token, "", 1000).await.len()
}

/// Every outbox event postings wrote as (topic, payload), oldest first (the stock monitor's own
/// `stock.alert` events, written as it reacts, are left out).
async fn outbox(app: &TestApp) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = app
            .state
            .inventory()
            .outbox(after, 1000)
            .await
            .expect("outbox");
        let Some(last) = page.last() else {
            return out;
        };
        after = last.id;
        out.extend(
            page.into_iter()
                .filter(|e| e.topic != malaka_inventory::TOPIC_ALERT)
                .map(|e| (e.topic, e.payload)),
        );
    }
}

async fn assert_verified(app: &TestApp) {
    let report = app.state.inventory().verify().await.expect("verify");
    assert!(
        report.discrepancies.is_empty(),
        "ledger and balances differ: {:?}",
        report.discrepancies
    );
}

fn error(v: &Value) -> &Value {
    &v["error"]
}

/// Asserts a 422 `invalid` naming `field`.
fn assert_invalid(status: StatusCode, v: &Value, field: &str, what: &str) {
    assert_eq!(status, 422, "{what}: {v}");
    assert_eq!(error(v)["code"], "invalid", "{what}: {v}");
    assert_eq!(error(v)["field"], field, "{what}: {v}");
}

// ---- valuation --------------------------------------------------------------------------------

on_both!(fifo_issues_consume_the_oldest_layers);
async fn fifo_issues_consume_the_oldest_layers(app: &TestApp) {
    let admin = app.admin_token().await;
    warehouse(app, &admin, "W1").await;
    article(app, &admin, "FIFO-1", json!({"valuation": "fifo"})).await;
    let r1 = receipt(app, &admin, "FIFO-1", "W1", "10", "100").await;
    assert_eq!(r1["type"], "receipt");
    let row = &r1["rows"][0];
    assert_eq!(
        (d(&row["qty_change"]), d(&row["value_change"])),
        (n("10"), n("1000"))
    );
    assert_eq!(row["movement_id"], r1["id"]);
    receipt(app, &admin, "FIFO-1", "W1", "10", "120").await;
    let out = issue(app, &admin, "FIFO-1", "W1", "15").await;
    let rows = out["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["type"], "issue");
    assert_eq!(row["sku"], "FIFO-1");
    assert_eq!(row["warehouse"], "W1");
    assert_eq!(d(&row["qty_change"]), n("-15"));
    assert_eq!(d(&row["value_change"]), n("-1600"));
    assert_eq!(d(&row["qty_after"]), n("5"));
    assert_eq!(d(&row["value_after"]), n("600"));
    assert_eq!(d(&row["rate_after"]), n("120"));
    assert!(row["id"].is_i64());

    let v = get(app, &admin, "/api/v1/articles/FIFO-1/valuation").await;
    assert_eq!(v["sku"], "FIFO-1");
    assert_eq!(v["valuation"], "fifo");
    assert_eq!((d(&v["qty"]), d(&v["value"])), (n("5"), n("600")));
    let whs = v["warehouses"].as_array().unwrap();
    assert_eq!(whs.len(), 1, "{v}");
    assert_eq!(whs[0]["warehouse"], "W1");
    assert_eq!(d(&whs[0]["rate"]), n("120"));
    let layers = whs[0]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{v}");
    assert_eq!(
        (d(&layers[0]["qty"]), d(&layers[0]["rate"])),
        (n("5"), n("120"))
    );
    assert_eq!(stock(app, &admin, "FIFO-1", "W1").await, (n("5"), n("600")));
    assert_verified(app).await;
}

on_both!(moving_average_issues_at_the_average_rate);
async fn moving_average_issues_at_the_average_rate(app: &TestApp) {
    let admin = app.admin_token().await;
    warehouse(app, &admin, "W1").await;
    let a = article(app, &admin, "MA-1", json!({})).await;
    assert_eq!(a["valuation"], "moving_average", "the default method");
    receipt(app, &admin, "MA-1", "W1", "10", "100").await;
    let r2 = receipt(app, &admin, "MA-1", "W1", "10", "120").await;
    assert_eq!(d(&r2["rows"][0]["rate_after"]), n("110"));
    assert_eq!(d(&r2["rows"][0]["value_after"]), n("2200"));
    let out = issue(app, &admin, "MA-1", "W1", "15").await;
    let row = &out["rows"][0];
    assert_eq!(d(&row["value_change"]), n("-1650"));
    assert_eq!(d(&row["unit_cost"]), n("110"));
    assert_eq!(d(&row["qty_after"]), n("5"));
    assert_eq!(d(&row["value_after"]), n("550"));
    assert_eq!(d(&row["rate_after"]), n("110"));

    let v = get(app, &admin, "/api/v1/articles/MA-1/valuation").await;
    assert_eq!(v["valuation"], "moving_average");
    assert_eq!((d(&v["qty"]), d(&v["value"])), (n("5"), n("550")));
    let whs = v["warehouses"].as_array().unwrap();
    assert_eq!(d(&whs[0]["rate"]), n("110"));
    assert!(whs[0]["layers"].as_array().unwrap().is_empty(), "{v}");
    let b = balance(app, &admin, "MA-1", "W1").await.unwrap();
    assert_eq!(
        (d(&b["qty"]), d(&b["value"]), d(&b["rate"])),
        (n("5"), n("550"), n("110"))
    );
    assert_verified(app).await;
}

on_both!(transfers_keep_the_total_value);
async fn transfers_keep_the_total_value(app: &TestApp) {
    let admin = app.admin_token().await;
    for w in ["W1", "W2", "W3"] {
        warehouse(app, &admin, w).await;
    }
    // FIFO: the destination receives the consumed layers at their own rates.
    article(app, &admin, "T-FIFO", json!({"valuation": "fifo"})).await;
    receipt(app, &admin, "T-FIFO", "W1", "10", "100").await;
    receipt(app, &admin, "T-FIFO", "W1", "10", "120").await;
    let t = posted(
        app,
        &admin,
        json!({"type": "transfer", "sku": "T-FIFO", "warehouse": "W1", "to_warehouse": "W2", "qty": "15"}),
    )
    .await;
    assert_eq!(t["to_warehouse"], "W2");
    let rows = t["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{t}");
    assert_eq!(rows[0]["warehouse"], "W1");
    assert_eq!(
        (d(&rows[0]["qty_change"]), d(&rows[0]["value_change"])),
        (n("-15"), n("-1600"))
    );
    assert_eq!(rows[1]["warehouse"], "W2");
    assert_eq!(
        (d(&rows[1]["qty_change"]), d(&rows[1]["value_change"])),
        (n("15"), n("1600"))
    );
    assert_eq!(rows[0]["movement_id"], rows[1]["movement_id"]);
    let v = get(app, &admin, "/api/v1/articles/T-FIFO/valuation").await;
    assert_eq!((d(&v["qty"]), d(&v["value"])), (n("20"), n("2200")));
    let whs = v["warehouses"].as_array().unwrap();
    let w2 = whs.iter().find(|w| w["warehouse"] == "W2").unwrap();
    let layers: Vec<(Decimal, Decimal)> = w2["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (d(&l["qty"]), d(&l["rate"])))
        .collect();
    assert_eq!(layers, vec![(n("10"), n("100")), (n("5"), n("120"))], "{v}");
    // An issue at the destination consumes the carried layers oldest first.
    let out = issue(app, &admin, "T-FIFO", "W2", "12").await;
    assert_eq!(d(&out["rows"][0]["value_change"]), n("-1240"));
    assert_eq!(stock(app, &admin, "T-FIFO", "W1").await, (n("5"), n("600")));
    assert_eq!(stock(app, &admin, "T-FIFO", "W2").await, (n("3"), n("360")));

    // Moving average: the destination takes the source's rate.
    article(app, &admin, "T-MA", json!({})).await;
    receipt(app, &admin, "T-MA", "W1", "10", "100").await;
    receipt(app, &admin, "T-MA", "W1", "10", "120").await;
    posted(
        app,
        &admin,
        json!({"type": "transfer", "sku": "T-MA", "warehouse": "W1", "to_warehouse": "W2", "qty": 15}),
    )
    .await;
    assert_eq!(stock(app, &admin, "T-MA", "W1").await, (n("5"), n("550")));
    assert_eq!(stock(app, &admin, "T-MA", "W2").await, (n("15"), n("1650")));

    // A rate that does not divide evenly: 3 units worth 4 (rate 1.333333). Moving 2 of them
    // must not create or lose value through rounding.
    article(app, &admin, "T-ODD", json!({})).await;
    receipt(app, &admin, "T-ODD", "W1", "1", "1").await;
    receipt(app, &admin, "T-ODD", "W1", "1", "1").await;
    receipt(app, &admin, "T-ODD", "W1", "1", "2").await;
    let t = posted(
        app,
        &admin,
        json!({"type": "transfer", "sku": "T-ODD", "warehouse": "W1", "to_warehouse": "W3", "qty": "2"}),
    )
    .await;
    let rows = t["rows"].as_array().unwrap();
    assert_eq!(
        d(&rows[0]["value_change"]) + d(&rows[1]["value_change"]),
        Decimal::ZERO,
        "a transfer moves value, it does not make or lose it: {t}"
    );
    let (q1, v1) = stock(app, &admin, "T-ODD", "W1").await;
    let (q3, v3) = stock(app, &admin, "T-ODD", "W3").await;
    assert_eq!((q1 + q3, v1 + v3), (n("3"), n("4")));
    // Back again, all of it.
    posted(
        app,
        &admin,
        json!({"type": "transfer", "sku": "T-ODD", "warehouse": "W3", "to_warehouse": "W1", "qty": "2"}),
    )
    .await;
    assert_eq!(stock(app, &admin, "T-ODD", "W1").await, (n("3"), n("4")));
    assert_eq!(stock(app, &admin, "T-ODD", "W3").await, (n("0"), n("0")));
    // Same for FIFO with an odd layer set.
    article(app, &admin, "T-ODDF", json!({"valuation": "fifo"})).await;
    receipt(app, &admin, "T-ODDF", "W1", "3", "1.333333").await;
    receipt(app, &admin, "T-ODDF", "W1", "0.5", "0.000003").await;
    let before = stock(app, &admin, "T-ODDF", "W1").await;
    posted(
        app,
        &admin,
        json!({"type": "transfer", "sku": "T-ODDF", "warehouse": "W1", "to_warehouse": "W2", "qty": "3.5"}),
    )
    .await;
    let (q1, v1) = stock(app, &admin, "T-ODDF", "W1").await;
    let (q2, v2) = stock(app, &admin, "T-ODDF", "W2").await;
    assert_eq!((q1, v1), (n("0"), n("0")));
    assert_eq!((q1 + q2, v1 + v2), before);
    // A transfer of more than is there is refused.
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements",
        &json!({"type": "transfer", "sku": "T-MA", "warehouse": "W1", "to_warehouse": "W2", "qty": "6"}),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(error(&v)["code"], "insufficient_stock");
    assert_verified(app).await;
}

on_both!(counts_set_the_counted_quantity);
async fn counts_set_the_counted_quantity(app: &TestApp) {
    let admin = app.admin_token().await;
    warehouse(app, &admin, "W1").await;
    article(app, &admin, "C-MA", json!({})).await;
    receipt(app, &admin, "C-MA", "W1", "10", "5").await;
    // A gain without unit_cost is valued at the current rate.
    let c = count(app, &admin, "C-MA", "W1", "12").await;
    let row = &c["rows"][0];
    assert_eq!(row["type"], "count");
    assert_eq!(
        (d(&row["qty_change"]), d(&row["value_change"])),
        (n("2"), n("10"))
    );
    assert_eq!(d(&row["qty_after"]), n("12"));
    // A gain with unit_cost is valued at it.
    let c = posted(
        app,
        &admin,
        json!({"type": "count", "sku": "C-MA", "warehouse": "W1", "qty": "15", "unit_cost": "8"}),
    )
    .await;
    let row = &c["rows"][0];
    assert_eq!(
        (d(&row["qty_change"]), d(&row["value_change"])),
        (n("3"), n("24"))
    );
    assert_eq!(
        (d(&row["value_after"]), d(&row["rate_after"])),
        (n("84"), n("5.6"))
    );
    // Counting what is there writes a zero row.
    let before = ledger_len(app, &admin).await;
    let c = count(app, &admin, "C-MA", "W1", "15").await;
    let rows = c["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{c}");
    assert_eq!(
        (d(&rows[0]["qty_change"]), d(&rows[0]["value_change"])),
        (n("0"), n("0"))
    );
    assert_eq!(d(&rows[0]["qty_after"]), n("15"));
    assert_eq!(ledger_len(app, &admin).await, before + 1);
    // A loss is issued at the moving-average rate.
    let c = count(app, &admin, "C-MA", "W1", "5").await;
    let row = &c["rows"][0];
    assert_eq!(
        (d(&row["qty_change"]), d(&row["value_change"])),
        (n("-10"), n("-56"))
    );
    assert_eq!(stock(app, &admin, "C-MA", "W1").await, (n("5"), n("28")));
    // Counting zero empties it.
    count(app, &admin, "C-MA", "W1", "0").await;
    assert_eq!(stock(app, &admin, "C-MA", "W1").await, (n("0"), n("0")));

    // FIFO: a loss consumes the oldest layers; a gain adds a layer.
    article(app, &admin, "C-FIFO", json!({"valuation": "fifo"})).await;
    receipt(app, &admin, "C-FIFO", "W1", "10", "100").await;
    receipt(app, &admin, "C-FIFO", "W1", "10", "120").await;
    let c = count(app, &admin, "C-FIFO", "W1", "5").await;
    assert_eq!(d(&c["rows"][0]["value_change"]), n("-1600"));
    let c = posted(
        app,
        &admin,
        json!({"type": "count", "sku": "C-FIFO", "warehouse": "W1", "qty": "8", "unit_cost": "130"}),
    )
    .await;
    assert_eq!(d(&c["rows"][0]["value_change"]), n("390"));
    let v = get(app, &admin, "/api/v1/articles/C-FIFO/valuation").await;
    let layers: Vec<(Decimal, Decimal)> = v["warehouses"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (d(&l["qty"]), d(&l["rate"])))
        .collect();
    assert_eq!(layers, vec![(n("5"), n("120")), (n("3"), n("130"))]);
    assert_eq!(d(&v["value"]), n("990"));
    // A first count on a fresh balance is a gain at the given cost.
    warehouse(app, &admin, "W2").await;
    let c = posted(
        app,
        &admin,
        json!({"type": "count", "sku": "C-FIFO", "warehouse": "W2", "qty": "4", "unit_cost": "7"}),
    )
    .await;
    assert_eq!(d(&c["rows"][0]["value_change"]), n("28"));
    assert_verified(app).await;
}

// ---- negative stock ---------------------------------------------------------------------------

on_both!(negative_stock_is_refused_unless_allowed);
async fn negative_stock_is_refused_unless_allowed(app: &TestApp) {
    let admin = app.admin_token().await;
    warehouse(app, &admin, "W1").await;
    warehouse(app, &admin, "W2").await;
    article(app, &admin, "N-1", json!({})).await;
    receipt(app, &admin, "N-1", "W1", "5", "10").await;
    let rows_before = ledger_len(app, &admin).await;
    let events_before = outbox(app).await.len();

    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements",
        &json!({"type": "issue", "sku": "N-1", "warehouse": "W1", "qty": "6"}),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(error(&v)["code"], "insufficient_stock");
    let msg = error(&v)["message"].as_str().unwrap();
    for part in ["N-1", "W1", "5", "6"] {
        assert!(msg.contains(part), "{part} in {msg}");
    }
    // Nothing written.
    assert_eq!(ledger_len(app, &admin).await, rows_before);
    assert_eq!(outbox(app).await.len(), events_before);
    assert_eq!(stock(app, &admin, "N-1", "W1").await, (n("5"), n("50")));

    // A warehouse with no balance yet: nothing available, and no balance appears.
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements",
        &json!({"type": "issue", "sku": "N-1", "warehouse": "W2", "qty": "1"}),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert!(balance(app, &admin, "N-1", "W2").await.is_none());
    // Counts never go below zero, so they are never refused.
    assert_eq!(ledger_len(app, &admin).await, rows_before);

    // An article that allows negative stock.
    article(app, &admin, "N-2", json!({"allow_negative": true})).await;
    let out = issue(app, &admin, "N-2", "W1", "3").await;
    assert_eq!(d(&out["rows"][0]["qty_after"]), n("-3"));
    let r = receipt(app, &admin, "N-2", "W1", "5", "10").await;
    assert_eq!(d(&r["rows"][0]["qty_after"]), n("2"));
    assert_eq!(stock(app, &admin, "N-2", "W1").await, (n("2"), n("20")));

    // Allowing it later works too.
    let (s, v) = patch(
        app,
        &admin,
        "/api/v1/articles/N-1",
        &json!({"allow_negative": true}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["allow_negative"], true);
    let out = issue(app, &admin, "N-1", "W1", "6").await;
    assert_eq!(d(&out["rows"][0]["qty_after"]), n("-1"));
    assert_verified(app).await;
}

// ---- concurrency ------------------------------------------------------------------------------

on_both!(concurrent_postings_leave_the_exact_balance);
async fn concurrent_postings_leave_the_exact_balance(app: &TestApp) {
    const CLIENTS: usize = 16;
    const PAIRS: usize = 50; // a receipt and an issue each: 100 postings per client
    let admin = app.admin_token().await;
    warehouse(app, &admin, "W1").await;
    article(app, &admin, "HOT", json!({"min_qty": "100"})).await;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        // A token per client: each stays within its own rate limit (100 requests).
        let token = app.token(Role::Clerk).await;
        let client = reqwest::Client::new();
        let url = app.url("/api/v1/movements");
        tasks.push(tokio::spawn(async move {
            for i in 0..PAIRS {
                let cost = format!("{}.{:02}", 10 + c, i);
                for body in [
                    json!({"type": "receipt", "sku": "HOT", "warehouse": "W1", "qty": "3", "unit_cost": cost}),
                    json!({"type": "issue", "sku": "HOT", "warehouse": "W1", "qty": "2"}),
                ] {
                    let r = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await
                        .expect("request");
                    let status = r.status();
                    let text = r.text().await.unwrap();
                    assert_eq!(status, 201, "client {c} posting {i}: {body} -> {text}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    let expected = Decimal::from(CLIENTS * PAIRS);
    let (qty, value) = stock(app, &admin, "HOT", "W1").await;
    assert_eq!(qty, expected);
    let rows = ledger_all(app, &admin, "sku=HOT&warehouse=W1", 1000).await;
    assert_eq!(rows.len(), CLIENTS * PAIRS * 2);
    let qty_sum: Decimal = rows.iter().map(|r| d(&r["qty_change"])).sum();
    let value_sum: Decimal = rows.iter().map(|r| d(&r["value_change"])).sum();
    assert_eq!(qty_sum, qty);
    assert_eq!(value_sum, value);
    // Each row continues from the one before it: postings serialized.
    let mut q = Decimal::ZERO;
    let mut v = Decimal::ZERO;
    for r in &rows {
        q += d(&r["qty_change"]);
        v += d(&r["value_change"]);
        assert_eq!(d(&r["qty_after"]), q, "{r}");
        assert_eq!(d(&r["value_after"]), v, "{r}");
        assert!(q >= Decimal::ZERO);
    }
    // Every posting wrote its event.
    let events = outbox(app).await;
    let posted_events = events
        .iter()
        .filter(|(t, _)| t == "movement.posted")
        .count();
    assert_eq!(posted_events, CLIENTS * PAIRS * 2);
    assert_verified(app).await;
}

// ---- batches ----------------------------------------------------------------------------------

on_both!(a_batch_is_all_or_nothing);
async fn a_batch_is_all_or_nothing(app: &TestApp) {
    let admin = app.admin_token().await;
    warehouse(app, &admin, "W1").await;
    article(app, &admin, "B-1", json!({})).await;
    article(app, &admin, "B-2", json!({"valuation": "fifo"})).await;
    let good = |sku: &str, qty: &str| json!({"type": "receipt", "sku": sku, "warehouse": "W1", "qty": qty, "unit_cost": "2"});

    // An invalid item: 422 naming it, nothing posted.
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements/batch",
        &json!({"movements": [
            good("B-1", "1"), good("B-2", "1"), good("B-1", "1"),
            {"type": "issue", "sku": "B-1", "warehouse": "W1", "qty": "abc"},
        ]}),
    )
    .await;
    assert_invalid(s, &v, "movements[3].qty", "bad qty in a batch");
    assert!(error(&v).get("errors").is_none(), "one error: {v}");
    // Every unreadable line is named at once, the first also in `field`.
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements/batch",
        &json!({"movements": [
            good("B-1", "1"),
            {"type": "issue", "sku": "B-1", "warehouse": "W1", "qty": "lots"},
            good("B-1", "1"),
            {"type": "receipt", "sku": "no good", "warehouse": "W1", "qty": "1", "unit_cost": "1"},
            {"type": "receipt", "sku": "B-1", "warehouse": "W1", "qty": "0", "unit_cost": "1"},
        ]}),
    )
    .await;
    assert_invalid(s, &v, "movements[1].qty", "three bad lines");
    let all: Vec<(&str, &str)> = error(&v)["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["field"].as_str().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        all,
        [
            ("movements[1].qty", "invalid"),
            ("movements[3].sku", "invalid"),
            ("movements[4].qty", "invalid")
        ],
        "{v}"
    );
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements/batch",
        &json!({"movements": [
            good("B-1", "1"),
            {"type": "receipt", "sku": "B-1", "warehouse": "W1", "qty": "1"},
        ]}),
    )
    .await;
    assert_invalid(s, &v, "movements[1].unit_cost", "receipt without cost");
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements/batch",
        &json!({"movements": [good("B-1", "1"), {"type": "receipt", "sku": "bad sku", "warehouse": "W1", "qty": "1", "unit_cost": "1"}]}),
    )
    .await;
    assert_invalid(s, &v, "movements[1].sku", "bad sku");
    // A failure while posting: everything rolls back.
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements/batch",
        &json!({"movements": [
            good("B-1", "5"), good("B-2", "5"),
            {"type": "issue", "sku": "B-1", "warehouse": "W1", "qty": "6"},
        ]}),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(error(&v)["code"], "insufficient_stock");
    assert_eq!(
        error(&v)["field"],
        "movements[2].qty",
        "the refused line is named"
    );
    assert!(
        error(&v)["message"]
            .as_str()
            .unwrap()
            .contains("5 available"),
        "{v}"
    );
    // The line refused is the one that runs out, not the first of its article.
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements/batch",
        &json!({"movements": [
            good("B-1", "5"),
            {"type": "issue", "sku": "B-1", "warehouse": "W1", "qty": "3"},
            good("B-2", "1"),
            {"type": "issue", "sku": "B-1", "warehouse": "W1", "qty": "3"},
        ]}),
    )
    .await;
    assert_eq!(
        (s, error(&v)["field"].clone()),
        (StatusCode::CONFLICT, json!("movements[3].qty")),
        "{v}"
    );
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements/batch",
        &json!({"movements": [good("B-1", "5"), good("NOPE", "5")]}),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(error(&v)["field"], "movements[1].sku", "{v}");
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements/batch",
        &json!({"movements": [
            good("B-1", "5"),
            {"type": "transfer", "sku": "B-1", "warehouse": "W1", "to_warehouse": "NOWH", "qty": "1"},
        ]}),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(error(&v)["field"], "movements[1].to_warehouse", "{v}");
    // A single posting's refusal names no line.
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements",
        &json!({"type": "issue", "sku": "B-1", "warehouse": "W1", "qty": "1"}),
    )
    .await;
    assert_eq!(
        (s, error(&v)["field"].clone()),
        (StatusCode::CONFLICT, json!("qty")),
        "{v}"
    );
    assert_eq!(ledger_len(app, &admin).await, 0);
    assert!(outbox(app).await.is_empty());
    assert!(
        get(app, &admin, "/api/v1/balances").await["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Empty and oversized batches.
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements/batch",
        &json!({"movements": []}),
    )
    .await;
    assert_invalid(s, &v, "movements", "empty batch");
    let many: Vec<Value> = (0..1001).map(|_| good("B-1", "1")).collect();
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements/batch",
        &json!({"movements": many}),
    )
    .await;
    assert_invalid(s, &v, "movements", "1001 movements");
    assert_eq!(ledger_len(app, &admin).await, 0);

    // A good batch posts everything, in order: a later item may use stock an earlier one brought.
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements/batch",
        &json!({"movements": [
            good("B-1", "5"), good("B-2", "4"),
            {"type": "issue", "sku": "B-1", "warehouse": "W1", "qty": "5"},
            good("B-1", "1"),
        ]}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let ms = v["movements"].as_array().unwrap();
    assert_eq!(ms.len(), 4);
    assert_eq!(ms[2]["type"], "issue");
    assert_eq!(d(&ms[3]["rows"][0]["qty_after"]), n("1"));
    let ids: HashSet<&str> = ms.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4);
    assert_eq!(ledger_len(app, &admin).await, 4);
    assert_eq!(stock(app, &admin, "B-1", "W1").await, (n("1"), n("2")));
    assert_eq!(stock(app, &admin, "B-2", "W1").await, (n("4"), n("8")));
    // 1000 is allowed.
    let many: Vec<Value> = (0..1000).map(|_| good("B-2", "1")).collect();
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements/batch",
        &json!({"movements": many}),
    )
    .await;
    assert_eq!(s, 201, "{}", error(&v));
    assert_eq!(
        stock(app, &admin, "B-2", "W1").await,
        (n("1004"), n("2008"))
    );
    assert_verified(app).await;
}

// ---- idempotency ------------------------------------------------------------------------------

on_both!(an_idempotency_key_posts_once);
async fn an_idempotency_key_posts_once(app: &TestApp) {
    let clerk = app.token(Role::Clerk).await;
    let admin = app.admin_token().await;
    warehouse(app, &admin, "W1").await;
    article(app, &admin, "I-1", json!({})).await;
    let body =
        json!({"type": "receipt", "sku": "I-1", "warehouse": "W1", "qty": "7", "unit_cost": "3"});
    let send = |key: &'static str, body: Value| {
        let req = app
            .client
            .post(app.url("/api/v1/movements"))
            .bearer_auth(&clerk)
            .header("Idempotency-Key", key)
            .json(&body);
        async move { req.send().await.expect("request") }
    };
    let first = send("key-1", body.clone()).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let events = outbox(app).await.len();

    let again = send("key-1", body.clone()).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first, "the first answer, replayed");
    assert_eq!(ledger_len(app, &admin).await, 1);
    assert_eq!(stock(app, &admin, "I-1", "W1").await, (n("7"), n("21")));
    assert_eq!(outbox(app).await.len(), events, "a replay writes no event");

    // The same key with another body.
    let other =
        json!({"type": "receipt", "sku": "I-1", "warehouse": "W1", "qty": "8", "unit_cost": "3"});
    let r = send("key-1", other.clone()).await;
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(error(&v)["code"], "idempotency_key_reused", "{v}");
    assert_eq!(ledger_len(app, &admin).await, 1);

    // Another key posts again; without a key every request posts.
    assert_eq!(send("key-2", body.clone()).await.status(), 201);
    assert_eq!(send("key-2", body.clone()).await.status(), 201);
    assert_eq!(post(app, &clerk, "/api/v1/movements", &body).await.0, 201);
    assert_eq!(post(app, &clerk, "/api/v1/movements", &body).await.0, 201);
    assert_eq!(ledger_len(app, &admin).await, 4);

    // A refused posting is replayed as refused, and still posts nothing.
    let too_much = json!({"type": "issue", "sku": "I-1", "warehouse": "W1", "qty": "1000"});
    let r = send("key-3", too_much.clone()).await;
    assert_eq!(r.status(), 409);
    let r = send("key-3", too_much).await;
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(ledger_len(app, &admin).await, 4);
    assert_eq!(stock(app, &admin, "I-1", "W1").await, (n("28"), n("84")));

    // Batches too.
    let batch = json!({"movements": [body.clone(), body.clone()]});
    let r = app
        .client
        .post(app.url("/api/v1/movements/batch"))
        .bearer_auth(&clerk)
        .header("Idempotency-Key", "batch-1")
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = app
        .client
        .post(app.url("/api/v1/movements/batch"))
        .bearer_auth(&clerk)
        .header("Idempotency-Key", "batch-1")
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(ledger_len(app, &admin).await, 6);
    assert_verified(app).await;
}

// ---- roles ------------------------------------------------------------------------------------

/// Which permission an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Read,
    Post,
    Catalog,
    Ack,
    Jobs,
}

fn allowed(role: Role, needs: Needs) -> bool {
    match role {
        Role::Admin => true,
        Role::Manager => true,
        Role::Clerk => matches!(needs, Needs::Read | Needs::Post | Needs::Ack),
        Role::Viewer => needs == Needs::Read,
    }
}

/// The ids an endpoint list works on: an alert, and two waiting jobs per role.
#[derive(Debug, Clone, Copy)]
struct Ids {
    alert: i64,
    retry: i64,
    cancel: i64,
}

/// Every endpoint with a request that succeeds for a role allowed to make it; `tag` keeps each
/// role's created things apart.
fn endpoints(tag: &str, ids: Ids) -> Vec<(Needs, Method, String, Option<Value>)> {
    let sku = format!("R-{tag}");
    let doomed = format!("D-{tag}");
    vec![
        (Needs::Read, Method::GET, "/api/v1/me".into(), None),
        (
            Needs::Read,
            Method::GET,
            "/api/v1/ledger/recent".into(),
            None,
        ),
        (Needs::Read, Method::GET, "/api/v1/alerts".into(), None),
        (
            Needs::Ack,
            Method::POST,
            format!("/api/v1/alerts/{}/ack", ids.alert),
            Some(json!({})),
        ),
        (Needs::Read, Method::GET, "/api/v1/jobs".into(), None),
        (Needs::Read, Method::GET, "/api/v1/jobs/stats".into(), None),
        (
            Needs::Read,
            Method::GET,
            format!("/api/v1/jobs/{}", ids.retry),
            None,
        ),
        (
            Needs::Jobs,
            Method::POST,
            format!("/api/v1/jobs/{}/retry", ids.retry),
            Some(json!({})),
        ),
        (
            Needs::Jobs,
            Method::POST,
            format!("/api/v1/jobs/{}/cancel", ids.cancel),
            Some(json!({})),
        ),
        (
            Needs::Read,
            Method::POST,
            "/api/v1/ws/ticket".into(),
            Some(json!({})),
        ),
        (
            Needs::Read,
            Method::GET,
            "/api/v1/openapi.json".into(),
            None,
        ),
        (Needs::Read, Method::GET, "/api/v1/articles".into(), None),
        (
            Needs::Catalog,
            Method::POST,
            "/api/v1/articles".into(),
            Some(json!({"sku": format!("NEW-{tag}"), "name": "x"})),
        ),
        (
            Needs::Read,
            Method::GET,
            "/api/v1/articles/BASE".into(),
            None,
        ),
        (
            Needs::Catalog,
            Method::PATCH,
            format!("/api/v1/articles/{sku}"),
            Some(json!({"name": "renamed"})),
        ),
        (
            Needs::Catalog,
            Method::DELETE,
            format!("/api/v1/articles/{doomed}"),
            None,
        ),
        (
            Needs::Read,
            Method::GET,
            "/api/v1/articles/BASE/valuation".into(),
            None,
        ),
        (
            Needs::Catalog,
            Method::POST,
            "/api/v1/warehouses".into(),
            Some(json!({"code": format!("WH-{tag}"), "name": "x"})),
        ),
        (Needs::Read, Method::GET, "/api/v1/warehouses".into(), None),
        (
            Needs::Read,
            Method::GET,
            "/api/v1/warehouses/W1".into(),
            None,
        ),
        (
            Needs::Catalog,
            Method::PATCH,
            "/api/v1/warehouses/W1".into(),
            Some(json!({"name": format!("renamed by {tag}")})),
        ),
        (
            Needs::Post,
            Method::POST,
            "/api/v1/movements".into(),
            Some(
                json!({"type": "receipt", "sku": "BASE", "warehouse": "W1", "qty": "1", "unit_cost": "1"}),
            ),
        ),
        (
            Needs::Post,
            Method::POST,
            "/api/v1/movements/batch".into(),
            Some(
                json!({"movements": [{"type": "receipt", "sku": "BASE", "warehouse": "W1", "qty": "1", "unit_cost": "1"}]}),
            ),
        ),
        (Needs::Read, Method::GET, "/api/v1/balances".into(), None),
        (Needs::Read, Method::GET, "/api/v1/ledger".into(), None),
    ]
}

on_both!(every_role_against_every_endpoint);
async fn every_role_against_every_endpoint(app: &TestApp) {
    let admin = app.admin_token().await;
    warehouse(app, &admin, "W1").await;
    article(app, &admin, "BASE", json!({})).await;
    // An alert to acknowledge (raised by the stock monitor after the posting).
    article(app, &admin, "ALERTED", json!({"min_qty": "10"})).await;
    receipt(app, &admin, "ALERTED", "W1", "5", "1").await;
    let mut alert = None;
    for _ in 0..500 {
        let open = get(app, &admin, "/api/v1/alerts?state=open").await;
        if let Some(id) = open["items"][0]["id"].as_i64() {
            alert = Some(id);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let alert = alert.expect("the alert is raised");
    let mut ids = std::collections::HashMap::new();
    for role in Role::ALL {
        let tag = role.as_str();
        article(app, &admin, &format!("R-{tag}"), json!({})).await;
        article(app, &admin, &format!("D-{tag}"), json!({})).await;
        // Waiting jobs (far in the future) to retry and to cancel.
        let later = || {
            malaka_jobs::NewJob::new("noop", json!({}))
                .run_at(chrono::Utc::now() + chrono::Duration::hours(1))
        };
        let retry = app.state.jobs().enqueue(later()).await.unwrap().id;
        let cancel = app.state.jobs().enqueue(later()).await.unwrap().id;
        ids.insert(
            tag,
            Ids {
                alert,
                retry,
                cancel,
            },
        );
    }
    let anon = Ids {
        alert,
        retry: 1,
        cancel: 2,
    };
    // No token: 401 everywhere.
    for (_, method, path, body) in endpoints("anon", anon) {
        let (s, v) = call(app, method.clone(), None, &path, body.as_ref()).await;
        assert_eq!(s, 401, "{method} {path}: {v}");
        assert_eq!(error(&v)["code"], "unauthorized");
    }
    let mut table = Vec::new();
    for role in Role::ALL {
        let token = app.token(role).await;
        for (needs, method, path, body) in endpoints(role.as_str(), ids[role.as_str()]) {
            let (s, v) = call(app, method.clone(), Some(&token), &path, body.as_ref()).await;
            table.push(format!("{role:>7} {method:<6} {path:<32} {s}"));
            if allowed(role, needs) {
                assert!(
                    s.is_success(),
                    "{role} may {method} {path} ({needs:?}): {s} {v}"
                );
            } else {
                assert_eq!(s, 403, "{role} may not {method} {path} ({needs:?}): {v}");
                assert_eq!(error(&v)["code"], "forbidden");
            }
        }
    }
    eprintln!("{}", table.join("\n"));
    // A viewer's refused posting wrote nothing: admin, manager and clerk posted 2 each (and
    // the alert's receipt 1).
    assert_eq!(ledger_len(app, &admin).await, 7);
    // Tokens are admin-only, also for managers.
    let manager = app.token(Role::Manager).await;
    assert_eq!(app.get_as(&manager, "/api/v1/tokens").await.status(), 403);
}

// ---- validation -------------------------------------------------------------------------------

on_both!(malformed_and_invalid_bodies_are_refused);
async fn malformed_and_invalid_bodies_are_refused(app: &TestApp) {
    let admin = app.admin_token().await;
    warehouse(app, &admin, "W1").await;
    warehouse(app, &admin, "W2").await;
    article(app, &admin, "V-1", json!({})).await;

    // Not JSON at all: 400.
    for path in [
        "/api/v1/movements",
        "/api/v1/movements/batch",
        "/api/v1/articles",
        "/api/v1/warehouses",
    ] {
        let r = app
            .client
            .post(app.url(path))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body("{]")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(error(&v)["code"], "malformed", "{path}: {v}");
    }
    let r = app
        .client
        .patch(app.url("/api/v1/articles/V-1"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let base =
        json!({"type": "receipt", "sku": "V-1", "warehouse": "W1", "qty": "1", "unit_cost": "1"});
    let with = |changes: Value| {
        let mut b = base.clone();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                b.as_object_mut().unwrap().remove(k);
            } else {
                b[k] = v.clone();
            }
        }
        b
    };
    let cases = [
        (
            "bad sku characters",
            with(json!({"sku": "bad sku!"})),
            "sku",
        ),
        ("sku too long", with(json!({"sku": "X".repeat(65)})), "sku"),
        ("empty sku", with(json!({"sku": ""})), "sku"),
        ("qty 0", with(json!({"qty": "0"})), "qty"),
        ("qty number 0", with(json!({"qty": 0})), "qty"),
        ("qty negative", with(json!({"qty": "-1"})), "qty"),
        ("qty negative number", with(json!({"qty": -1.5})), "qty"),
        ("qty abc", with(json!({"qty": "abc"})), "qty"),
        ("qty object", with(json!({"qty": {}})), "qty"),
        ("qty missing", with(json!({"qty": null})), "qty"),
        (
            "receipt without unit_cost",
            with(json!({"unit_cost": null})),
            "unit_cost",
        ),
        (
            "negative unit_cost",
            with(json!({"unit_cost": "-1"})),
            "unit_cost",
        ),
        (
            "issue with unit_cost",
            with(json!({"type": "issue"})),
            "unit_cost",
        ),
        (
            "transfer without to_warehouse",
            json!({"type": "transfer", "sku": "V-1", "warehouse": "W1", "qty": "1"}),
            "to_warehouse",
        ),
        (
            "transfer to the same warehouse",
            json!({"type": "transfer", "sku": "V-1", "warehouse": "W1", "to_warehouse": "W1", "qty": "1"}),
            "to_warehouse",
        ),
        (
            "to_warehouse on a receipt",
            with(json!({"to_warehouse": "W2"})),
            "to_warehouse",
        ),
        ("unknown type", with(json!({"type": "move"})), "type"),
        ("type missing", with(json!({"type": null})), "type"),
        (
            "bad warehouse code",
            with(json!({"warehouse": "W 1"})),
            "warehouse",
        ),
        ("sku not a string", with(json!({"sku": 12})), "sku"),
        ("unknown field", with(json!({"colour": "red"})), "colour"),
    ];
    for (what, body, field) in cases {
        let (s, v) = post(app, &admin, "/api/v1/movements", &body).await;
        assert_invalid(s, &v, field, what);
        assert!(
            !error(&v)["message"].as_str().unwrap_or_default().is_empty(),
            "{what}: {v}"
        );
    }
    // Past the documented limits: 422 `out_of_range`, never rounded.
    let far = [
        ("qty with 7 decimals", with(json!({"qty": "1.1234567"}))),
        (
            "qty number with 7 decimals",
            with(json!({"qty": 1.1234567})),
        ),
        ("qty too large", with(json!({"qty": "1000000000000"}))),
    ];
    for (what, body) in far {
        let (s, v) = post(app, &admin, "/api/v1/movements", &body).await;
        assert_eq!(s, 422, "{what}: {v}");
        assert_eq!(error(&v)["code"], "out_of_range", "{what}: {v}");
        assert_eq!(error(&v)["field"], "qty", "{what}: {v}");
    }
    // Articles and warehouses.
    let article_cases = [
        (json!({"sku": "a b", "name": "x"}), "sku"),
        (json!({"sku": "Y".repeat(65), "name": "x"}), "sku"),
        (json!({"sku": "OK-1", "name": ""}), "name"),
        (json!({"sku": "OK-1"}), "name"),
        (
            json!({"sku": "OK-1", "name": "x", "valuation": "lifo"}),
            "valuation",
        ),
        (
            json!({"sku": "OK-1", "name": "x", "min_qty": "-1"}),
            "min_qty",
        ),
        (
            json!({"sku": "OK-1", "name": "x", "min_qty": "abc"}),
            "min_qty",
        ),
        (json!({"sku": "OK-1", "name": "x", "colour": 1}), "colour"),
    ];
    for (body, field) in article_cases {
        let (s, v) = post(app, &admin, "/api/v1/articles", &body).await;
        assert_invalid(s, &v, field, &body.to_string());
    }
    let (s, v) = patch(
        app,
        &admin,
        "/api/v1/articles/V-1",
        &json!({"valuation": "lifo"}),
    )
    .await;
    assert_invalid(s, &v, "valuation", "patch valuation");
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/warehouses",
        &json!({"code": "W/3", "name": "x"}),
    )
    .await;
    assert_invalid(s, &v, "code", "bad warehouse code");
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/warehouses",
        &json!({"code": "W3", "name": " "}),
    )
    .await;
    assert_invalid(s, &v, "name", "blank warehouse name");
    // Query parameters.
    let (s, v) = call(
        app,
        Method::GET,
        Some(&admin),
        "/api/v1/balances?level=HIGH",
        None,
    )
    .await;
    assert_invalid(s, &v, "level", "level");
    let (s, v) = call(
        app,
        Method::GET,
        Some(&admin),
        "/api/v1/ledger?cursor=x",
        None,
    )
    .await;
    assert_invalid(s, &v, "cursor", "cursor");
    let (s, v) = call(
        app,
        Method::GET,
        Some(&admin),
        "/api/v1/ledger?limit=0",
        None,
    )
    .await;
    assert_invalid(s, &v, "limit", "limit");
    // Nothing of it was posted.
    assert_eq!(ledger_len(app, &admin).await, 0);
    assert_eq!(
        get(app, &admin, "/api/v1/articles").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

on_both!(bodies_without_a_json_content_type_get_415);
async fn bodies_without_a_json_content_type_get_415(app: &TestApp) {
    let admin = app.admin_token().await;
    warehouse(app, &admin, "W1").await;
    article(app, &admin, "CT-1", json!({})).await;
    let body =
        json!({"type": "receipt", "sku": "CT-1", "warehouse": "W1", "qty": "1", "unit_cost": "1"})
            .to_string();
    for (path, method) in [
        ("/api/v1/movements", Method::POST),
        ("/api/v1/movements/batch", Method::POST),
        ("/api/v1/articles", Method::POST),
        ("/api/v1/warehouses", Method::POST),
        ("/api/v1/articles/CT-1", Method::PATCH),
        ("/api/v1/warehouses/W1", Method::PATCH),
    ] {
        for content_type in [None, Some("text/plain")] {
            let mut req = app
                .client
                .request(method.clone(), app.url(path))
                .bearer_auth(&admin)
                .body(body.clone());
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            let r = req.send().await.unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            assert_eq!(status, 415, "{method} {path} with {content_type:?}: {text}");
        }
    }
    assert_eq!(ledger_len(app, &admin).await, 0);
}

on_both!(unknown_articles_and_warehouses_are_404);
async fn unknown_articles_and_warehouses_are_404(app: &TestApp) {
    let admin = app.admin_token().await;
    warehouse(app, &admin, "W1").await;
    article(app, &admin, "K-1", json!({})).await;
    let cases = [
        json!({"type": "receipt", "sku": "NOPE", "warehouse": "W1", "qty": "1", "unit_cost": "1"}),
        json!({"type": "receipt", "sku": "K-1", "warehouse": "NOWHERE", "qty": "1", "unit_cost": "1"}),
        json!({"type": "transfer", "sku": "K-1", "warehouse": "W1", "to_warehouse": "NOWHERE", "qty": "1"}),
        json!({"type": "issue", "sku": "NOPE", "warehouse": "NOWHERE", "qty": "1"}),
        json!({"type": "count", "sku": "K-1", "warehouse": "NOWHERE", "qty": "1"}),
    ];
    for body in cases {
        let (s, v) = post(app, &admin, "/api/v1/movements", &body).await;
        assert_eq!(s, 404, "{body}: {v}");
        assert_eq!(error(&v)["code"], "not_found", "{v}");
    }
    for path in [
        "/api/v1/articles/NOPE",
        "/api/v1/articles/NOPE/valuation",
        "/api/v1/warehouses/NOWHERE",
    ] {
        let (s, v) = call(app, Method::GET, Some(&admin), path, None).await;
        assert_eq!(s, 404, "{path}: {v}");
        assert_eq!(error(&v)["code"], "not_found");
    }
    let (s, _) = patch(app, &admin, "/api/v1/articles/NOPE", &json!({"name": "x"})).await;
    assert_eq!(s, 404);
    let (s, _) = patch(
        app,
        &admin,
        "/api/v1/warehouses/NOWHERE",
        &json!({"name": "x"}),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(
        app.delete_as(&admin, "/api/v1/articles/NOPE")
            .await
            .status(),
        404
    );
    assert_eq!(ledger_len(app, &admin).await, 0);
    assert!(outbox(app).await.is_empty());
}

on_both!(duplicates_are_409);
async fn duplicates_are_409(app: &TestApp) {
    let admin = app.admin_token().await;
    warehouse(app, &admin, "W1").await;
    article(app, &admin, "DUP", json!({})).await;
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/articles",
        &json!({"sku": "DUP", "name": "again"}),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(error(&v)["code"], "duplicate_sku");
    // SKUs are case-sensitive.
    article(app, &admin, "dup", json!({})).await;
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/warehouses",
        &json!({"code": "W1", "name": "again"}),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(error(&v)["code"], "duplicate_warehouse");
    let a = get(app, &admin, "/api/v1/articles/DUP").await;
    assert_eq!(a["name"], "Article DUP", "the first one stays");
}

// ---- archiving and the valuation lock ---------------------------------------------------------

on_both!(archived_articles_refuse_movements_and_delete_archives_or_deletes);
async fn archived_articles_refuse_movements_and_delete_archives_or_deletes(app: &TestApp) {
    let admin = app.admin_token().await;
    warehouse(app, &admin, "W1").await;
    article(app, &admin, "USED", json!({})).await;
    article(app, &admin, "UNUSED", json!({})).await;
    receipt(app, &admin, "USED", "W1", "2", "3").await;

    // With ledger rows: archived, kept.
    let r = app.delete_as(&admin, "/api/v1/articles/USED").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["sku"], "USED");
    assert_eq!(v["archived"], true);
    let a = get(app, &admin, "/api/v1/articles/USED").await;
    assert_eq!(a["archived"], true);
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements",
        &json!({"type": "issue", "sku": "USED", "warehouse": "W1", "qty": "1"}),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(error(&v)["code"], "article_archived");
    assert_eq!(ledger_len(app, &admin).await, 1);
    // Listed only when asked for.
    let list = get(app, &admin, "/api/v1/articles").await;
    let skus: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["sku"].as_str().unwrap())
        .collect();
    assert_eq!(skus, vec!["UNUSED"]);
    let list = get(app, &admin, "/api/v1/articles?archived=true").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    // Its history stays readable.
    assert_eq!(stock(app, &admin, "USED", "W1").await, (n("2"), n("6")));
    // Restored, it takes movements again.
    let (s, v) = patch(
        app,
        &admin,
        "/api/v1/articles/USED",
        &json!({"archived": false}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    issue(app, &admin, "USED", "W1", "1").await;

    // Without ledger rows: deleted.
    let r = app.delete_as(&admin, "/api/v1/articles/UNUSED").await;
    assert_eq!(r.status(), 204);
    let (s, _) = call(
        app,
        Method::GET,
        Some(&admin),
        "/api/v1/articles/UNUSED",
        None,
    )
    .await;
    assert_eq!(s, 404);
    // The SKU is free again.
    article(app, &admin, "UNUSED", json!({})).await;

    // An archived warehouse refuses movements too.
    let (s, v) = patch(
        app,
        &admin,
        "/api/v1/warehouses/W1",
        &json!({"archived": true}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["archived"], true);
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements",
        &json!({"type": "receipt", "sku": "UNUSED", "warehouse": "W1", "qty": "1", "unit_cost": "1"}),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(error(&v)["code"], "warehouse_archived");
    assert_eq!(ledger_len(app, &admin).await, 2);
    assert_verified(app).await;
}

on_both!(the_valuation_method_is_locked_once_posted);
async fn the_valuation_method_is_locked_once_posted(app: &TestApp) {
    let admin = app.admin_token().await;
    warehouse(app, &admin, "W1").await;
    article(app, &admin, "L-1", json!({"valuation": "fifo"})).await;
    // Before any posting it may change.
    let (s, v) = patch(
        app,
        &admin,
        "/api/v1/articles/L-1",
        &json!({"valuation": "moving_average"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["valuation"], "moving_average");
    let (s, v) = patch(
        app,
        &admin,
        "/api/v1/articles/L-1",
        &json!({"valuation": "fifo"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["valuation"], "fifo");
    receipt(app, &admin, "L-1", "W1", "1", "1").await;
    let (s, v) = patch(
        app,
        &admin,
        "/api/v1/articles/L-1",
        &json!({"valuation": "moving_average"}),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(error(&v)["code"], "valuation_locked");
    assert_eq!(
        get(app, &admin, "/api/v1/articles/L-1").await["valuation"],
        "fifo"
    );
    // Naming the current method, or changing other fields, is fine.
    let (s, v) = patch(
        app,
        &admin,
        "/api/v1/articles/L-1",
        &json!({"valuation": "fifo", "name": "Locked", "unit": "kg"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!((&v["name"], &v["unit"]), (&json!("Locked"), &json!("kg")));
}

// ---- reads ------------------------------------------------------------------------------------

on_both!(ledger_pages_return_every_row_once);
async fn ledger_pages_return_every_row_once(app: &TestApp) {
    let admin = app.admin_token().await;
    warehouse(app, &admin, "W1").await;
    warehouse(app, &admin, "W2").await;
    article(app, &admin, "P-1", json!({})).await;
    article(app, &admin, "P-2", json!({})).await;
    let mut batch = Vec::new();
    for i in 0..23 {
        let sku = if i % 3 == 0 { "P-2" } else { "P-1" };
        let wh = if i % 2 == 0 { "W1" } else { "W2" };
        batch.push(
            json!({"type": "receipt", "sku": sku, "warehouse": wh, "qty": "1", "unit_cost": "1"}),
        );
    }
    let (s, _) = post(
        app,
        &admin,
        "/api/v1/movements/batch",
        &json!({"movements": batch}),
    )
    .await;
    assert_eq!(s, 201);
    // A transfer writes two rows.
    posted(
        app,
        &admin,
        json!({"type": "transfer", "sku": "P-1", "warehouse": "W1", "to_warehouse": "W2", "qty": "1"}),
    )
    .await;
    let all = ledger_all(app, &admin, "", 1000).await;
    assert_eq!(all.len(), 25);
    for limit in [1, 4, 5, 7, 25, 100] {
        let rows = ledger_all(app, &admin, "", limit).await;
        let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
        assert_eq!(ids.len(), 25, "limit {limit}");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ascending, no repeats");
        assert_eq!(rows, all, "limit {limit}");
    }
    // Filters combine with the cursor.
    let p1 = ledger_all(app, &admin, "sku=P-1", 3).await;
    assert!(p1.iter().all(|r| r["sku"] == "P-1"));
    let p2 = ledger_all(app, &admin, "sku=P-2", 3).await;
    assert_eq!(p1.len() + p2.len(), 25);
    let w2 = ledger_all(app, &admin, "warehouse=W2", 2).await;
    assert!(w2.iter().all(|r| r["warehouse"] == "W2"));
    let p1w1 = ledger_all(app, &admin, "sku=P-1&warehouse=W1", 2).await;
    let expected = all
        .iter()
        .filter(|r| r["sku"] == "P-1" && r["warehouse"] == "W1")
        .count();
    assert_eq!(p1w1.len(), expected);
    // Time filters: everything is after yesterday and before tomorrow.
    let today = chrono::Utc::now().date_naive();
    let from = (today - chrono::Days::new(1)).to_string();
    let to = (today + chrono::Days::new(2)).to_string();
    assert_eq!(
        ledger_all(app, &admin, &format!("from={from}&to={to}"), 10)
            .await
            .len(),
        25
    );
    assert!(
        ledger_all(app, &admin, &format!("from={to}"), 10)
            .await
            .is_empty()
    );
    // A default page and an empty one.
    let page = get(app, &admin, "/api/v1/ledger").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 25);
    assert!(page["next"].is_null());
    let last = all.last().unwrap()["id"].as_i64().unwrap();
    let page = get(app, &admin, &format!("/api/v1/ledger?cursor={last}")).await;
    assert!(page["items"].as_array().unwrap().is_empty());
    assert!(page["next"].is_null());
}

on_both!(balances_filter_by_level);
async fn balances_filter_by_level(app: &TestApp) {
    let admin = app.admin_token().await;
    warehouse(app, &admin, "W1").await;
    warehouse(app, &admin, "W2").await;
    for sku in ["LV-A", "LV-B", "LV-C", "LV-D"] {
        article(app, &admin, sku, json!({"min_qty": "10"})).await;
        receipt(app, &admin, sku, "W1", "30", "1").await;
    }
    issue(app, &admin, "LV-B", "W1", "22").await; // 8: LOW
    issue(app, &admin, "LV-C", "W1", "26").await; // 4: CRITICAL
    issue(app, &admin, "LV-D", "W1", "30").await; // 0: OUT_OF_STOCK
    receipt(app, &admin, "LV-A", "W2", "5", "1").await; // CRITICAL in W2
    let levels = |v: &Value| -> Vec<(String, String, String)> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["sku"].as_str().unwrap().to_owned(),
                    b["warehouse"].as_str().unwrap().to_owned(),
                    b["level"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let all = get(app, &admin, "/api/v1/balances").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 5);
    for b in all["items"].as_array().unwrap() {
        assert_eq!(d(&b["min_qty"]), n("10"));
    }
    let t = |s: &str, w: &str, l: &str| (s.to_owned(), w.to_owned(), l.to_owned());
    assert_eq!(
        levels(&get(app, &admin, "/api/v1/balances?level=NORMAL").await),
        vec![t("LV-A", "W1", "NORMAL")]
    );
    assert_eq!(
        levels(&get(app, &admin, "/api/v1/balances?level=LOW").await),
        vec![t("LV-B", "W1", "LOW")]
    );
    assert_eq!(
        levels(&get(app, &admin, "/api/v1/balances?level=CRITICAL").await),
        vec![t("LV-A", "W2", "CRITICAL"), t("LV-C", "W1", "CRITICAL")]
    );
    assert_eq!(
        levels(&get(app, &admin, "/api/v1/balances?level=out_of_stock").await),
        vec![t("LV-D", "W1", "OUT_OF_STOCK")]
    );
    assert_eq!(
        levels(&get(app, &admin, "/api/v1/balances?level=CRITICAL&warehouse=W1").await),
        vec![t("LV-C", "W1", "CRITICAL")]
    );
    assert_eq!(
        levels(&get(app, &admin, "/api/v1/balances?sku=LV-A").await),
        vec![t("LV-A", "W1", "NORMAL"), t("LV-A", "W2", "CRITICAL")]
    );
    // A posting moves a balance between filters at once (no stale cached answer).
    receipt(app, &admin, "LV-B", "W1", "5", "1").await; // 13: NORMAL
    assert!(levels(&get(app, &admin, "/api/v1/balances?level=LOW").await).is_empty());
    assert_eq!(
        levels(&get(app, &admin, "/api/v1/balances?level=NORMAL").await).len(),
        2
    );
    // A new min_qty re-levels at once too.
    let (s, _) = patch(
        app,
        &admin,
        "/api/v1/articles/LV-B",
        &json!({"min_qty": "13"}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        levels(&get(app, &admin, "/api/v1/balances?level=LOW").await),
        vec![t("LV-B", "W1", "LOW")]
    );
}

// ---- outbox -----------------------------------------------------------------------------------

/// A scripted posting: the body, whether it posts, and the (from, to) level change it causes.
type Step = (Value, bool, Option<(&'static str, &'static str)>);

/// The level transitions in `events` as (warehouse, from, to, movement_id).
fn transitions(events: &[(String, Value)]) -> Vec<(String, String, String, Value)> {
    events
        .iter()
        .filter(|(t, _)| t == "stock.level_changed")
        .map(|(_, p)| {
            (
                p["warehouse"].as_str().unwrap().to_owned(),
                p["from"].as_str().unwrap().to_owned(),
                p["to"].as_str().unwrap().to_owned(),
                p["movement_id"].clone(),
            )
        })
        .collect()
}

on_both!(the_outbox_holds_exactly_the_events_postings_caused);
async fn the_outbox_holds_exactly_the_events_postings_caused(app: &TestApp) {
    let admin = app.admin_token().await;
    warehouse(app, &admin, "W1").await;
    warehouse(app, &admin, "W2").await;
    article(app, &admin, "EV", json!({"min_qty": "10"})).await;
    assert!(
        outbox(app).await.is_empty(),
        "catalog changes write no events"
    );

    // Each step: the body, whether it posts, and the level transition it causes in W1.
    let steps: Vec<Step> = vec![
        (
            json!({"type": "receipt", "sku": "EV", "warehouse": "W1", "qty": "30", "unit_cost": "2"}),
            true,
            Some(("OUT_OF_STOCK", "NORMAL")),
        ),
        (
            json!({"type": "issue", "sku": "EV", "warehouse": "W1", "qty": "22"}),
            true,
            Some(("NORMAL", "LOW")),
        ),
        (
            json!({"type": "issue", "sku": "EV", "warehouse": "W1", "qty": "4"}),
            true,
            Some(("LOW", "CRITICAL")),
        ),
        // Refused: nothing written.
        (
            json!({"type": "issue", "sku": "EV", "warehouse": "W1", "qty": "5"}),
            false,
            None,
        ),
        (
            json!({"type": "issue", "sku": "EV", "warehouse": "W1", "qty": "4"}),
            true,
            Some(("CRITICAL", "OUT_OF_STOCK")),
        ),
        (
            json!({"type": "receipt", "sku": "EV", "warehouse": "W1", "qty": "2", "unit_cost": "2"}),
            true,
            Some(("OUT_OF_STOCK", "CRITICAL")),
        ),
        // 1 left: still CRITICAL, no level event.
        (
            json!({"type": "issue", "sku": "EV", "warehouse": "W1", "qty": "1"}),
            true,
            None,
        ),
        // A count to what is there: a posting, no level change.
        (
            json!({"type": "count", "sku": "EV", "warehouse": "W1", "qty": "1"}),
            true,
            None,
        ),
    ];
    let mut seen = 0;
    for (body, posts, transition) in steps {
        let (s, v) = post(app, &admin, "/api/v1/movements", &body).await;
        let events = outbox(app).await;
        let new = &events[seen..];
        if !posts {
            assert_eq!(s, 409, "{body}: {v}");
            assert!(new.is_empty(), "a refused posting wrote {new:?}");
            continue;
        }
        assert_eq!(s, 201, "{body}: {v}");
        let id = v["id"].as_str().unwrap();
        assert_eq!(new[0].0, "movement.posted", "{body}");
        let p = &new[0].1;
        assert_eq!(p["movement_id"], id);
        assert_eq!(p["sku"], "EV");
        assert_eq!(p["type"], body["type"]);
        assert_eq!(p["rows"].as_array().unwrap().len(), 1);
        match transition {
            None => assert_eq!(new.len(), 1, "{body}: {new:?}"),
            Some((from, to)) => {
                assert_eq!(new.len(), 2, "{body}: {new:?}");
                assert_eq!(new[1].0, "stock.level_changed");
                let l = &new[1].1;
                assert_eq!(l["sku"], "EV");
                assert_eq!(l["warehouse"], "W1");
                assert_eq!(
                    (l["from"].as_str(), l["to"].as_str()),
                    (Some(from), Some(to))
                );
                assert_eq!(l["movement_id"], id);
                assert_eq!(d(&l["min_qty"]), n("10"));
                assert_eq!(d(&l["qty"]), d(&v["rows"][0]["qty_after"]));
            }
        }
        seen = events.len();
    }
    let events = outbox(app).await;
    assert_eq!(events.len(), 7 + 5);
    assert_eq!(
        transitions(&events)
            .iter()
            .map(|(_, f, t, _)| format!("{f}->{t}"))
            .collect::<Vec<_>>(),
        vec![
            "OUT_OF_STOCK->NORMAL",
            "NORMAL->LOW",
            "LOW->CRITICAL",
            "CRITICAL->OUT_OF_STOCK",
            "OUT_OF_STOCK->CRITICAL",
        ]
    );

    // A transfer can change both warehouses' levels: W1 1 -> 0, W2 new -> 1.
    let t = posted(
        app,
        &admin,
        json!({"type": "transfer", "sku": "EV", "warehouse": "W1", "to_warehouse": "W2", "qty": "1"}),
    )
    .await;
    let after = outbox(app).await;
    let new = &after[events.len()..];
    assert_eq!(new.len(), 3, "{new:?}");
    assert_eq!(new[0].0, "movement.posted");
    assert_eq!(new[0].1["rows"].as_array().unwrap().len(), 2);
    let mut tr = transitions(new);
    tr.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        tr,
        vec![
            (
                "W1".into(),
                "CRITICAL".into(),
                "OUT_OF_STOCK".into(),
                t["id"].clone()
            ),
            (
                "W2".into(),
                "OUT_OF_STOCK".into(),
                "CRITICAL".into(),
                t["id"].clone()
            ),
        ]
    );

    // A new min_qty re-levels without a posting: movement_id null. W2 holds 1: min 1 -> LOW.
    let (s, _) = patch(app, &admin, "/api/v1/articles/EV", &json!({"min_qty": "1"})).await;
    assert_eq!(s, 200);
    let after2 = outbox(app).await;
    let new = &after2[after.len()..];
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0].0, "stock.level_changed");
    let l = &new[0].1;
    assert_eq!(l["warehouse"], "W2");
    assert_eq!(
        (l["from"].as_str(), l["to"].as_str()),
        (Some("CRITICAL"), Some("LOW"))
    );
    assert!(l["movement_id"].is_null(), "{l}");
    assert_eq!(d(&l["min_qty"]), n("1"));
    // The same min_qty again, or other fields: nothing.
    patch(
        app,
        &admin,
        "/api/v1/articles/EV",
        &json!({"min_qty": "1.0", "name": "x"}),
    )
    .await;
    assert_eq!(outbox(app).await.len(), after2.len());
    // Balances agree with the last transitions.
    assert_eq!(
        balance(app, &admin, "EV", "W2").await.unwrap()["level"],
        "LOW"
    );
    assert_eq!(
        balance(app, &admin, "EV", "W1").await.unwrap()["level"],
        "OUT_OF_STOCK"
    );
    // Every movement.posted names a movement in the ledger.
    let ledger_ids: HashSet<String> = ledger_all(app, &admin, "", 1000)
        .await
        .iter()
        .map(|r| r["movement_id"].as_str().unwrap().to_owned())
        .collect();
    let posted_ids: HashSet<String> = after2
        .iter()
        .filter(|(t, _)| t == "movement.posted")
        .map(|(_, p)| p["movement_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ledger_ids, posted_ids);
    assert_verified(app).await;
}

on_both!(lists_name_articles_and_alerts_show_the_quantity_now);
async fn lists_name_articles_and_alerts_show_the_quantity_now(app: &TestApp) {
    let t = app.admin_token().await;
    warehouse(app, &t, "MAIN").await;
    article(app, &t, "NAMED-1", json!({"min_qty": "10"})).await;
    receipt(app, &t, "NAMED-1", "MAIN", "20", "1").await;
    issue(app, &t, "NAMED-1", "MAIN", "12").await; // 8 left: LOW
    issue(app, &t, "NAMED-1", "MAIN", "1").await; // 7 left: still LOW
    let b = balance(app, &t, "NAMED-1", "MAIN").await.unwrap();
    assert_eq!(b["name"], "Article NAMED-1");
    // Alerts follow the postings through the outbox: wait for this one.
    let mut v = Value::Null;
    for _ in 0..100 {
        v = get(app, &t, "/api/v1/alerts?state=open").await;
        if v["items"][0]["current_qty"] == "7" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let a = &v["items"][0];
    assert_eq!(a["sku"], "NAMED-1", "{v}");
    assert_eq!(a["name"], "Article NAMED-1");
    assert_eq!(a["level"], "LOW");
    assert_eq!(d(&a["current_qty"]), n("7"), "the balance now: {a}");
}

on_both!(warehouses_are_found_by_code_prefix_or_name);
async fn warehouses_are_found_by_code_prefix_or_name(app: &TestApp) {
    let t = app.admin_token().await;
    for (code, name) in [
        ("NORTH", "Main store"),
        ("SOUTH-1", "Store north of the river"),
        ("X_1", "Cold room 100%"),
    ] {
        let (s, v) = post(
            app,
            &t,
            "/api/v1/warehouses",
            &json!({"code": code, "name": name}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let codes = |v: Value| keys(&v, "code");
    assert_eq!(
        codes(get(app, &t, "/api/v1/warehouses?q=north").await),
        ["NORTH", "SOUTH-1"],
        "codes starting with it, names holding it (any case)"
    );
    assert_eq!(
        codes(get(app, &t, "/api/v1/warehouses?q=sou").await),
        ["SOUTH-1"]
    );
    assert_eq!(
        codes(get(app, &t, "/api/v1/warehouses?q=%25").await),
        ["X_1"]
    );
    assert!(codes(get(app, &t, "/api/v1/warehouses?q=orth%20of%20x").await).is_empty());
}

on_both!(articles_are_found_by_sku_prefix_or_name);
async fn articles_are_found_by_sku_prefix_or_name(app: &TestApp) {
    let t = app.admin_token().await;
    for (sku, name) in [
        ("BOLT-M8", "Hex bolt M8"),
        ("BOLT-M10", "Hex bolt M10"),
        ("NUT-M8", "Nut for bolts"),
        ("WASHER_1", "Washer 100% steel"),
    ] {
        article(app, &t, sku, json!({"name": name})).await;
    }
    let skus = |v: Value| keys(&v, "sku");
    assert_eq!(
        skus(get(app, &t, "/api/v1/articles?q=BOLT").await),
        ["BOLT-M10", "BOLT-M8", "NUT-M8"],
        "SKUs starting with it, names holding it (any case)"
    );
    assert_eq!(
        skus(get(app, &t, "/api/v1/articles?q=m8").await),
        ["BOLT-M8"]
    );
    // LIKE's wildcards are plain characters here.
    assert_eq!(
        skus(get(app, &t, "/api/v1/articles?q=%25").await),
        ["WASHER_1"]
    );
    assert!(skus(get(app, &t, "/api/v1/articles?q=BOLT_M8").await).is_empty());
    assert_eq!(
        skus(get(app, &t, "/api/v1/articles?q=WASHER_").await),
        ["WASHER_1"]
    );
    // Text of 3 characters or more goes through the search index (SQLite's trigram index,
    // PostgreSQL's trigram indexes): the same answers, kept current by renames and deletes.
    assert_eq!(
        skus(get(app, &t, "/api/v1/articles?q=hex%20BOLT").await),
        ["BOLT-M10", "BOLT-M8"]
    );
    assert!(
        skus(get(app, &t, "/api/v1/articles?q=M8%20").await).is_empty(),
        "a SKU must start with it"
    );
    let (s, v) = patch(
        app,
        &t,
        "/api/v1/articles/NUT-M8",
        &json!({"name": "Lock nut \"nylon\""}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        skus(get(app, &t, "/api/v1/articles?q=bolts").await),
        Vec::<String>::new(),
        "the old name is gone from the index"
    );
    assert_eq!(
        skus(get(app, &t, "/api/v1/articles?q=%22NYLON%22").await),
        ["NUT-M8"],
        "the new one is found, quotes and all"
    );
    let (s, _) = call(
        app,
        Method::DELETE,
        Some(&t),
        "/api/v1/articles/BOLT-M10",
        None,
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(
        skus(get(app, &t, "/api/v1/articles?q=hex%20bolt").await),
        ["BOLT-M8"]
    );
}
