//! Notifications through the real server: rules over the API, alert mails to a real SMTP server
//! (aiosmtpd), no mail twice, an SMTP outage waited out, priorities, signed webhooks with retries
//! and a circuit breaker (`malaka notify test`: crates/cli/tests/it/notify.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use crate::common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::smtp::SmtpServer;
use common::{Backend, TestApp, spawn_app_with};
use hmac::{KeyInit, Mac};
use malaka_server::auth::Role;
use malaka_server::config::Config;
use serde_json::{Value, json};

fn with_smtp(smtp: &SmtpServer) -> impl FnOnce(&mut Config) + use<> {
    let port = smtp.port;
    move |c: &mut Config| {
        c.notify.smtp.host = "127.0.0.1".into();
        c.notify.smtp.port = port;
        c.notify.breaker.open_for = Duration::from_millis(500);
        c.notify.breaker.minimum_calls = 2;
        c.api.rate_limit_per_second = 0;
    }
}

async fn post(app: &TestApp, token: &str, path: &str, body: Value) -> (u16, Value) {
    let r = app.post_json(token, path, &body).await;
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn ok(app: &TestApp, token: &str, path: &str, body: Value) -> Value {
    let (s, v) = post(app, token, path, body.clone()).await;
    assert!(s == 200 || s == 201, "{path} {body} -> {s} {v}");
    v
}

async fn setup(app: &TestApp, t: &str, skus: &[&str], min: &str) {
    let (s, v) = post(
        app,
        t,
        "/api/v1/warehouses",
        json!({"code": "MAIN", "name": "Main"}),
    )
    .await;
    assert!(
        s == 201 || v["error"]["code"] == "duplicate_warehouse",
        "{v}"
    );
    for sku in skus {
        ok(
            app,
            t,
            "/api/v1/articles",
            json!({"sku": sku, "name": sku, "min_qty": min}),
        )
        .await;
    }
}

async fn mv(app: &TestApp, t: &str, kind: &str, sku: &str, qty: &str) {
    let mut body = json!({"type": kind, "sku": sku, "warehouse": "MAIN", "qty": qty});
    if kind == "receipt" {
        body["unit_cost"] = json!("2");
    }
    ok(app, t, "/api/v1/movements", body).await;
}

async fn email_rule(app: &TestApp, t: &str, address: &str, extra: Value) -> i64 {
    let mut body = json!({"channel": "email", "address": address});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    ok(app, t, "/api/v1/notification-rules", body).await["id"]
        .as_i64()
        .unwrap()
}

/// Jobs of the notifications queue in `state`.
async fn jobs_in(app: &TestApp, state: &str) -> Vec<Value> {
    let t = app.admin_token().await;
    let r = app
        .get_as(
            &t,
            &format!("/api/v1/jobs?queue=notifications&state={state}&limit=1000"),
        )
        .await;
    r.json::<Value>().await.unwrap()["items"]
        .as_array()
        .unwrap()
        .clone()
}

// ---- rules ------------------------------------------------------------------------------------

#[tokio::test]
async fn rules_are_managed_through_the_api() {
    let app = common::spawn_app().await;
    let m = app.token(Role::Manager).await;
    let clerk = app.token(Role::Clerk).await;
    let (s, _) = post(
        &app,
        &clerk,
        "/api/v1/notification-rules",
        json!({"channel": "email", "address": "a@b.example"}),
    )
    .await;
    assert_eq!(s, 403);
    for (body, field) in [
        (json!({"address": "a@b.example"}), "channel"),
        (json!({"channel": "email"}), "address"),
        (json!({"channel": "email", "address": "nope"}), "address"),
        (
            json!({"channel": "webhook", "url": "http://h.example/x"}),
            "secret",
        ),
        (
            json!({"channel": "webhook", "url": "mailto:x", "secret": "0123456789abcdef"}),
            "url",
        ),
        (
            json!({"channel": "email", "address": "a@b.example", "min_level": "NORMAL"}),
            "min_level",
        ),
        (
            json!({"channel": "email", "address": "a@b.example", "events": ["gossip"]}),
            "events",
        ),
        (
            json!({"channel": "email", "address": "a@b.example", "colour": "red"}),
            "colour",
        ),
    ] {
        let (s, v) = post(&app, &m, "/api/v1/notification-rules", body.clone()).await;
        assert_eq!(s, 422, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let hook = ok(
        &app,
        &m,
        "/api/v1/notification-rules",
        json!({"name": "ERP", "channel": "webhook", "url": "https://erp.example/hook", "secret": "0123456789abcdef",
               "warehouses": ["MAIN"], "min_level": "critical"}),
    )
    .await;
    assert_eq!(hook["has_secret"], true);
    assert!(
        hook.get("secret").is_none(),
        "secrets are never shown: {hook}"
    );
    assert_eq!(hook["min_level"], "CRITICAL");
    assert_eq!(hook["events"], json!(["stock_alert"]));
    let id = hook["id"].as_i64().unwrap();
    let r = app
        .client
        .patch(app.url(&format!("/api/v1/notification-rules/{id}")))
        .bearer_auth(&m)
        .json(&json!({"enabled": false, "skus": ["A-1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["enabled"].clone(), v["skus"].clone(), v["url"].clone()),
        (
            json!(false),
            json!(["A-1"]),
            json!("https://erp.example/hook")
        )
    );
    let r = app
        .client
        .patch(app.url(&format!("/api/v1/notification-rules/{id}")))
        .bearer_auth(&m)
        .json(&json!({"channel": "email"}))
        .send()
        .await
        .unwrap();
    // Another channel than the rule's conflicts with the rule as it is.
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "channel_mismatch"
    );
    let list: Value = app
        .get_as(&m, "/api/v1/notification-rules")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.delete_as(&m, &format!("/api/v1/notification-rules/{id}"))
            .await
            .status(),
        204
    );
    assert_eq!(
        app.delete_as(&m, &format!("/api/v1/notification-rules/{id}"))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get_as(&m, "/api/v1/notification-rules/x")
            .await
            .status(),
        404
    );
    app.stop().await;
}

// ---- email ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alerts_send_the_right_mails_once_on_sqlite() {
    alerts_send_the_right_mails_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alerts_send_the_right_mails_once_on_postgres() {
    alerts_send_the_right_mails_once(Backend::Postgres).await;
}

/// Runs `sql` on the app's database.
async fn sql(app: &TestApp, q: &'static str) {
    match app.state.db() {
        malaka_server::db::Database::Sqlite(p) => {
            sqlx::query(q).execute(p).await.unwrap();
        }
        malaka_server::db::Database::Postgres(p) => {
            sqlx::query(q).execute(p).await.unwrap();
        }
    }
}

async fn alerts_send_the_right_mails_once(backend: Backend) {
    let Some(smtp) = SmtpServer::start(0) else {
        return;
    };
    let Some(app) = spawn_app_with(backend, with_smtp(&smtp)).await else {
        return;
    };
    let t = app.admin_token().await;
    setup(&app, &t, &["BOLT-M8"], "10").await;
    email_rule(&app, &t, "buyer@example.com", json!({"name": "Buyer"})).await;
    email_rule(
        &app,
        &t,
        "side@example.com",
        json!({"warehouses": ["SIDE"]}),
    )
    .await;
    email_rule(
        &app,
        &t,
        "boss@example.com",
        json!({"min_level": "OUT_OF_STOCK"}),
    )
    .await;

    mv(&app, &t, "receipt", "BOLT-M8", "4").await; // CRITICAL
    let mails = smtp.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(mails[0].rcpt, "buyer@example.com");
    assert_eq!(mails[0].subject, "CRITICAL: BOLT-M8 in MAIN, 4 left");
    let text = mails[0].text();
    assert!(text.contains("Quantity in stock: 4"), "{text}");
    assert!(text.contains("Minimum:           10"), "{text}");
    assert!(
        text.contains(&format!("http://{}/?sku=BOLT-M8", app.addr)),
        "{text}"
    );
    assert!(mails[0].raw.contains("text/html"), "an HTML part too");

    mv(&app, &t, "issue", "BOLT-M8", "4").await; // OUT_OF_STOCK: buyer and boss
    let mails = smtp.wait_for(3, Duration::from_secs(10)).await;
    let got: HashSet<(String, String)> = mails[1..]
        .iter()
        .map(|m| (m.rcpt.clone(), m.subject.clone()))
        .collect();
    let want: HashSet<(String, String)> = ["buyer@example.com", "boss@example.com"]
        .iter()
        .map(|r| {
            (
                (*r).to_owned(),
                "OUT OF STOCK: BOLT-M8 in MAIN, 0 left".to_owned(),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(mails[1].text().contains("(was CRITICAL)"));

    mv(&app, &t, "receipt", "BOLT-M8", "50").await; // cleared: buyer and boss (it was OUT_OF_STOCK)
    let mails = smtp.wait_for(5, Duration::from_secs(10)).await;
    for m in &mails[3..] {
        assert_eq!(
            m.subject,
            "Cleared: BOLT-M8 in MAIN is back above its minimum"
        );
    }

    // A redelivered event sends nothing twice: the relay hands every level change on again.
    let before = app.state.live().hub().cursor();
    sql(&app, "UPDATE malaka_outbox SET published_at = NULL, seq = NULL WHERE topic = 'stock.level_changed'").await;
    app.state.live().events_written();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.state.live().hub().cursor() < before + 3 {
        assert!(tokio::time::Instant::now() < deadline, "not relayed again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(smtp.mails().len(), 5, "no mail twice");
    assert!(smtp.mails().iter().all(|m| m.rcpt != "side@example.com"));
    // (Metrics are per process, shared by this file's tests: at least these five.)
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let sent: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"malaka_notify_sent_total{channel="email"} "#))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(sent >= 5.0, "{metrics}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mails_wait_out_an_smtp_outage_and_arrive_once() {
    let Some(mut smtp) = SmtpServer::start(0) else {
        return;
    };
    let app = spawn_app_with(Backend::Sqlite, with_smtp(&smtp))
        .await
        .unwrap();
    let t = app.admin_token().await;
    let skus: Vec<String> = (0..50).map(|i| format!("OUT-{i:02}")).collect();
    let refs: Vec<&str> = skus.iter().map(String::as_str).collect();
    setup(&app, &t, &refs, "10").await;
    email_rule(&app, &t, "ops@example.com", json!({})).await;
    smtp.stop();
    let movements: Vec<Value> = skus
        .iter()
        .map(|s| json!({"type": "receipt", "sku": s, "warehouse": "MAIN", "qty": "3", "unit_cost": "1"}))
        .collect();
    ok(
        &app,
        &t,
        "/api/v1/movements/batch",
        json!({"movements": movements}),
    )
    .await;
    // Deliveries fail, the breaker opens, the rest wait without spending attempts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(smtp.mails().is_empty());
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"malaka_notify_breaker_open{target="smtp:127.0.0.1:"#),
        "{metrics}"
    );
    assert!(metrics.contains("malaka_notify_snoozed_total"), "{metrics}");
    smtp.resume();
    let mails = smtp.wait_for(50, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails_after = smtp.mails();
    assert_eq!(mails_after.len(), 50, "each once");
    let subjects: HashSet<&str> = mails.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(subjects.len(), 50, "one per alert");
    assert!(jobs_in(&app, "discarded").await.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_high_priority_mail_overtakes_a_queue_of_low_ones() {
    // A slow server (100 ms a message) and one delivery at a time build the backlog.
    let Some(smtp) = SmtpServer::start(100) else {
        return;
    };
    let mut tweak = Some(with_smtp(&smtp));
    let app = spawn_app_with(Backend::Sqlite, move |c| {
        (tweak.take().unwrap())(c);
        c.jobs.queues.get_mut("notifications").unwrap().concurrency = 1;
    })
    .await
    .unwrap();
    let t = app.admin_token().await;
    let skus: Vec<String> = (0..20).map(|i| format!("LOW-{i:02}")).collect();
    let mut refs: Vec<&str> = skus.iter().map(String::as_str).collect();
    refs.push("URGENT");
    setup(&app, &t, &refs, "10").await;
    // Alerts first (no rule yet: no mail), then the rule, then 20 clears (low priority) and,
    // last, one article running out (high priority).
    let receipts = |qty: &str| -> Vec<Value> {
        skus.iter()
            .map(|s| json!({"type": "receipt", "sku": s, "warehouse": "MAIN", "qty": qty, "unit_cost": "1"}))
            .collect()
    };
    ok(
        &app,
        &t,
        "/api/v1/movements/batch",
        json!({"movements": receipts("5")}),
    )
    .await;
    mv(&app, &t, "receipt", "URGENT", "20").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app
        .state
        .live()
        .alerts()
        .list(&Default::default())
        .await
        .unwrap()
        .len()
        < 20
    {
        assert!(tokio::time::Instant::now() < deadline, "alerts not raised");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    email_rule(&app, &t, "ops@example.com", json!({})).await;
    ok(
        &app,
        &t,
        "/api/v1/movements/batch",
        json!({"movements": receipts("50")}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    mv(&app, &t, "issue", "URGENT", "20").await;
    let mails = smtp.wait_for(21, Duration::from_secs(30)).await;
    let at = mails
        .iter()
        .position(|m| m.subject.starts_with("OUT OF STOCK: URGENT"))
        .expect("the urgent mail");
    assert!(
        at <= 3,
        "the urgent mail came {at}th of 21: {:?}",
        mails.iter().map(|m| &m.subject).collect::<Vec<_>>()
    );
    app.stop().await;
}

// ---- webhooks ---------------------------------------------------------------------------------

const SECRET: &str = "whsec-0123456789abcdef";

#[derive(Default)]
struct Receiver {
    /// Answer 500 to the first this many requests.
    fail_first: usize,
    seen: usize,
    /// Verified deliveries: (delivery id, body).
    delivered: Vec<(String, Value)>,
    bad_signatures: usize,
}

/// A webhook receiver on `port` (0: any) that checks each request's signature.
async fn receiver(
    port: u16,
    fail_first: usize,
) -> (u16, Arc<Mutex<Receiver>>, tokio::task::JoinHandle<()>) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    let state = Arc::new(Mutex::new(Receiver {
        fail_first,
        ..Default::default()
    }));
    let s = Arc::clone(&state);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let s = Arc::clone(&s);
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let sig = h("x-malaka-signature");
                let ts = sig
                    .split(',')
                    .find_map(|p| p.strip_prefix("t="))
                    .unwrap_or_default()
                    .to_owned();
                let given = sig
                    .split(',')
                    .find_map(|p| p.strip_prefix("v1="))
                    .unwrap_or_default()
                    .to_owned();
                let mut mac =
                    hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                mac.update(format!("{ts}.").as_bytes());
                mac.update(&body);
                let want: String = mac
                    .finalize()
                    .into_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let mut r = s.lock().unwrap();
                r.seen += 1;
                if given != want || ts != h("x-malaka-timestamp") {
                    r.bad_signatures += 1;
                    return StatusCode::UNAUTHORIZED;
                }
                if r.seen <= r.fail_first {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                r.delivered.push((
                    h("x-malaka-delivery"),
                    serde_json::from_slice(&body).unwrap(),
                ));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (port, state, task)
}

async fn webhook_rule(app: &TestApp, t: &str, port: u16) {
    ok(
        app,
        t,
        "/api/v1/notification-rules",
        json!({"channel": "webhook", "url": format!("http://127.0.0.1:{port}/hook"), "secret": SECRET}),
    )
    .await;
}

async fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn fast_breaker(c: &mut Config) {
    // The test receivers listen on 127.0.0.1.
    c.notify.allow_private_targets = true;
    c.notify.breaker.open_for = Duration::from_millis(500);
    c.notify.breaker.minimum_calls = 3;
    c.notify.webhook_timeout = Duration::from_secs(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_signed_retried_on_500_and_delivered_once() {
    let Some(app) = spawn_app_with(Backend::Sqlite, fast_breaker).await else {
        return;
    };
    let t = app.admin_token().await;
    setup(&app, &t, &["HOOK-1"], "10").await;
    let (port, rx, _task) = receiver(0, 1).await;
    webhook_rule(&app, &t, port).await;
    mv(&app, &t, "receipt", "HOOK-1", "2").await;
    until(Duration::from_secs(10), "the delivery", || {
        !rx.lock().unwrap().delivered.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let r = rx.lock().unwrap();
        assert_eq!(r.bad_signatures, 0);
        assert_eq!(r.seen, 2, "one 500, then one success");
        assert_eq!(r.delivered.len(), 1);
        let (_, body) = &r.delivered[0];
        assert_eq!(body["type"], "stock_alert");
        assert_eq!(body["data"]["action"], "raised");
        assert_eq!(body["data"]["alert"]["sku"], "HOOK-1");
        assert_eq!(body["data"]["alert"]["level"], "CRITICAL");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_webhook_opens_its_breaker_which_closes_when_it_recovers() {
    let Some(app) = spawn_app_with(Backend::Sqlite, fast_breaker).await else {
        return;
    };
    let t = app.admin_token().await;
    let skus: Vec<String> = (0..8).map(|i| format!("DEAD-{i}")).collect();
    let refs: Vec<&str> = skus.iter().map(String::as_str).collect();
    setup(&app, &t, &refs, "10").await;
    // Nothing listens on this port yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    webhook_rule(&app, &t, port).await;
    let movements: Vec<Value> = skus
        .iter()
        .map(|s| json!({"type": "receipt", "sku": s, "warehouse": "MAIN", "qty": "1", "unit_cost": "1"}))
        .collect();
    ok(
        &app,
        &t,
        "/api/v1/movements/batch",
        json!({"movements": movements}),
    )
    .await;
    let target = format!(r#"malaka_notify_breaker_open{{target="webhook:127.0.0.1:{port}"}}"#);
    let mut opened = false;
    for _ in 0..200 {
        let m = app.get("/metrics").await.text().await.unwrap();
        if m.lines()
            .any(|l| l.starts_with(&target) && !l.ends_with(" 0"))
        {
            opened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(opened, "the breaker opened");
    // The host comes back: every alert is delivered once and the breaker closes.
    let (_, rx, _task) = receiver(port, 0).await;
    until(Duration::from_secs(20), "8 deliveries", || {
        rx.lock().unwrap().delivered.len() >= 8
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let r = rx.lock().unwrap();
        let ids: HashSet<&String> = r.delivered.iter().map(|d| &d.0).collect();
        assert_eq!((r.delivered.len(), ids.len()), (8, 8), "each once");
    }
    let m = app.get("/metrics").await.text().await.unwrap();
    assert!(
        m.lines().any(|l| l == format!("{target} 0")),
        "closed again: {m}"
    );
    assert!(jobs_in(&app, "discarded").await.is_empty());
    app.stop().await;
}
