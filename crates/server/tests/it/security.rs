//! Security through the real server: failed authentication limited per client (and proxies
//! trusted only when configured), webhooks that cannot reach inside, quotas on reports and
//! WebSocket connections (secrets that never reach logs, job errors, metrics or printed
//! configuration: crates/cli/tests/it/security.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, TestApp, spawn_app_with};
use futures::StreamExt;
use malaka_server::auth::Role;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn made_up_token(i: usize) -> String {
    format!("mlk_{i:0>43}")
}

async fn get_with(app: &TestApp, token: &str, xff: Option<&str>) -> reqwest::Response {
    let mut r = app.client.get(app.url("/api/v1/me")).bearer_auth(token);
    if let Some(x) = xff {
        r = r.header("X-Forwarded-For", x);
    }
    r.send().await.unwrap()
}

// ---- one per-client limiter ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_authentication_is_limited_per_client_before_any_lookup() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let good = app.token(Role::Viewer).await;
    let (mut unauthorized, mut limited) = (0, 0);
    for i in 0..300 {
        let r = get_with(&app, &made_up_token(i), None).await;
        match r.status().as_u16() {
            401 => unauthorized += 1,
            429 => {
                limited += 1;
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&retry), "Retry-After {retry}");
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "rate_limited");
            }
            s => panic!("unexpected {s}"),
        }
    }
    // The default allowance: a burst of 20 failures, then 30 a minute.
    assert!(
        (20..=25).contains(&unauthorized),
        "{unauthorized} answered 401"
    );
    assert_eq!(limited, 300 - unauthorized);
    // Refused before the token is looked at: even a valid one waits out the block.
    assert_eq!(get_with(&app, &good, None).await.status(), 429);
    // A blocked client is refused whatever it sends.
    let r = app.client.get(app.url("/api/v1/me")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with(r#"malaka_client_limited_total{limiter="auth"}"#))
        .unwrap_or_else(|| panic!("no limiter counter in\n{metrics}"));
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= f64::from(limited), "{line}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    let tweak = |c: &mut malaka_server::Config| {
        c.api.failed_auth_burst = 3;
        c.api.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    };
    let app = spawn_app_with(Backend::Sqlite, tweak).await.unwrap();
    let good = app.token(Role::Viewer).await;
    for i in 0..10 {
        let _ = get_with(&app, &made_up_token(i), Some("198.51.100.1")).await;
    }
    assert_eq!(
        get_with(&app, &good, Some("198.51.100.1")).await.status(),
        429,
        "the client that failed is limited"
    );
    assert_eq!(
        get_with(&app, &good, Some("198.51.100.2")).await.status(),
        200,
        "another client behind the same proxy is not"
    );
    // A client cannot pick its key by writing the header itself: the proxy appends the peer.
    assert_eq!(
        get_with(&app, &good, Some("198.51.100.9, 198.51.100.1"))
            .await
            .status(),
        429
    );
    app.stop().await;

    // Without trusted proxies the header is ignored: every "client" is 127.0.0.1.
    let app = spawn_app_with(Backend::Sqlite, |c| c.api.failed_auth_burst = 3)
        .await
        .unwrap();
    let good = app.token(Role::Viewer).await;
    for i in 0..10 {
        let _ = get_with(&app, &made_up_token(i), Some(&format!("198.51.100.{i}"))).await;
    }
    assert_eq!(
        get_with(&app, &good, Some("203.0.113.77")).await.status(),
        429
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_websocket_ticket_counts_as_a_failure() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.api.failed_auth_burst = 2)
        .await
        .unwrap();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let url = format!("ws://{}/api/v1/ws?ticket=v1.1.99999999999.AAAA", app.addr);
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                statuses.push(r.status().as_u16());
            }
            other => panic!("connected with a forged ticket: {other:?}"),
        }
    }
    // Two failures are the burst; the third uses it up (and is answered 401), then 429.
    assert_eq!(statuses, [401, 401, 401, 429]);
    app.stop().await;
}

// ---- webhooks cannot reach inside ---------------------------------------------------------------

/// A local HTTP receiver: counts requests per path; `/hook` answers `status`, `/redirect`
/// answers 302 to `/landed`.
async fn receiver(status: u16) -> (u16, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let s = Arc::clone(&s);
        async move {
            let path = req.uri().path().to_owned();
            s.lock().unwrap().push(path.clone());
            let code = if path == "/redirect" { 302 } else { status };
            axum::response::Response::builder()
                .status(code)
                .header("Location", "/landed")
                .body(axum::body::Body::empty())
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, seen)
}

async fn rule(app: &TestApp, t: &str, url: &str) -> (u16, Value) {
    let r = app
        .post_json(
            t,
            "/api/v1/notification-rules",
            &json!({"channel": "webhook", "url": url, "secret": "0123456789abcdef0123"}),
        )
        .await;
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn post_ok(app: &TestApp, t: &str, path: &str, body: Value) -> Value {
    let r = app.post_json(t, path, &body).await;
    let s = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(s == 200 || s == 201 || s == 202, "{path} {body} -> {s} {v}");
    v
}

/// An alert on a new article: a receipt below its minimum.
async fn raise_alert(app: &TestApp, t: &str, sku: &str) {
    let r = app
        .post_json(
            t,
            "/api/v1/warehouses",
            &json!({"code": "MAIN", "name": "Main"}),
        )
        .await;
    assert!(r.status() == 201 || r.status() == 409, "{}", r.status());
    post_ok(
        app,
        t,
        "/api/v1/articles",
        json!({"sku": sku, "name": sku, "min_qty": "10"}),
    )
    .await;
    post_ok(
        app,
        t,
        "/api/v1/movements",
        json!({"type": "receipt", "sku": sku, "warehouse": "MAIN", "qty": "2", "unit_cost": "1"}),
    )
    .await;
}

/// The notification jobs once they are all finished (discarded or completed).
async fn finished_notifications(app: &TestApp, viewer: &str, n: usize) -> Vec<Value> {
    for _ in 0..400 {
        let r = app
            .get_as(
                viewer,
                "/api/v1/jobs?queue=notifications&state=discarded,completed&limit=100",
            )
            .await;
        let v: Value = r.json().await.unwrap();
        let items = v["items"].as_array().unwrap().clone();
        if items.len() >= n {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the notification jobs did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_to_private_addresses_are_refused_at_creation_and_at_connect_time() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.api.rate_limit_per_second = 0)
        .await
        .unwrap();
    let t = app.admin_token().await;
    let (port, seen) = receiver(204).await;
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        "http://[::1]/hook".to_owned(),
        "http://10.0.0.5/hook".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://2130706433/hook".to_owned(),
    ] {
        let (s, v) = rule(&app, &t, &url).await;
        assert_eq!(s, 422, "{url}: {v}");
        assert_eq!(v["error"]["field"], "url");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not a public address"),
            "{v}"
        );
    }
    // A name is accepted: what it resolves to is checked when the webhook connects.
    let (s, v) = rule(&app, &t, &format!("http://localhost:{port}/hook")).await;
    assert_eq!(s, 201, "{v}");
    raise_alert(&app, &t, "SSRF-1").await;
    let viewer = app.token(Role::Viewer).await;
    let jobs = finished_notifications(&app, &viewer, 1).await;
    assert_eq!(jobs[0]["state"], "discarded", "{jobs:?}");
    assert_eq!(jobs[0]["attempt"], 1, "refused for good at once: {jobs:?}");
    let error = jobs[0]["errors"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("localhost resolves to") && error.contains("not a public address"),
        "{error}"
    );
    assert!(seen.lock().unwrap().is_empty(), "the receiver was reached");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirects_are_not_followed_and_errors_name_only_the_host() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.api.rate_limit_per_second = 0;
        c.notify.allow_private_targets = true;
        c.notify.max_attempts = 1;
    })
    .await
    .unwrap();
    let t = app.admin_token().await;
    let (port, seen) = receiver(500).await;
    let (s, v) = rule(&app, &t, &format!("http://127.0.0.1:{port}/redirect")).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = rule(
        &app,
        &t,
        &format!("http://127.0.0.1:{port}/hook/T0SECRETPATH?key=Q1SECRET"),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v["name"],
        format!("http://127.0.0.1:{port}"),
        "named by its host only"
    );
    raise_alert(&app, &t, "SSRF-2").await;
    let viewer = app.token(Role::Viewer).await;
    let jobs = finished_notifications(&app, &viewer, 2).await;
    let errors: Vec<String> = jobs
        .iter()
        .flat_map(|j| j["errors"].as_array().unwrap().clone())
        .map(|e| e["error"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("redirects are not followed")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains(&format!("http://127.0.0.1:{port} answered 500"))),
        "{errors:?}"
    );
    let text = serde_json::to_string(&jobs).unwrap();
    assert!(
        !text.contains("SECRET"),
        "a job shows the URL's path or query: {text}"
    );
    let paths = seen.lock().unwrap().clone();
    assert!(
        !paths.iter().any(|p| p == "/landed"),
        "the redirect was followed: {paths:?}"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        !metrics.contains("SECRET") && !metrics.contains("/hook"),
        "a metric label has a path"
    );
    app.stop().await;
}

// ---- quotas -------------------------------------------------------------------------------------

async fn reports_are_limited_per_token(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.api.rate_limit_per_second = 0;
        c.reports.max_active_per_token = 2;
        // Nobody works the reports queue: requests stay queued.
        c.jobs.queues.get_mut("reports").unwrap().concurrency = 0;
    })
    .await
    else {
        return;
    };
    let a = app.token(Role::Viewer).await;
    let b = app.token(Role::Viewer).await;
    let mut mine = Vec::new();
    for _ in 0..2 {
        let r = post_ok(&app, &a, "/api/v1/reports", json!({"type": "valuation"})).await;
        mine.push(r["id"].as_str().unwrap().to_owned());
    }
    let r = app
        .post_json(&a, "/api/v1/reports", &json!({"type": "valuation"}))
        .await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "too_many_reports", "{v}");
    // Another token has its own allowance; a cancelled report frees a place.
    post_ok(&app, &b, "/api/v1/reports", json!({"type": "valuation"})).await;
    let mine = &mine[0];
    let r = app
        .client
        .delete(app.url(&format!("/api/v1/reports/{mine}")))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    post_ok(&app, &a, "/api/v1/reports", json!({"type": "valuation"})).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_are_limited_per_token_sqlite() {
    reports_are_limited_per_token(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_are_limited_per_token_postgres() {
    reports_are_limited_per_token(Backend::Postgres).await;
}

/// Opens a WebSocket with `token`; the close code of its first frame when the server closes at
/// once, `None` when it stays open (then the socket is kept in `keep`).
async fn open(
    app: &TestApp,
    token: &str,
    keep: &mut Vec<Box<dyn std::any::Any + Send>>,
) -> Option<u16> {
    let mut req = format!("ws://{}/api/v1/ws", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    // A refused connection is closed at once; an accepted one gets a snapshot and stays.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Frame::Close(Some(f))))) => return Some(u16::from(f.code)),
            Ok(Some(Ok(Frame::Text(_) | Frame::Ping(_)))) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => {
                keep.push(Box::new(ws));
                return None;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_connections_are_capped_per_token_and_per_node() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.api.rate_limit_per_second = 0;
        c.live.ws_max_per_token = 2;
        c.live.ws_max_connections = 3;
    })
    .await
    .unwrap();
    let (a, b, c) = (
        app.token(Role::Viewer).await,
        app.token(Role::Viewer).await,
        app.token(Role::Viewer).await,
    );
    let mut keep = Vec::new();
    assert_eq!(open(&app, &a, &mut keep).await, None);
    assert_eq!(open(&app, &a, &mut keep).await, None);
    assert_eq!(
        open(&app, &a, &mut keep).await,
        Some(1008),
        "a third for one token"
    );
    assert_eq!(open(&app, &b, &mut keep).await, None);
    assert_eq!(
        open(&app, &c, &mut keep).await,
        Some(1013),
        "a fourth on the node"
    );
    keep.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        open(&app, &c, &mut keep).await,
        None,
        "a closed one frees its slot"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for reason in ["per_token", "per_node"] {
        assert!(
            metrics.contains(&format!(
                r#"malaka_ws_refused_total{{reason="{reason}"}} 1"#
            )),
            "{reason} not counted"
        );
    }
    app.stop().await;
}
