//! Liveness, readiness and the Prometheus metrics page: the endpoints that need no token.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use malaka_runtime::TaskState;
use serde_json::json;

use crate::app::AppState;
use crate::db::DatabaseExt as _;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
}

/// The process is up and answering.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The process can do useful work: the database answers, every critical task (the SQLite
/// posting committer) runs, and shutdown has not begun; 503 otherwise. The body lists every
/// supervised task's state either way; a non-critical task that is down (an SQS poller during
/// an outage, say) makes the node `degraded` but still ready.
async fn readyz(State(state): State<AppState>) -> Response {
    let tasks = state.supervisor().snapshot();
    let mut problems: Vec<String> = Vec::new();
    if state.is_shutting_down() {
        problems.push("shutting down".into());
    }
    if let Err(e) = state.db().ping().await {
        tracing::warn!(error = %e, "readiness check: database unreachable");
        problems.push("database unreachable".into());
    }
    for t in tasks
        .iter()
        .filter(|t| t.critical && t.state != TaskState::Running)
    {
        problems.push(format!("{} is {}", t.name, t.state.as_str()));
    }
    let degraded = tasks
        .iter()
        .any(|t| !matches!(t.state, TaskState::Running | TaskState::Stopped));
    let status = if !problems.is_empty() {
        "unavailable"
    } else if degraded {
        "degraded"
    } else {
        "ready"
    };
    let mut body = json!({
        "status": status,
        "database": state.db().backend().as_str(),
        "installation_id": state.installation_id(),
        "tasks": tasks,
    });
    if problems.is_empty() {
        return (StatusCode::OK, Json(body)).into_response();
    }
    body["error"] = json!({"code": "unavailable", "message": problems.join("; ")});
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// Prometheus text exposition of every metric, pools and job queues included.
async fn metrics_page(State(state): State<AppState>) -> impl IntoResponse {
    state.export_metrics();
    state.export_job_metrics().await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics().render(),
    )
}
