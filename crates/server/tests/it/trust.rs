//! Ledger trust, through the real HTTP API on every backend: no input stops, corrupts or
//! duplicates a posting. Extreme figures are refused with `out_of_range` (and never stop the
//! committer), JSON numbers keep every digit, a posting that fails fails alone, a locked
//! database is a retryable 503, and an `Idempotency-Key` posts once whatever the client does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use crate::common;
use crate::common::on_both;

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Backend, TestApp, spawn_app_on, spawn_app_with, spawn_node_like};
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

// ---- helpers ----------------------------------------------------------------------------------

fn n(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn d(v: &Value) -> Decimal {
    n(v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}")))
}

/// POSTs `body` (raw JSON text, so numbers go as written) to `path`.
async fn post_raw(
    app: &TestApp,
    token: &str,
    path: &str,
    body: &str,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = app
        .client
        .post(app.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let r = req.send().await.expect("request");
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn post(app: &TestApp, token: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    post_raw(app, token, path, &body.to_string(), None).await
}

async fn setup(app: &TestApp) -> String {
    let admin = app.admin_token().await;
    for code in ["W1", "W2"] {
        let (s, v) = post(
            app,
            &admin,
            "/api/v1/warehouses",
            &json!({"code": code, "name": code}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    admin
}

async fn article(app: &TestApp, token: &str, sku: &str, extra: Value) {
    let mut body = json!({"sku": sku, "name": sku});
    if let Value::Object(m) = extra {
        body.as_object_mut().unwrap().extend(m);
    }
    let (s, v) = post(app, token, "/api/v1/articles", &body).await;
    assert_eq!(s, 201, "{v}");
}

async fn balance(app: &TestApp, token: &str, sku: &str, wh: &str) -> (Decimal, Decimal) {
    let r = app
        .client
        .get(app.url(&format!("/api/v1/balances?sku={sku}&warehouse={wh}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let items = v["items"].as_array().unwrap();
    items.first().map_or((Decimal::ZERO, Decimal::ZERO), |b| {
        (d(&b["qty"]), d(&b["value"]))
    })
}

async fn ledger_rows(app: &TestApp, token: &str, sku: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = app
            .client
            .get(app.url(&format!("/api/v1/ledger?sku={sku}&limit=1000{cursor}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        out.extend(v["items"].as_array().unwrap().iter().cloned());
        match v["next"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return out,
        }
    }
}

async fn ready(app: &TestApp) -> (StatusCode, Value) {
    let r = app.get("/readyz").await;
    let s = r.status();
    (s, r.json().await.unwrap())
}

/// Runs `sql` on the app's database (to put it in states an API cannot reach).
async fn tamper(app: &TestApp, sql: &str) {
    match app.state.db() {
        malaka_server::db::Database::Sqlite(pool) => {
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(pool)
                .await
                .unwrap();
        }
        malaka_server::db::Database::Postgres(pool) => {
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(pool)
                .await
                .unwrap();
        }
    }
    app.state.balances_changed();
}

// ---- bounded, checked arithmetic --------------------------------------------------------------

on_both!(extreme_figures_are_refused_and_never_stop_posting);
async fn extreme_figures_are_refused_and_never_stop_posting(app: &TestApp) {
    let admin = setup(app).await;
    article(app, &admin, "BIG", json!({})).await;
    article(app, &admin, "OTHER", json!({})).await;
    let receipt = |sku: &str, qty: &str, cost: &str| {
        format!(
            r#"{{"type":"receipt","sku":"{sku}","warehouse":"W1","qty":{qty},"unit_cost":{cost}}}"#
        )
    };
    // What stopped every posting: 10^12 units at 5 x 10^11 is worth 5 x 10^23, beyond 10^16.
    let (s, v) = post_raw(
        app,
        &admin,
        "/api/v1/movements",
        &receipt("BIG", "999999999999", "500000000000"),
        None,
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "out_of_range", "{v}");
    assert_eq!(v["error"]["field"], "unit_cost", "{v}");
    // Within the limits the same quantity posts, and an issue of it is exact.
    let (s, v) = post_raw(
        app,
        &admin,
        "/api/v1/movements",
        &receipt("BIG", "999999999999", "1000"),
        None,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements",
        &json!({"type": "issue", "sku": "BIG", "warehouse": "W1", "qty": "200000"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(d(&v["rows"][0]["value_change"]), n("-200000000"));
    // A balance can not grow past 10^12 units.
    let (s, v) = post_raw(
        app,
        &admin,
        "/api/v1/movements",
        &receipt("BIG", "500000", "1"),
        None,
    )
    .await;
    assert_eq!(
        (s.as_u16(), &v["error"]["field"]),
        (422, &json!("qty")),
        "{v}"
    );
    assert_eq!(v["error"]["code"], "out_of_range");

    // A balance past the limits, as an older version could store it: refused, never a 5xx.
    tamper(
        app,
        "UPDATE inv_balances SET qty = '999999999999', value = '499999999999500000000000', \
         rate = '500000000000' WHERE sku = 'BIG'",
    )
    .await;
    for body in [
        json!({"type": "issue", "sku": "BIG", "warehouse": "W1", "qty": "200000"}),
        json!({"type": "count", "sku": "BIG", "warehouse": "W1", "qty": "5"}),
        json!({"type": "transfer", "sku": "BIG", "warehouse": "W1", "to_warehouse": "W2", "qty": "200000"}),
    ] {
        let (s, v) = post(app, &admin, "/api/v1/movements", &body).await;
        assert_eq!(s, 422, "{body} -> {v}");
        assert_eq!(v["error"]["code"], "out_of_range", "{v}");
    }
    // Every other posting goes on, and the node stays ready.
    for _ in 0..5 {
        let (s, v) = post_raw(
            app,
            &admin,
            "/api/v1/movements",
            &receipt("OTHER", "1", "2"),
            None,
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    assert_eq!(ready(app).await.0, 200);
    assert_eq!(balance(app, &admin, "OTHER", "W1").await, (n("5"), n("10")));
}

on_both!(json_numbers_keep_every_digit);
async fn json_numbers_keep_every_digit(app: &TestApp) {
    let admin = setup(app).await;
    article(app, &admin, "D", json!({})).await;
    let body = r#"{"type":"receipt","sku":"D","warehouse":"W1","qty":123456789012.123456,"unit_cost":0.5}"#;
    let (s, v) = post_raw(app, &admin, "/api/v1/movements", body, None).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["qty"], "123456789012.123456");
    assert_eq!(v["rows"][0]["qty_change"], "123456789012.123456");
    // As a string: the same number, exactly.
    let body = r#"{"type":"issue","sku":"D","warehouse":"W1","qty":"123456789012.123456"}"#;
    let (s, v) = post_raw(app, &admin, "/api/v1/movements", body, None).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["rows"][0]["qty_after"], "0");
    // Exponents are numbers too; more decimals than 6 are refused, never rounded.
    let body = r#"{"type":"receipt","sku":"D","warehouse":"W1","qty":1.5e3,"unit_cost":1}"#;
    let (s, v) = post_raw(app, &admin, "/api/v1/movements", body, None).await;
    assert_eq!((s.as_u16(), v["qty"].clone()), (201, json!("1500")), "{v}");
    for qty in ["1.0000001", "\"1.0000001\"", "1e-7"] {
        let body =
            format!(r#"{{"type":"receipt","sku":"D","warehouse":"W1","qty":{qty},"unit_cost":1}}"#);
        let (s, v) = post_raw(app, &admin, "/api/v1/movements", &body, None).await;
        assert_eq!(s, 422, "{qty}: {v}");
        assert_eq!(v["error"]["code"], "out_of_range", "{v}");
        assert_eq!(v["error"]["field"], "qty", "{v}");
    }
    // Batches name the line.
    let body = r#"{"movements":[{"type":"receipt","sku":"D","warehouse":"W1","qty":1,"unit_cost":1},{"type":"receipt","sku":"D","warehouse":"W1","qty":0.12345678,"unit_cost":1}]}"#;
    let (s, v) = post_raw(app, &admin, "/api/v1/movements/batch", body, None).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["field"], "movements[1].qty", "{v}");
    assert_eq!(balance(app, &admin, "D", "W1").await.0, n("1500"));
    // Article minimums are read the same way.
    let (s, v) = post_raw(
        app,
        &admin,
        "/api/v1/articles",
        r#"{"sku":"M","name":"M","min_qty":0.0000001}"#,
        None,
    )
    .await;
    assert_eq!(
        (s.as_u16(), &v["error"]["field"]),
        (422, &json!("min_qty")),
        "{v}"
    );
}

/// Extreme values through every movement type, on both valuation methods: never a 5xx, and the
/// ledger still rebuilds every balance.
fn extreme_values_never_fail_on(backend: Backend) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(app) = rt.block_on(spawn_app_with(backend, |c| c.api.rate_limit_per_second = 0))
    else {
        return;
    };
    let admin = rt.block_on(setup(&app));
    let case = AtomicUsize::new(0);
    let number = prop_oneof![
        Just("0".to_owned()),
        Just("0.000001".to_owned()),
        Just("1".to_owned()),
        Just("999999999999.999999".to_owned()),
        Just("999999999999".to_owned()),
        Just("1000000000000".to_owned()),
        Just("1e12".to_owned()),
        Just("123456789012.123456".to_owned()),
        Just("0.0000001".to_owned()),
        Just("-1".to_owned()),
        Just("1E-7".to_owned()),
        Just("5e11".to_owned()),
        Just("1e400".to_owned()),
        Just("79228162514264337593543950335".to_owned()),
        (any::<u64>(), 0u32..9).prop_map(|(m, s)| Decimal::new(
            i64::try_from(m >> 1).unwrap_or(0),
            s
        )
        .to_string()),
    ];
    let op = (
        prop_oneof![
            Just("receipt"),
            Just("issue"),
            Just("transfer"),
            Just("count")
        ],
        number.clone(),
        proptest::option::of(number),
        any::<bool>(),
    );
    let strategy = (
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(op, 1..12),
    );
    let mut runner = TestRunner::new(PropConfig {
        cases: 24,
        failure_persistence: None,
        ..PropConfig::default()
    });
    runner
        .run(&strategy, |(fifo, negative, ops)| {
            let sku = format!("X-{}", case.fetch_add(1, Ordering::Relaxed));
            rt.block_on(async {
                let valuation = if fifo { "fifo" } else { "moving_average" };
                article(
                    &app,
                    &admin,
                    &sku,
                    json!({"valuation": valuation, "allow_negative": negative}),
                )
                .await;
                for (kind, qty, cost, quoted) in &ops {
                    let q = |t: &str| {
                        if *quoted {
                            format!("\"{t}\"")
                        } else {
                            t.to_owned()
                        }
                    };
                    let mut body = format!(
                        r#"{{"type":"{kind}","sku":"{sku}","warehouse":"W1","qty":{}"#,
                        q(qty)
                    );
                    if *kind == "transfer" {
                        body.push_str(r#","to_warehouse":"W2""#);
                    }
                    if let Some(c) = cost
                        && matches!(*kind, "receipt" | "count")
                    {
                        body.push_str(&format!(r#","unit_cost":{}"#, q(c)));
                    } else if *kind == "receipt" {
                        body.push_str(r#","unit_cost":1"#);
                    }
                    body.push('}');
                    let (s, v) = post_raw(&app, &admin, "/api/v1/movements", &body, None).await;
                    assert!(matches!(s.as_u16(), 201 | 409 | 422), "{body} -> {s} {v}");
                }
            });
            Ok(())
        })
        .unwrap();
    rt.block_on(async {
        assert_eq!(ready(&app).await.0, 200);
        let report = app.state.inventory().verify().await.unwrap();
        assert!(
            report.discrepancies.is_empty(),
            "{:?}",
            report.discrepancies
        );
        app.stop().await;
    });
}

#[test]
fn extreme_values_never_fail_on_sqlite() {
    extreme_values_never_fail_on(Backend::Sqlite);
}

#[test]
fn extreme_values_never_fail_on_postgres() {
    extreme_values_never_fail_on(Backend::Postgres);
}

// ---- a posting fails alone --------------------------------------------------------------------

on_both!(a_posting_that_fails_fails_alone);
async fn a_posting_that_fails_fails_alone(app: &TestApp) {
    let admin = setup(app).await;
    article(app, &admin, "BAD", json!({"valuation": "fifo"})).await;
    article(app, &admin, "GOOD", json!({})).await;
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements",
        &json!({"type": "receipt", "sku": "BAD", "warehouse": "W1", "qty": "50", "unit_cost": "1"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    // A stored value that cannot be read back: postings of BAD fail (500), nobody else's.
    tamper(
        app,
        "UPDATE inv_balances SET qty = 'not a number' WHERE sku = 'BAD'",
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/api/v1/movements"),
            admin.clone(),
        );
        let sku = if i % 4 == 0 { "BAD" } else { "GOOD" };
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"type": "receipt", "sku": sku, "warehouse": "W1", "qty": "1", "unit_cost": "1"}))
                .send()
                .await
                .unwrap();
            (sku, r.status().as_u16())
        }));
    }
    for t in tasks {
        let (sku, status) = t.await.unwrap();
        match sku {
            "BAD" => assert_eq!(status, 500),
            _ => assert_eq!(status, 201),
        }
    }
    assert_eq!(balance(app, &admin, "GOOD", "W1").await.0, n("30"));
    assert_eq!(ready(app).await.0, 200);
    // Repaired, it posts again.
    tamper(app, "UPDATE inv_balances SET qty = '50' WHERE sku = 'BAD'").await;
    let (s, v) = post(
        app,
        &admin,
        "/api/v1/movements",
        &json!({"type": "issue", "sku": "BAD", "warehouse": "W1", "qty": "5"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_database_is_a_retryable_503_and_postings_resume() {
    let app = spawn_app_on(Backend::Sqlite).await.unwrap();
    let admin = setup(&app).await;
    article(&app, &admin, "L", json!({})).await;
    let malaka_server::db::Database::Sqlite(pool) = app.state.db() else {
        unreachable!()
    };
    // Another process holding the write lock longer than the busy timeout (5 s).
    let mut locker = pool.acquire().await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let r = app
        .client
        .post(app.url("/api/v1/movements"))
        .bearer_auth(&admin)
        .json(&json!({"type": "receipt", "sku": "L", "warehouse": "W1", "qty": "1", "unit_cost": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unavailable", "{v}");
    sqlx::query("ROLLBACK").execute(&mut *locker).await.unwrap();
    drop(locker);
    let (s, v) = post(
        &app,
        &admin,
        "/api/v1/movements",
        &json!({"type": "receipt", "sku": "L", "warehouse": "W1", "qty": "1", "unit_cost": "1"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(balance(&app, &admin, "L", "W1").await.0, n("1"));
    app.stop().await;
}

// ---- idempotency: exactly once through faults -------------------------------------------------

/// Sends a keyed POST over a raw connection and hangs up at once, before any answer.
async fn post_and_hang_up(app: &TestApp, token: &str, key: &str, body: &str) {
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let req = format!(
        "POST /api/v1/movements HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {token}\r\n\
         idempotency-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        app.addr,
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    drop(s);
}

/// Retries a keyed POST until it is answered 201; returns the answer.
async fn retry_until_created(app: &TestApp, token: &str, key: &str, body: &str) -> Value {
    for _ in 0..200 {
        let (s, v) = post_raw(app, token, "/api/v1/movements", body, Some(key)).await;
        match s.as_u16() {
            201 => return v,
            409 if v["error"]["code"] == "idempotency_in_progress" => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => panic!("{key}: {s} {v}"),
        }
    }
    panic!("{key} never answered");
}

on_both!(a_client_that_hangs_up_and_retries_posts_once);
async fn a_client_that_hangs_up_and_retries_posts_once(app: &TestApp) {
    let clerk = app.token(malaka_server::auth::Role::Clerk).await;
    let admin = setup(app).await;
    article(app, &admin, "H", json!({})).await;
    let mut ids = HashSet::new();
    for i in 0..20 {
        let key = format!("hang-{i}");
        let body = r#"{"type":"receipt","sku":"H","warehouse":"W1","qty":"2","unit_cost":"1"}"#;
        post_and_hang_up(app, &clerk, &key, body).await;
        if i % 2 == 0 {
            // Give the abandoned request time to commit before the retry (the other half race it).
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let v = retry_until_created(app, &clerk, &key, body).await;
        let again = retry_until_created(app, &clerk, &key, body).await;
        assert_eq!(v["id"], again["id"], "the same answer every time");
        ids.insert(v["id"].as_str().unwrap().to_owned());
    }
    let rows = ledger_rows(app, &admin, "H").await;
    assert_eq!(rows.len(), 20, "one posting per key");
    let posted: HashSet<String> = rows
        .iter()
        .map(|r| r["movement_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        posted, ids,
        "every answer names the posting the ledger holds"
    );
    assert_eq!(balance(app, &admin, "H", "W1").await.0, n("40"));
}

on_both!(requests_racing_with_one_key_post_once);
async fn requests_racing_with_one_key_post_once(app: &TestApp) {
    let admin = setup(app).await;
    article(app, &admin, "R", json!({})).await;
    let body = r#"{"type":"receipt","sku":"R","warehouse":"W1","qty":"3","unit_cost":"1"}"#;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/api/v1/movements"),
            admin.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(token)
                .header("idempotency-key", "race-1")
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        match s {
            201 => {
                ids.insert(v["id"].as_str().unwrap().to_owned());
            }
            409 => assert_eq!(v["error"]["code"], "idempotency_in_progress", "{v}"),
            _ => panic!("{s} {v}"),
        }
    }
    let v = retry_until_created(app, &admin, "race-1", body).await;
    ids.insert(v["id"].as_str().unwrap().to_owned());
    assert_eq!(ids.len(), 1, "one posting, one answer: {ids:?}");
    assert_eq!(ledger_rows(app, &admin, "R").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_racing_with_one_key_post_once() {
    let Some(a) = spawn_app_on(Backend::Postgres).await else {
        return;
    };
    let b = spawn_node_like(&a, |_| {}).await;
    let admin = setup(&a).await;
    article(&a, &admin, "N", json!({})).await;
    for round in 0..10 {
        let key = format!("nodes-{round}");
        let body = r#"{"type":"receipt","sku":"N","warehouse":"W1","qty":"1","unit_cost":"1"}"#;
        let (ra, rb) = tokio::join!(
            post_raw(&a, &admin, "/api/v1/movements", body, Some(&key)),
            post_raw(&b, &admin, "/api/v1/movements", body, Some(&key)),
        );
        assert_eq!((ra.0.as_u16(), rb.0.as_u16()), (201, 201), "{ra:?} {rb:?}");
        assert_eq!(
            ra.1["id"], rb.1["id"],
            "both nodes answer with the one posting"
        );
    }
    assert_eq!(ledger_rows(&a, &admin, "N").await.len(), 10);
    b.stop().await;
    a.stop().await;
}

/// Holds what a posting of `sku` needs for `hold`: SQLite's write lock, or on PostgreSQL the
/// article's balance row.
async fn hold_postings(app: &TestApp, sku: &str, hold: Duration) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let db = app.state.db().clone();
    let sku = sku.to_owned();
    let task = tokio::spawn(async move {
        match db {
            malaka_server::db::Database::Sqlite(pool) => {
                let mut c = pool.acquire().await.unwrap();
                sqlx::query("BEGIN EXCLUSIVE")
                    .execute(&mut *c)
                    .await
                    .unwrap();
                let _ = tx.send(());
                tokio::time::sleep(hold).await;
                sqlx::query("ROLLBACK").execute(&mut *c).await.unwrap();
            }
            malaka_server::db::Database::Postgres(pool) => {
                let mut t = pool.begin().await.unwrap();
                sqlx::query("SELECT 1 FROM inv_balances WHERE sku = $1 FOR UPDATE")
                    .bind(&sku)
                    .execute(&mut *t)
                    .await
                    .unwrap();
                let _ = tx.send(());
                tokio::time::sleep(hold).await;
                t.rollback().await.unwrap();
            }
        }
    });
    rx.await.unwrap();
    task
}

/// A keyed request that outlives `api.request_timeout` is answered 503; whether its posting then
/// commits (SQLite's committer finishes it) or not (PostgreSQL rolls the dropped transaction
/// back), the retry with its key ends with exactly one posting.
async fn a_timed_out_request_posts_once_on(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.api.request_timeout = Duration::from_millis(150);
    })
    .await
    else {
        return;
    };
    let admin = setup(&app).await;
    article(&app, &admin, "T", json!({})).await;
    let body = r#"{"type":"receipt","sku":"T","warehouse":"W1","qty":"5","unit_cost":"1"}"#;
    // A first posting, so PostgreSQL has a balance row to hold.
    assert_eq!(
        post_raw(&app, &admin, "/api/v1/movements", body, Some("t-0"))
            .await
            .0,
        201
    );
    let holder = hold_postings(&app, "T", Duration::from_millis(800)).await;
    let (s, _) = post_raw(&app, &admin, "/api/v1/movements", body, Some("t-1")).await;
    assert_eq!(s, 503, "the request timed out");
    holder.await.unwrap();
    let v = retry_until_created(&app, &admin, "t-1", body).await;
    let again = retry_until_created(&app, &admin, "t-1", body).await;
    assert_eq!(v["id"], again["id"]);
    assert_eq!(
        ledger_rows(&app, &admin, "T").await.len(),
        2,
        "one posting per key"
    );
    assert_eq!(balance(&app, &admin, "T", "W1").await.0, n("10"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_out_request_posts_once_on_sqlite() {
    a_timed_out_request_posts_once_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_out_request_posts_once_on_postgres() {
    a_timed_out_request_posts_once_on(Backend::Postgres).await;
}

// ---- supervision ------------------------------------------------------------------------------

/// The posting committer is critical: while it restarts the node is not ready, and postings work
/// again afterwards without restarting the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_committer_restarts_and_readiness_follows() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.supervision.min_backoff = Duration::from_millis(800);
    })
    .await
    .unwrap();
    let admin = setup(&app).await;
    article(&app, &admin, "S", json!({})).await;
    let (s, v) = ready(&app).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "inventory.committer" && t["critical"] == true),
        "{v}"
    );
    assert!(app.state.supervisor().inject_panic("inventory.committer"));
    // Not ready while it restarts...
    let mut saw_down = false;
    for _ in 0..100 {
        let (s, v) = ready(&app).await;
        if s == 503 {
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("inventory.committer is restarting"),
                "{v}"
            );
            saw_down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_down, "readiness reported the committer down");
    // ...ready again once it runs, and postings work.
    let mut up = false;
    for _ in 0..300 {
        if ready(&app).await.0 == 200 {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(up, "ready again");
    let (s, v) = post(
        &app,
        &admin,
        "/api/v1/movements",
        &json!({"type": "receipt", "sku": "S", "warehouse": "W1", "qty": "1", "unit_cost": "1"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (_, v) = ready(&app).await;
    let committer = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "inventory.committer")
        .unwrap()
        .clone();
    assert_eq!(committer["restarts"], 1, "{committer}");
    assert!(
        committer["last_error"]
            .as_str()
            .unwrap()
            .contains("panicked"),
        "{committer}"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("malaka_task_restarts_total{task=\"inventory.committer\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("malaka_task_up{task=\"inventory.committer\"} 1"));
    app.stop().await;
}

/// A posting sent while the committer is down waits for it or is answered 503; none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postings_during_a_committer_restart_are_answered() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.supervision.min_backoff = Duration::from_millis(200);
        c.api.rate_limit_per_second = 0;
    })
    .await
    .unwrap();
    let admin = setup(&app).await;
    article(&app, &admin, "P", json!({})).await;
    let app = Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (app, admin) = (Arc::clone(&app), admin.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5 * i)).await;
            let body = r#"{"type":"receipt","sku":"P","warehouse":"W1","qty":"1","unit_cost":"1"}"#;
            post_raw(
                &app,
                &admin,
                "/api/v1/movements",
                body,
                Some(&format!("p-{i}")),
            )
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(app.state.supervisor().inject_panic("inventory.committer"));
    let mut created = 0;
    let mut retry = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (s, v) = t.await.unwrap();
        match s.as_u16() {
            201 => created += 1,
            503 => retry.push(i),
            _ => panic!("{s} {v}"),
        }
    }
    for i in retry {
        let body = r#"{"type":"receipt","sku":"P","warehouse":"W1","qty":"1","unit_cost":"1"}"#;
        retry_until_created(&app, &admin, &format!("p-{i}"), body).await;
        created += 1;
    }
    assert_eq!(created, 60);
    assert_eq!(balance(&app, &admin, "P", "W1").await.0, n("60"));
    assert_eq!(ledger_rows(&app, &admin, "P").await.len(), 60);
    let app = Arc::try_unwrap(app).ok().unwrap();
    app.stop().await;
}
