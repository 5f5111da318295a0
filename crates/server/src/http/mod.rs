//! The HTTP surface: routes, middleware (request ids, tracing, panics, time and size limits,
//! request metrics) and the conversion of everything into JSON answers.

mod alerts;
pub mod auth;
pub mod client;
mod dashboard;
mod error;
mod health;
pub mod idempotency;
mod integrations;
mod inventory;
mod jobs;
pub mod json;
mod notify;
pub mod openapi;
mod reports;
pub(crate) mod schema;
mod tokens;
mod ws;

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::app::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Largest request body accepted.
const BODY_LIMIT: usize = 1024 * 1024;

/// The application's routes with every middleware applied.
pub fn router(state: AppState) -> Router {
    let timeout = state.request_timeout();
    Router::new()
        .merge(health::routes())
        .merge(dashboard::routes())
        .nest(
            "/api/v1",
            api_routes().route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                idempotency::layer,
            )),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            client::layer,
        ))
        .layer(axum::middleware::from_fn(record_metrics))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http().make_span_with(|req: &Request| {
                        let id = req
                            .headers()
                            .get(REQUEST_ID)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-");
                        // The path only: a query string may carry a WebSocket ticket.
                        tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                    }),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(CatchPanicLayer::custom(|_| {
                    ApiError::internal("handler panicked").into_response()
                }))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    timeout,
                ))
                .layer(RequestBodyLimitLayer::new(BODY_LIMIT)),
        )
        .with_state(state)
}

/// Every `/api/v1` route (paths relative to `/api/v1`). Each handler authenticates with the
/// [`auth::Principal`] extractor; [`router`] adds the `Idempotency-Key` middleware. Add a
/// module's routes here with `.merge(module::routes())`.
pub fn api_routes() -> Router<AppState> {
    Router::new()
        .merge(tokens::routes())
        .merge(inventory::routes())
        .merge(openapi::routes())
        .merge(ws::routes())
        .merge(alerts::routes())
        .merge(jobs::routes())
        .merge(notify::routes())
        .merge(reports::routes())
        .merge(integrations::routes())
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Counts requests and their latency by method, route template and status.
async fn record_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("malaka_http_requests_total", &labels).increment(1);
    metrics::histogram!("malaka_http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}
