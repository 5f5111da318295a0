//! Paging: every list takes `limit` and a cursor and answers `next`; walking the pages yields
//! every row once, in order, even while rows are inserted between pages (keyset, not offset).

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::on_both;
use crate::common::{self, TestApp};

async fn ok(app: &TestApp, t: &str, path: &str, body: Value) -> Value {
    let r = app.post_json(t, path, &body).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "POST {path} {body}: {status} {v}");
    v
}

async fn get(app: &TestApp, t: &str, path: &str) -> (StatusCode, Value) {
    let r = app.get_as(t, path).await;
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Walks `path` (which has a `?`) with `cursor_param`, calling `between` after each page;
/// every page's items, in order.
async fn walk(
    app: &TestApp,
    t: &str,
    path: &str,
    items_key: &str,
    cursor_param: &str,
    mut between: impl AsyncFnMut(usize),
) -> Vec<Value> {
    let mut all = Vec::new();
    let mut next: Option<String> = None;
    for page in 0..1000 {
        let url = match &next {
            Some(c) => format!("{path}&{cursor_param}={c}"),
            None => path.to_owned(),
        };
        let (s, v) = get(app, t, &url).await;
        assert_eq!(s, 200, "GET {url}: {v}");
        all.extend(v[items_key].as_array().unwrap().iter().cloned());
        match v["next"].as_str() {
            Some(c) => next = Some(c.to_owned()),
            None => return all,
        }
        between(page).await;
    }
    panic!("{path} never ended");
}

async fn stock(app: &TestApp, t: &str, sku: &str, wh: &str) {
    ok(
        app,
        t,
        "/api/v1/movements",
        json!({"type": "receipt", "sku": sku, "warehouse": wh, "qty": "5", "unit_cost": "1"}),
    )
    .await;
}

on_both!(balances_page_by_article_and_warehouse_while_stock_arrives);
async fn balances_page_by_article_and_warehouse_while_stock_arrives(app: &TestApp) {
    let t = app.admin_token().await;
    for wh in ["E", "W"] {
        ok(
            app,
            &t,
            "/api/v1/warehouses",
            json!({"code": wh, "name": wh}),
        )
        .await;
    }
    for i in 0..15 {
        let sku = format!("M-{i:02}");
        ok(
            app,
            &t,
            "/api/v1/articles",
            json!({"sku": sku, "name": sku}),
        )
        .await;
        for wh in ["E", "W"] {
            stock(app, &t, &sku, wh).await;
        }
    }
    for sku in ["A-NEW", "Z-NEW"] {
        ok(
            app,
            &t,
            "/api/v1/articles",
            json!({"sku": sku, "name": sku}),
        )
        .await;
    }
    // After the first page, a pair sorting before the cursor and one after it arrive.
    let seen = walk(
        app,
        &t,
        "/api/v1/balances?limit=7",
        "items",
        "cursor",
        async |page| {
            if page == 0 {
                stock(app, &t, "A-NEW", "E").await;
                stock(app, &t, "Z-NEW", "W").await;
            }
        },
    )
    .await;
    let keys: Vec<(String, String)> = seen
        .iter()
        .map(|b| {
            (
                b["sku"].as_str().unwrap().to_owned(),
                b["warehouse"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "in order, once each: {keys:?}"
    );
    for i in 0..15 {
        for wh in ["E", "W"] {
            assert!(keys.contains(&(format!("M-{i:02}"), wh.to_owned())));
        }
    }
    assert!(
        keys.contains(&("Z-NEW".to_owned(), "W".to_owned())),
        "a row after the cursor appears"
    );
    assert!(
        !keys.contains(&("A-NEW".to_owned(), "E".to_owned())),
        "a row before the cursor does not"
    );
    assert_eq!(keys.len(), 31);

    // Filters and the cursor together; a bad cursor names its field.
    let e = walk(
        app,
        &t,
        "/api/v1/balances?warehouse=E&limit=4",
        "items",
        "cursor",
        async |_| {},
    )
    .await;
    assert_eq!(e.len(), 16);
    assert!(e.iter().all(|b| b["warehouse"] == "E"));
    let (s, v) = get(app, &t, "/api/v1/balances?cursor=no-slash").await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["field"], "cursor");
    let (s, v) = get(app, &t, "/api/v1/balances?limit=1001").await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["field"], "limit");
}

on_both!(the_ledger_pages_in_id_order_and_by_posting_time_when_dated);
async fn the_ledger_pages_in_id_order_and_by_posting_time_when_dated(app: &TestApp) {
    let t = app.admin_token().await;
    ok(
        app,
        &t,
        "/api/v1/warehouses",
        json!({"code": "MAIN", "name": "Main"}),
    )
    .await;
    ok(
        app,
        &t,
        "/api/v1/articles",
        json!({"sku": "L-1", "name": "L"}),
    )
    .await;
    for _ in 0..13 {
        stock(app, &t, "L-1", "MAIN").await;
    }
    let by_id = walk(
        app,
        &t,
        "/api/v1/ledger?limit=5",
        "items",
        "cursor",
        async |_| {},
    )
    .await;
    let ids: Vec<i64> = by_id.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 13);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    // Dated pages: rows posted while walking, after the cursor's time, appear once.
    let dated = walk(
        app,
        &t,
        "/api/v1/ledger?from=2000-01-01&limit=5",
        "items",
        "cursor",
        async |page| {
            if page == 0 {
                stock(app, &t, "L-1", "MAIN").await;
            }
        },
    )
    .await;
    let ids: Vec<i64> = dated.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 14, "{ids:?}");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 14);
    let times: Vec<&str> = dated
        .iter()
        .map(|r| r["posted_at"].as_str().unwrap())
        .collect();
    let parsed: Vec<chrono::DateTime<chrono::Utc>> =
        times.iter().map(|s| s.parse().unwrap()).collect();
    assert!(parsed.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // A dated page's cursor does not fit an undated walk.
    let (_, first) = get(app, &t, "/api/v1/ledger?from=2000-01-01&limit=2").await;
    let c = first["next"].as_str().unwrap();
    let (s, v) = get(app, &t, &format!("/api/v1/ledger?cursor={c}")).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["field"], "cursor");

    // The newest rows, older pages with `before`.
    let recent = walk(
        app,
        &t,
        "/api/v1/ledger/recent?limit=4",
        "items",
        "before",
        async |_| {},
    )
    .await;
    let ids: Vec<i64> = recent.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 14);
    assert!(ids.windows(2).all(|w| w[0] > w[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warehouses_rules_and_tokens_page() {
    let app = common::spawn_app().await;
    let t = app.admin_token().await;
    for i in 0..5 {
        ok(
            &app,
            &t,
            "/api/v1/warehouses",
            json!({"code": format!("W{i}"), "name": "w"}),
        )
        .await;
        ok(
            &app,
            &t,
            "/api/v1/notification-rules",
            json!({"channel": "email", "address": format!("r{i}@example.com")}),
        )
        .await;
        ok(
            &app,
            &t,
            "/api/v1/tokens",
            json!({"name": format!("t{i}"), "role": "viewer"}),
        )
        .await;
    }
    let w = walk(
        &app,
        &t,
        "/api/v1/warehouses?limit=2",
        "items",
        "after",
        async |_| {},
    )
    .await;
    let codes: Vec<&str> = w.iter().map(|x| x["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["W0", "W1", "W2", "W3", "W4"]);
    let r = walk(
        &app,
        &t,
        "/api/v1/notification-rules?limit=2",
        "items",
        "after",
        async |_| {},
    )
    .await;
    assert_eq!(r.len(), 5);
    let k = walk(
        &app,
        &t,
        "/api/v1/tokens?limit=2",
        "tokens",
        "after",
        async |_| {},
    )
    .await;
    assert!(k.len() >= 6, "the five and the admin: {}", k.len());
    let ids: Vec<i64> = k.iter().map(|x| x["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let (s, v) = get(&app, &t, "/api/v1/tokens?after=x").await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["field"], "after");
    app.stop().await;
}
