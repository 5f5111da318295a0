//! Health, readiness, metrics and error answers, through the real HTTP API on every backend.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use crate::common;

use common::{Backend, spawn_app, spawn_app_on};
use malaka_server::db::DatabaseExt as _;

async fn readiness_on(backend: Backend) {
    let Some(app) = spawn_app_on(backend).await else {
        return;
    };
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    let expected = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(body["database"], expected);
    assert!(
        body["installation_id"]
            .as_str()
            .is_some_and(|s| s.len() == 36)
    );
    app.stop().await;
}

#[tokio::test]
async fn readiness_on_sqlite() {
    readiness_on(Backend::Sqlite).await;
}

#[tokio::test]
async fn readiness_on_postgres() {
    readiness_on(Backend::Postgres).await;
}

#[tokio::test]
async fn health_is_ok_and_carries_a_request_id() {
    let app = spawn_app().await;
    let r = app.get("/healthz").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-request-id").is_some());
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"status": "ok"})
    );
    app.stop().await;
}

#[tokio::test]
async fn readiness_fails_when_the_database_is_gone() {
    let app = spawn_app().await;
    app.state.db().close().await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    app.stop().await;
}

#[tokio::test]
async fn metrics_expose_every_pool_by_name() {
    let app = spawn_app().await;
    // Give the events pool some work so its counters move.
    let bus = app.state.bus().clone();
    bus.on::<u32, _, _>("test", |_| async { Ok(()) });
    for i in 0..5u32 {
        bus.dispatch_async(malaka_runtime::Event::new("t", i))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let _ = app.get("/healthz").await;
    let r = app.get("/metrics").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    for needle in [
        r#"malaka_pool_workers{pool="events",state="idle"}"#,
        r#"malaka_pool_queue_length{pool="events"}"#,
        r#"malaka_pool_task_run_seconds_p99{pool="events"}"#,
        r#"malaka_pool_tasks_panicked_total{pool="events"}"#,
        r#"malaka_bus_deliveries_total{listener="test""#,
        r#"malaka_http_requests_total{method="GET",route="/healthz",status="200"}"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    let submitted = text
        .lines()
        .find(|l| l.starts_with(r#"malaka_pool_tasks_submitted_total{pool="events"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(submitted >= 5.0, "{submitted}");
    app.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let r = app.get("/nope").await;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert!(body["error"]["message"].as_str().unwrap().contains("/nope"));

    let r = app.client.post(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    app.stop().await;
}

#[tokio::test]
async fn the_database_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let first = common::spawn_app_with(Backend::Sqlite, |c| c.data_dir = data.clone())
        .await
        .unwrap();
    let id = first.state.installation_id().to_owned();
    first.stop().await;
    let second = common::spawn_app_with(Backend::Sqlite, |c| c.data_dir = data.clone())
        .await
        .unwrap();
    assert_eq!(second.state.installation_id(), id);
    assert!(data.join("malaka.db").exists());
    second.stop().await;
}
