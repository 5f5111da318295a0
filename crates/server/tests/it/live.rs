//! Live stock alerts through the real server: postings raise, move and clear alerts that reach
//! WebSocket clients; authentication of the socket; subscriptions; `since`; lagging clients;
//! the sweep; two nodes on one PostgreSQL (the relay after a crash of `malaka serve`:
//! crates/cli/tests/it/live.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use crate::common;
use crate::common::on_both;

use std::time::Duration;

use common::{Backend, TestApp, spawn_app_on, spawn_app_with};
use futures::{SinkExt, StreamExt};
use malaka_server::auth::Role;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as Frame};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

// ---- helpers ----------------------------------------------------------------------------------

async fn post(app: &TestApp, token: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = app.post_json(token, path, body).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn ok(app: &TestApp, token: &str, path: &str, body: Value) -> Value {
    let (s, v) = post(app, token, path, &body).await;
    assert!(s == 200 || s == 201, "{path} {body} -> {s} {v}");
    v
}

async fn get(app: &TestApp, token: &str, path: &str) -> Value {
    let r = app.get_as(token, path).await;
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

/// A warehouse and an article with `min_qty`.
async fn setup(app: &TestApp, token: &str, wh: &str, sku: &str, min: &str) {
    let (s, v) = post(
        app,
        token,
        "/api/v1/warehouses",
        &json!({"code": wh, "name": wh}),
    )
    .await;
    assert!(
        s == 201 || v["error"]["code"] == "duplicate_warehouse",
        "{v}"
    );
    ok(
        app,
        token,
        "/api/v1/articles",
        json!({"sku": sku, "name": sku, "min_qty": min}),
    )
    .await;
}

async fn mv(app: &TestApp, token: &str, kind: &str, sku: &str, wh: &str, qty: &str) -> Value {
    let mut body = json!({"type": kind, "sku": sku, "warehouse": wh, "qty": qty});
    if kind == "receipt" {
        body["unit_cost"] = json!("1");
    }
    ok(app, token, "/api/v1/movements", body).await
}

fn ws_url(app: &TestApp, query: &str) -> String {
    format!("ws://{}/api/v1/ws{query}", app.addr)
}

/// Connects with `token` as a bearer header.
async fn connect(app: &TestApp, token: &str, query: &str) -> Ws {
    let mut req = ws_url(app, query).into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    ws
}

/// The HTTP status a refused handshake got.
async fn refused(req: tokio_tungstenite::tungstenite::handshake::client::Request) -> u16 {
    match tokio_tungstenite::connect_async(req).await {
        Err(WsError::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the handshake should have been refused"),
    }
}

/// The next JSON message, skipping pings; `None` on close or after `limit`.
async fn next(ws: &mut Ws, limit: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(limit, ws.next()).await {
            Ok(Some(Ok(Frame::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Frame::Ping(_) | Frame::Pong(_)))) => {}
            _ => return None,
        }
    }
}

/// Reads until a message of `kind` matching `pred` arrives (within 5 s); returns it.
async fn wait_for(ws: &mut Ws, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = next(ws, left)
            .await
            .unwrap_or_else(|| panic!("no {kind} message within 5 s"));
        if m["type"] == kind && pred(&m) {
            return m;
        }
    }
}

/// Messages arriving within `quiet` of each other, until silence.
async fn drain(ws: &mut Ws, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(m) = next(ws, quiet).await {
        out.push(m);
    }
    out
}

fn alert_action(m: &Value) -> (&str, &str, &str) {
    (
        m["data"]["action"].as_str().unwrap(),
        m["data"]["alert"]["sku"].as_str().unwrap(),
        m["data"]["alert"]["level"].as_str().unwrap(),
    )
}

/// Runs SQL on the app's database.
async fn sql(app: &TestApp, q: &str) {
    match app.state.db() {
        malaka_server::db::Database::Sqlite(p) => {
            sqlx::query(sqlx::AssertSqlSafe(q.to_owned()))
                .execute(p)
                .await
                .unwrap();
        }
        malaka_server::db::Database::Postgres(p) => {
            sqlx::query(sqlx::AssertSqlSafe(q.to_owned()))
                .execute(p)
                .await
                .unwrap();
        }
    }
}

// ---- authentication ---------------------------------------------------------------------------

#[tokio::test]
async fn an_unauthenticated_websocket_is_refused() {
    let app = common::spawn_app().await;
    let token = app.token(Role::Viewer).await;
    // No credentials, a wrong token, a forged ticket, an expired ticket: 401 before upgrading.
    assert_eq!(
        refused(ws_url(&app, "").into_client_request().unwrap()).await,
        401
    );
    let mut bad = ws_url(&app, "").into_client_request().unwrap();
    bad.headers_mut().insert(
        "Authorization",
        HeaderValue::from_static("Bearer mlk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    );
    assert_eq!(refused(bad).await, 401);
    let forged = "v1.1.99999999999.AAAA";
    assert_eq!(
        refused(
            ws_url(&app, &format!("?ticket={forged}"))
                .into_client_request()
                .unwrap()
        )
        .await,
        401
    );
    let expired = app
        .state
        .live()
        .ticket(1, chrono::Utc::now().timestamp() - 5);
    assert_eq!(
        refused(
            ws_url(&app, &format!("?ticket={expired}"))
                .into_client_request()
                .unwrap()
        )
        .await,
        401
    );
    // A bad `since` is refused as invalid input.
    let mut req = ws_url(&app, "?since=x").into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    assert_eq!(refused(req).await, 422);

    // A ticket from the API works, and so does the token as a subprotocol.
    let t = ok(&app, &token, "/api/v1/ws/ticket", json!({})).await;
    let url = ws_url(&app, &format!("?ticket={}", t["ticket"].as_str().unwrap()));
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("ticket accepted");
    ws.close(None).await.unwrap();
    let mut req = ws_url(&app, "").into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(&format!("malaka.v1, bearer.{token}")).unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("subprotocol accepted");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "malaka.v1");
    ws.close(None).await.unwrap();

    // A revoked token's ticket stops working.
    let t = ok(&app, &token, "/api/v1/ws/ticket", json!({})).await;
    let admin = app.admin_token().await;
    let me = get(&app, &token, "/api/v1/me").await;
    let r = app
        .delete_as(&admin, &format!("/api/v1/tokens/{}", me["id"]))
        .await;
    assert_eq!(r.status(), 204);
    let url = ws_url(&app, &format!("?ticket={}", t["ticket"].as_str().unwrap()));
    assert_eq!(refused(url.into_client_request().unwrap()).await, 401);
    app.stop().await;
}

// ---- alerts -----------------------------------------------------------------------------------

on_both!(postings_raise_move_and_clear_alerts_on_the_socket);
async fn postings_raise_move_and_clear_alerts_on_the_socket(app: &TestApp) {
    let t = app.admin_token().await;
    setup(app, &t, "MAIN", "BOLT", "10").await;
    let mut ws = connect(app, &t, "").await;
    mv(app, &t, "receipt", "BOLT", "MAIN", "20").await;
    let m = wait_for(&mut ws, "stock_changed", |_| true).await;
    assert_eq!(m["data"]["sku"], "BOLT");
    assert!(m["id"].as_i64().unwrap() > 0 && m["ts"].is_string(), "{m}");

    mv(app, &t, "issue", "BOLT", "MAIN", "12").await; // 8: LOW
    let raised = wait_for(&mut ws, "stock_alert", |_| true).await;
    assert_eq!(alert_action(&raised), ("raised", "BOLT", "LOW"));
    assert_eq!(raised["data"]["alert"]["qty"], "8");
    let id = raised["data"]["alert"]["id"].as_i64().unwrap();

    mv(app, &t, "issue", "BOLT", "MAIN", "8").await; // 0: OUT_OF_STOCK
    let m = wait_for(&mut ws, "stock_alert", |_| true).await;
    assert_eq!(alert_action(&m), ("escalated", "BOLT", "OUT_OF_STOCK"));
    assert_eq!(m["data"]["from"], "LOW");
    assert_eq!(m["data"]["alert"]["id"], id);

    let open = get(app, &t, "/api/v1/alerts?state=open").await;
    assert_eq!(open["items"].as_array().unwrap().len(), 1, "{open}");
    assert_eq!(open["items"][0]["level"], "OUT_OF_STOCK");

    let clerk = app.token(Role::Clerk).await;
    let viewer = app.token(Role::Viewer).await;
    let (s, _) = post(
        app,
        &viewer,
        &format!("/api/v1/alerts/{id}/ack"),
        &json!({}),
    )
    .await;
    assert_eq!(s, 403);
    let acked = ok(app, &clerk, &format!("/api/v1/alerts/{id}/ack"), json!({})).await;
    assert_eq!(acked["acknowledged_by"], "test clerk");
    let m = wait_for(&mut ws, "stock_alert", |_| true).await;
    assert_eq!(m["data"]["action"], "acknowledged");
    let (s, v) = post(app, &clerk, "/api/v1/alerts/999999/ack", &json!({})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));

    mv(app, &t, "receipt", "BOLT", "MAIN", "50").await; // NORMAL
    let m = wait_for(&mut ws, "stock_alert", |_| true).await;
    assert_eq!(alert_action(&m), ("cleared", "BOLT", "OUT_OF_STOCK"));
    assert!(m["data"]["alert"]["cleared_at"].is_string());
    let open = get(app, &t, "/api/v1/alerts?state=open").await;
    assert!(open["items"].as_array().unwrap().is_empty(), "{open}");
    let closed = get(
        app,
        &t,
        "/api/v1/alerts?state=closed&sku=BOLT&level=out_of_stock",
    )
    .await;
    assert_eq!(closed["items"][0]["id"], id);
    assert_eq!(closed["items"][0]["state"], "closed");
    let (s, v) = post(app, &t, "/api/v1/movements", &json!({})).await;
    assert_eq!(s, 422, "{v}");
    let r = app.get_as(&t, "/api/v1/alerts?state=maybe").await;
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["field"], "state");
}

on_both!(subscriptions_filter_what_a_client_receives);
async fn subscriptions_filter_what_a_client_receives(app: &TestApp) {
    let t = app.admin_token().await;
    setup(app, &t, "W1", "A-1", "5").await;
    setup(app, &t, "W2", "B-1", "5").await;
    // One client filters by message (articles), one by query (types), one takes everything.
    let mut by_sku = connect(app, &t, "").await;
    by_sku
        .send(Frame::Text(
            json!({"subscribe": {"skus": ["A-1"]}}).to_string().into(),
        ))
        .await
        .unwrap();
    let ack = wait_for(&mut by_sku, "subscribed", |_| true).await;
    assert_eq!(ack["data"]["skus"], json!(["A-1"]));
    let mut alerts_only = connect(app, &t, "?types=stock_alert&warehouses=W2").await;
    let mut all = connect(app, &t, "").await;

    mv(app, &t, "receipt", "A-1", "W1", "3").await; // CRITICAL
    mv(app, &t, "receipt", "B-1", "W2", "4").await; // B-1: LOW
    mv(app, &t, "receipt", "B-1", "W2", "40").await; // B-1: cleared
    let everything = {
        // `job_update` snapshots come on their own clock: not counted here.
        let mut got = Vec::new();
        while got.len() < 5 {
            let m = next(&mut all, Duration::from_secs(5))
                .await
                .expect("message");
            if m["type"] != "job_update" {
                got.push(m);
            }
        }
        got
    };
    let kinds: Vec<&str> = everything
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "stock_changed").count(),
        3,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "stock_alert").count(),
        2,
        "{kinds:?}"
    );

    let a = drain(&mut by_sku, Duration::from_millis(500)).await;
    assert!(!a.is_empty());
    for m in &a {
        let sku = m["data"]["sku"]
            .as_str()
            .or(m["data"]["alert"]["sku"].as_str());
        assert_eq!(sku, Some("A-1"), "{m}");
    }
    let b = drain(&mut alerts_only, Duration::from_millis(500)).await;
    let b: Vec<_> = b.iter().map(alert_action).collect();
    assert_eq!(b, vec![("raised", "B-1", "LOW"), ("cleared", "B-1", "LOW")]);

    // An unknown type is refused, in the query and in a message.
    let mut req = ws_url(app, "?types=gossip").into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
    );
    assert_eq!(refused(req).await, 422);
    all.send(Frame::Text(
        json!({"subscribe": {"types": ["gossip"]}})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let e = wait_for(&mut all, "error", |_| true).await;
    assert_eq!(e["data"]["field"], "subscribe.types");
}

on_both!(a_client_resumes_with_since);
async fn a_client_resumes_with_since(app: &TestApp) {
    let t = app.admin_token().await;
    setup(app, &t, "MAIN", "NUT", "0").await;
    let mut ws = connect(app, &t, "").await;
    for _ in 0..3 {
        mv(app, &t, "receipt", "NUT", "MAIN", "1").await;
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(
            wait_for(&mut ws, "stock_changed", |_| true).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    ws.close(None).await.unwrap();
    let last = seen[2];
    let mut missed = Vec::new();
    for _ in 0..4 {
        missed.push(mv(app, &t, "receipt", "NUT", "MAIN", "1").await["id"].clone());
    }
    // Wait until the four are published, then resume: exactly the missed ones, in order.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.state.live().hub().cursor() < last + 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events not published"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut ws = connect(app, &t, &format!("?since={last}")).await;
    let got = drain(&mut ws, Duration::from_millis(500)).await;
    let ids: Vec<i64> = got.iter().map(|m| m["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (last + 1..=last + 4).collect::<Vec<_>>(), "{got:?}");
    let movements: Vec<&Value> = got.iter().map(|m| &m["data"]["movement_id"]).collect();
    assert_eq!(movements, missed.iter().collect::<Vec<_>>());
    // Then live ones follow without a gap.
    mv(app, &t, "receipt", "NUT", "MAIN", "1").await;
    let m = wait_for(&mut ws, "stock_changed", |_| true).await;
    assert_eq!(m["id"].as_i64().unwrap(), last + 5);

    // Events no longer kept: the client is told to reload.
    sql(
        app,
        &format!("DELETE FROM malaka_outbox WHERE seq <= {}", last + 2),
    )
    .await;
    let mut ws = connect(app, &t, &format!("?since={last}")).await;
    let m = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(m["type"], "resync", "{m}");
    assert!(m["id"].is_null());
    // Asking from the future is a resync too.
    let mut ws = connect(app, &t, "?since=999999").await;
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
        "resync"
    );
}

on_both!(
    a_slow_client_is_closed_as_lagged_while_a_fast_one_keeps_up,
    |c| {
        c.live.ws_buffer = 600;
    }
);
async fn a_slow_client_is_closed_as_lagged_while_a_fast_one_keeps_up(app: &TestApp) {
    let t = app.admin_token().await;
    setup(app, &t, "MAIN", "GRAIN", "0").await;
    // The slow client reads nothing and offers a tiny receive window.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let mut req = ws_url(app, "").into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
    );
    let (mut slow, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    let mut fast = connect(app, &t, "").await;
    let reader = tokio::spawn(async move {
        let mut ids = Vec::new();
        while let Some(m) = next(&mut fast, Duration::from_secs(3)).await {
            if m["type"] == "stock_changed" {
                ids.push(m["id"].as_i64().unwrap());
            }
        }
        ids
    });
    let mut posted = 0;
    let body = json!({"movements": (0..500).map(|_| json!({"type": "receipt", "sku": "GRAIN",
        "warehouse": "MAIN", "qty": "1", "unit_cost": "1", "note": "x".repeat(1000)})).collect::<Vec<_>>()});
    // Enough to fill the kernel's socket buffers (a few MB) and then the client's buffer.
    for _ in 0..12 {
        ok(app, &t, "/api/v1/movements/batch", body.clone()).await;
        posted += 500;
    }
    let ids = reader.await.unwrap();
    // The fast client got every message, in order (ids rise; the level change of the first
    // receipt is an event no client sees).
    assert_eq!(
        ids.len(),
        posted,
        "fast client saw {} of {posted}",
        ids.len()
    );
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids out of order");
    // The slow one, once it reads, finds some messages and then the close frame.
    let mut close = None;
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
        match frame {
            Ok(Frame::Close(c)) => {
                close = c;
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("slow client: {e}"),
        }
    }
    let close = close.expect("the slow client is closed");
    assert_eq!(close.code, CloseCode::from(4001));
    assert_eq!(close.reason.as_str(), "lagged");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("malaka_ws_lagged_total"), "lag is counted");
}

on_both!(the_sweep_repairs_alerts_the_event_path_missed, |c| {
    c.live.sweep_every = std::time::Duration::from_millis(200);
});
async fn the_sweep_repairs_alerts_the_event_path_missed(app: &TestApp) {
    let t = app.admin_token().await;
    setup(app, &t, "MAIN", "OIL", "10").await;
    let mut ws = connect(app, &t, "?types=stock_alert").await;
    mv(app, &t, "receipt", "OIL", "MAIN", "4").await;
    let m = wait_for(&mut ws, "stock_alert", |_| true).await;
    assert_eq!(alert_action(&m), ("raised", "OIL", "CRITICAL"));
    assert!(m["data"]["cause"].is_i64(), "raised by the event: {m}");
    // The alert is lost (as if the event path had missed it): the sweep raises it again.
    sql(app, "DELETE FROM inv_alerts").await;
    let m = wait_for(&mut ws, "stock_alert", |_| true).await;
    assert_eq!(alert_action(&m), ("raised", "OIL", "CRITICAL"));
    assert!(m["data"]["cause"].is_null(), "raised by the sweep: {m}");
    // An alert wrongly closed is opened again; one at the wrong level is moved.
    sql(app, "UPDATE inv_alerts SET cleared_at = updated_at").await;
    let m = wait_for(&mut ws, "stock_alert", |_| true).await;
    assert_eq!(alert_action(&m), ("raised", "OIL", "CRITICAL"));
    sql(
        app,
        "UPDATE inv_alerts SET level = 'LOW' WHERE cleared_at IS NULL",
    )
    .await;
    let m = wait_for(&mut ws, "stock_alert", |_| true).await;
    assert_eq!(alert_action(&m), ("escalated", "OIL", "CRITICAL"));
    // Nothing more to repair: silence.
    assert!(drain(&mut ws, Duration::from_millis(700)).await.is_empty());
    let open = get(app, &t, "/api/v1/alerts?state=open").await;
    assert_eq!(open["items"].as_array().unwrap().len(), 1, "{open}");
}

// ---- several nodes ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_movement_on_one_node_reaches_a_client_of_another_and_raises_one_alert() {
    let Some(a) = spawn_app_on(Backend::Postgres).await else {
        return;
    };
    let b = common::spawn_node_like(&a, |_| {}).await;
    let t = a.admin_token().await;
    setup(&a, &t, "MAIN", "GEAR", "10").await;
    let mut on_b = connect(&b, &t, "").await;
    let mut on_a = connect(&a, &t, "?types=stock_alert").await;
    mv(&a, &t, "receipt", "GEAR", "MAIN", "5").await; // CRITICAL
    let m = wait_for(&mut on_b, "stock_alert", |_| true).await;
    assert_eq!(alert_action(&m), ("raised", "GEAR", "CRITICAL"));
    let m2 = wait_for(&mut on_a, "stock_alert", |_| true).await;
    assert_eq!(
        m2["id"], m["id"],
        "both nodes' clients see the same message"
    );
    // A posting on the other node too, and exactly one alert in all.
    mv(&b, &t, "issue", "GEAR", "MAIN", "5").await; // OUT_OF_STOCK
    let m = wait_for(&mut on_a, "stock_alert", |_| true).await;
    assert_eq!(alert_action(&m), ("escalated", "GEAR", "OUT_OF_STOCK"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = get(&b, &t, "/api/v1/alerts").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 1, "{all}");
    let events = a.state.inventory().outbox(0, 1000).await.unwrap();
    let raised = events
        .iter()
        .filter(|e| e.topic == "stock.alert" && e.payload["action"] == "raised")
        .count();
    assert_eq!(raised, 1);
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn a_client_that_answers_no_ping_is_dropped() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.live.ws_ping_interval = Duration::from_millis(150);
    })
    .await
    .unwrap();
    let t = app.admin_token().await;
    // This client reads nothing, so it answers no ping.
    let mut ws = connect(&app, &t, "").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut close = None;
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
        if let Ok(Frame::Close(c)) = frame {
            close = c;
            break;
        }
    }
    let close = close.expect("closed by the server");
    assert_eq!(close.code, CloseCode::from(4002));
    assert_eq!(app.state.live().hub().clients(), 0);
    // One that reads (and so answers pings) stays.
    let mut alive = connect(&app, &t, "").await;
    let until = tokio::time::Instant::now() + Duration::from_millis(700);
    let mut pings = 0;
    while let Ok(Some(frame)) = tokio::time::timeout_at(until, alive.next()).await {
        match frame.unwrap() {
            Frame::Ping(_) => pings += 1,
            Frame::Close(c) => panic!("closed: {c:?}"),
            _ => {} // a job_update snapshot
        }
    }
    assert!(pings >= 3, "pinged {pings} times");
    assert_eq!(app.state.live().hub().clients(), 1);
    app.stop().await;
}
