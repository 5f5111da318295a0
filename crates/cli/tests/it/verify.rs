//! `malaka verify` on a server's database: the ledger and the balances agree, and a balance
//! changed behind the ledger's back is reported with exit code 1.

use crate::common;
use crate::common::on_both;

use common::TestApp;
use serde_json::{Value, json};

// ---- helpers (as in the server's inventory tests) ---------------------------------------------

async fn post(app: &TestApp, token: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = app.post_json(token, path, body).await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    };
    (status, value)
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

// ---- verify --------------------------------------------------------------------------------------

/// Runs `malaka verify` on the app's database; its exit code and standard output.
fn run_verify(app: &TestApp) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_malaka"))
        .args(["verify", "--database-url", &app.database_url])
        .env_remove("RUST_LOG")
        .output()
        .expect("run malaka verify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

on_both!(verify_finds_a_balance_the_ledger_does_not_explain);
async fn verify_finds_a_balance_the_ledger_does_not_explain(app: &TestApp) {
    let t = app.admin_token().await;
    warehouse(app, &t, "MAIN").await;
    warehouse(app, &t, "SIDE").await;
    article(app, &t, "V-1", json!({"valuation": "fifo"})).await;
    article(app, &t, "V-2", json!({})).await;
    receipt(app, &t, "V-1", "MAIN", "10", "2.5").await;
    receipt(app, &t, "V-2", "SIDE", "4", "1").await;
    issue(app, &t, "V-1", "MAIN", "3").await;

    let (code, out) = run_verify(app);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 balances") && out.contains("agree"), "{out}");

    // A balance changed behind the ledger's back is reported, naming it, with exit code 1.
    let tamper = "UPDATE inv_balances SET qty = '99' WHERE sku = 'V-1' AND warehouse = 'MAIN'";
    match app.state.db() {
        malaka_server::db::Database::Sqlite(pool) => {
            sqlx::query(tamper).execute(pool).await.unwrap();
        }
        malaka_server::db::Database::Postgres(pool) => {
            sqlx::query(tamper).execute(pool).await.unwrap();
        }
    }
    let (code, out) = run_verify(app);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("1 differences"), "{out}");
    assert!(
        out.contains("V-1 in MAIN: ledger qty 7") && out.contains("balance qty 99"),
        "{out}"
    );
    assert!(!out.contains("V-2 in"), "{out}");
}
