//! Liveness, readiness and the Prometheus metrics page: the endpoints that need no token.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::ApiError;
use crate::app::AppState;

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

/// The process can do useful work: the database answers and shutdown has not begun.
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.is_shutting_down() {
        return Err(ApiError::unavailable("shutting down"));
    }
    if let Err(e) = state.db().ping().await {
        tracing::warn!(error = %e, "readiness check: database unreachable");
        return Err(ApiError::unavailable("database unreachable"));
    }
    Ok(Json(json!({
        "status": "ready",
        "database": state.db().backend().as_str(),
        "installation_id": state.installation_id(),
    })))
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
