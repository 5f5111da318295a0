//! `/api/v1/inbox` and `/api/v1/events/failures`: what other systems sent and what became of it
//! (parked and refused commands, with every attempt's reason), and event deliveries that failed;
//! both with a replay action. Admins and managers.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use malaka_inventory::{InboxFilter, InboxRecord, InboxState};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::ApiError;
use super::auth::{Permission, Principal};
use super::inventory::limit;
use super::json::Json;
#[allow(unused_imports)] // names used in the `utoipa` attributes only
use super::schema::{FailureStateSchema, InboxStateSchema, PageLimit, TextFilterSchema};
use crate::app::AppState;
use crate::live::deliveries::{Failure, FailureFilter, FailureState};

#[derive(OpenApi)]
#[openapi(paths(
    list_inbox,
    get_inbox,
    replay_inbox,
    list_failures,
    get_failure,
    replay_failure
))]
pub(super) struct ApiDoc;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/inbox", get(list_inbox))
        .route("/inbox/{id}", get(get_inbox))
        .route("/inbox/{id}/replay", post(replay_inbox))
        .route("/events/failures", get(list_failures))
        .route("/events/failures/{id}", get(get_failure))
        .route("/events/failures/{id}/replay", post(replay_failure))
}

/// One attempt that did not go through.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeliveryAttemptOut)]
pub(super) struct AttemptOut {
    at: DateTime<Utc>,
    error: String,
}

/// A message from another system and what became of it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct InboxOut {
    id: i64,
    /// The sender (the envelope's `source`, or `sqs:<queue>`).
    source: String,
    /// The sender's id for the message.
    message_id: String,
    /// Its type (`stock.issue`, `sale.completed`, ...).
    kind: String,
    #[schema(value_type = InboxStateSchema)]
    state: &'static str,
    attempts: i32,
    /// Every attempt's reason, oldest first.
    errors: Vec<AttemptOut>,
    /// Movements it posted.
    movements: Vec<String>,
    /// The message as received.
    payload: String,
    /// Whether `POST /inbox/{id}/replay` may run it again.
    replayable: bool,
    received_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<InboxRecord> for InboxOut {
    fn from(r: InboxRecord) -> Self {
        Self {
            id: r.id,
            source: r.source,
            message_id: r.message_id,
            kind: r.kind,
            state: r.state.as_str(),
            attempts: r.attempts,
            errors: r
                .errors
                .into_iter()
                .map(|a| AttemptOut {
                    at: a.at,
                    error: a.error,
                })
                .collect(),
            movements: r.movements,
            payload: r.payload,
            replayable: r.state.replayable(),
            received_at: r.received_at,
            updated_at: r.updated_at,
        }
    }
}

/// A page, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct InboxPage {
    items: Vec<InboxOut>,
    /// Pass as `before` for the next page.
    next: Option<String>,
}

fn id_of(what: &str, s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>()
        .map_err(|_| ApiError::not_found(format!("{what} {s:?} not found")))
}

fn before(q: &HashMap<String, String>) -> Result<Option<i64>, ApiError> {
    q.get("before")
        .map(|b| {
            b.parse::<i64>()
                .map_err(|_| ApiError::unprocessable("before", "before must be a record id"))
        })
        .transpose()
}

#[utoipa::path(get, path = "/api/v1/inbox", tag = "integrations",
    params(
        ("state" = Option<InboxStateSchema>, Query),
        ("source" = Option<TextFilterSchema>, Query),
        ("before" = Option<i64>, Query, description = "the `next` of the previous page"),
        ("limit" = Option<PageLimit>, Query, description = "1 to 1000, default 100"),
    ),
    responses(
        (status = 200, body = InboxPage),
        (status = 422, description = "an invalid query parameter (named in `error.field`)", body = super::openapi::ErrorBody),
    ))]
async fn list_inbox(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<InboxPage>, ApiError> {
    principal.require(Permission::ManageIntegrations)?;
    let limit = limit(&q, 100, 1000)?;
    let filter = InboxFilter {
        state: q
            .get("state")
            .map(|s| s.parse::<InboxState>())
            .transpose()?,
        source: super::inventory::text_filter(&q, "source")?,
        before: before(&q)?,
        limit: Some(limit),
    };
    let items = state.inventory().inbox_list(&filter).await?;
    let next = super::inventory::next_cursor(&items, limit, |r| r.id.to_string());
    Ok(Json(InboxPage {
        items: items.into_iter().map(InboxOut::from).collect(),
        next,
    }))
}

#[utoipa::path(get, path = "/api/v1/inbox/{id}", tag = "integrations",
    params(("id" = i64, Path)),
    responses(
        (status = 200, body = InboxOut),
        (status = 404, description = "not_found: no such record", body = super::openapi::ErrorBody),
    ))]
async fn get_inbox(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<InboxOut>, ApiError> {
    principal.require(Permission::ManageIntegrations)?;
    let r = state
        .inventory()
        .inbox_record(id_of("inbox record", &id)?)
        .await?;
    Ok(Json(r.into()))
}

#[utoipa::path(post, path = "/api/v1/inbox/{id}/replay", tag = "integrations",
    params(("id" = i64, Path)),
    responses(
        (status = 200, description = "run again: the record as it now is (`processed`, or parked again with this attempt's reason)", body = InboxOut),
        (status = 404, description = "not_found: no such record", body = super::openapi::ErrorBody),
        (status = 409, description = "not_replayable: only parked, refused or dead-lettered messages run again", body = super::openapi::ErrorBody),
    ))]
async fn replay_inbox(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<InboxOut>, ApiError> {
    principal.require(Permission::ManageIntegrations)?;
    let r = state.commands().replay(id_of("inbox record", &id)?).await?;
    tracing::info!(record = r.id, state = r.state.as_str(), by = %principal.name, "inbox record replayed");
    state.balances_changed();
    Ok(Json(r.into()))
}

/// An event delivery that failed.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct FailureOut {
    id: i64,
    /// The bus listener.
    listener: String,
    /// The event (`outbox:<id>`).
    event_key: String,
    topic: String,
    /// The event's data as delivered.
    #[schema(value_type = Object)]
    payload: serde_json::Value,
    #[schema(value_type = FailureStateSchema)]
    state: &'static str,
    attempts: i32,
    errors: Vec<AttemptOut>,
    next_attempt_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Failure> for FailureOut {
    fn from(f: Failure) -> Self {
        Self {
            id: f.id,
            listener: f.listener,
            event_key: f.event_key,
            topic: f.topic,
            payload: f.payload,
            state: f.state.as_str(),
            attempts: f.attempts,
            errors: f
                .errors
                .into_iter()
                .map(|a| AttemptOut {
                    at: a.at,
                    error: a.error,
                })
                .collect(),
            next_attempt_at: f.next_attempt_at,
            created_at: f.created_at,
            updated_at: f.updated_at,
        }
    }
}

/// A page of failures, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct FailurePage {
    items: Vec<FailureOut>,
    /// Pass as `before` for the next page.
    next: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/events/failures", tag = "integrations",
    params(
        ("state" = Option<FailureStateSchema>, Query),
        ("listener" = Option<TextFilterSchema>, Query),
        ("before" = Option<i64>, Query, description = "the `next` of the previous page"),
        ("limit" = Option<PageLimit>, Query, description = "1 to 1000, default 100"),
    ),
    responses(
        (status = 200, body = FailurePage),
        (status = 422, description = "an invalid query parameter (named in `error.field`)", body = super::openapi::ErrorBody),
    ))]
async fn list_failures(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<FailurePage>, ApiError> {
    principal.require(Permission::ManageIntegrations)?;
    let limit = limit(&q, 100, 1000)?;
    let filter = FailureFilter {
        state: q.get("state").map(|s| FailureState::parse(s)).transpose()?,
        listener: super::inventory::text_filter(&q, "listener")?,
        before: before(&q)?,
        limit,
    };
    let items = state.live().deliveries().failures(&filter).await?;
    let next = super::inventory::next_cursor(&items, limit, |f| f.id.to_string());
    Ok(Json(FailurePage {
        items: items.into_iter().map(FailureOut::from).collect(),
        next,
    }))
}

#[utoipa::path(get, path = "/api/v1/events/failures/{id}", tag = "integrations",
    params(("id" = i64, Path)),
    responses(
        (status = 200, body = FailureOut),
        (status = 404, description = "not_found: no such delivery failure", body = super::openapi::ErrorBody),
    ))]
async fn get_failure(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<FailureOut>, ApiError> {
    principal.require(Permission::ManageIntegrations)?;
    let f = state
        .live()
        .deliveries()
        .failure(id_of("delivery failure", &id)?)
        .await?;
    Ok(Json(f.into()))
}

#[utoipa::path(post, path = "/api/v1/events/failures/{id}/replay", tag = "integrations",
    params(("id" = i64, Path)),
    responses(
        (status = 200, description = "delivered again now: `resolved`, or `parked` with this attempt's error", body = FailureOut),
        (status = 404, description = "not_found: no such delivery failure", body = super::openapi::ErrorBody),
        (status = 409, description = "already_resolved", body = super::openapi::ErrorBody),
    ))]
async fn replay_failure(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<FailureOut>, ApiError> {
    principal.require(Permission::ManageIntegrations)?;
    let f = state
        .live()
        .deliveries()
        .replay(id_of("delivery failure", &id)?)
        .await?;
    tracing::info!(failure = f.id, state = f.state.as_str(), by = %principal.name, "delivery replayed");
    Ok(Json(f.into()))
}
