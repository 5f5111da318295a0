//! `/api/v1/notification-rules`: where stock alerts and finished reports are sent (admins and
//! managers). Webhook secrets are write-only: answers say whether one is set, never what it is.

use axum::Router;
use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::ApiError;
use super::auth::{Permission, Principal};
use super::json::Json;
#[allow(unused_imports)] // names used in the `utoipa` attributes only
use super::schema::{
    AlertingLevelSchema, ChannelSchema, IdCursorSchema, PageLimit, RuleEventSchema, RuleInSchema,
    RulePatchSchema,
};
use crate::app::AppState;
use malaka_notify::{Channel, NewRule, Rule, RuleError, RuleInput};

#[derive(OpenApi)]
#[openapi(paths(create_rule, list_rules, get_rule, patch_rule, delete_rule))]
pub(super) struct ApiDoc;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/notification-rules", get(list_rules).post(create_rule))
        .route(
            "/notification-rules/{id}",
            get(get_rule).patch(patch_rule).delete(delete_rule),
        )
}

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        if e.conflict {
            ApiError::conflict("channel_mismatch", e.message).with_field(e.field)
        } else {
            ApiError::unprocessable(e.field, e.message)
        }
    }
}

/// A rule's fields. `channel` is `email` (with `address`) or `webhook` (with `url` and
/// `secret`); lists empty or absent match everything.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleIn {
    name: Option<String>,
    channel: Option<String>,
    address: Option<String>,
    url: Option<String>,
    /// Write-only: signs each delivery (16 to 256 characters).
    #[schema(value_type = Option<String>)]
    secret: Option<malaka_db::secret::Secret>,
    warehouses: Option<Vec<String>>,
    skus: Option<Vec<String>>,
    /// LOW (default), CRITICAL or OUT_OF_STOCK.
    min_level: Option<String>,
    /// `stock_alert` (default) and/or `report_ready`.
    events: Option<Vec<String>>,
    enabled: Option<bool>,
}

impl From<RuleIn> for RuleInput {
    fn from(r: RuleIn) -> Self {
        Self {
            name: r.name,
            channel: r.channel,
            address: r.address,
            url: r.url,
            secret: r.secret,
            warehouses: r.warehouses,
            skus: r.skus,
            min_level: r.min_level,
            events: r.events,
            enabled: r.enabled,
        }
    }
}

/// A rule.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RuleOut {
    id: i64,
    name: String,
    #[schema(value_type = ChannelSchema)]
    channel: &'static str,
    /// For email.
    address: Option<String>,
    /// For webhooks.
    url: Option<String>,
    /// Whether a webhook secret is set (the secret itself is never shown).
    has_secret: bool,
    warehouses: Vec<String>,
    skus: Vec<String>,
    #[schema(value_type = AlertingLevelSchema)]
    min_level: &'static str,
    #[schema(value_type = Vec<RuleEventSchema>)]
    events: Vec<String>,
    enabled: bool,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Rule> for RuleOut {
    fn from(r: Rule) -> Self {
        let (address, url) = match r.channel {
            Channel::Email => (Some(r.target), None),
            Channel::Webhook => (None, Some(r.target)),
        };
        Self {
            id: r.id,
            name: r.name,
            channel: r.channel.as_str(),
            address,
            url,
            has_secret: r.secret.is_some(),
            warehouses: r.warehouses,
            skus: r.skus,
            min_level: r.min_level.as_str(),
            events: r.events,
            enabled: r.enabled,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Rules, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RulesOut {
    items: Vec<RuleOut>,
    /// Pass as `after` for the next page; null on the last.
    next: Option<String>,
}

fn rule_id(s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>()
        .map_err(|_| ApiError::not_found(format!("notification rule {s:?} not found")))
}

fn missing(id: i64) -> ApiError {
    ApiError::not_found(format!("notification rule {id} not found"))
}

#[utoipa::path(post, path = "/api/v1/notification-rules", tag = "notifications", request_body = RuleInSchema,
    responses(
        (status = 201, body = RuleOut),
        (status = 422, description = "an invalid field (named in `error.field`); a webhook URL naming a non-public address literally, unless the server allows private targets", body = super::openapi::ErrorBody),
    ))]
async fn create_rule(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<RuleIn>,
) -> Result<(StatusCode, Json<RuleOut>), ApiError> {
    principal.require(Permission::ManageCatalog)?;
    let rule = NewRule::parse(body.into())?;
    malaka_notify::rules::check_target(&rule, state.notifier().allow_private_targets())?;
    let stored = state
        .notifier()
        .rules()
        .create(&rule, &principal.name)
        .await?;
    tracing::info!(rule = stored.id, channel = rule.channel.as_str(), by = %principal.name, "notification rule created");
    Ok((StatusCode::CREATED, Json(RuleOut::from(stored))))
}

#[utoipa::path(get, path = "/api/v1/notification-rules", tag = "notifications",
    params(
        ("after" = Option<IdCursorSchema>, Query, description = "the `next` of the previous page"),
        ("limit" = Option<PageLimit>, Query, description = "1 to 1000, default 100"),
    ),
    responses(
        (status = 200, body = RulesOut),
        (status = 422, description = "an invalid query parameter (named in `error.field`)", body = super::openapi::ErrorBody),
    ))]
async fn list_rules(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<RulesOut>, ApiError> {
    principal.require(Permission::ManageCatalog)?;
    let limit = super::inventory::limit(&q, 100, 1000)?;
    let after = super::inventory::id_cursor(&q, "after")?;
    let rules = state.notifier().rules().page(after, limit).await?;
    let next = super::inventory::next_cursor(&rules, limit, |r| r.id.to_string());
    Ok(Json(RulesOut {
        items: rules.into_iter().map(RuleOut::from).collect(),
        next,
    }))
}

#[utoipa::path(get, path = "/api/v1/notification-rules/{id}", tag = "notifications",
    params(("id" = i64, Path)),
    responses(
        (status = 200, body = RuleOut),
        (status = 404, description = "not_found: no such rule", body = super::openapi::ErrorBody),
    ))]
async fn get_rule(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<RuleOut>, ApiError> {
    principal.require(Permission::ManageCatalog)?;
    let id = rule_id(&id)?;
    let rule = state
        .notifier()
        .rules()
        .get(id)
        .await?
        .ok_or_else(|| missing(id))?;
    Ok(Json(RuleOut::from(rule)))
}

#[utoipa::path(patch, path = "/api/v1/notification-rules/{id}", tag = "notifications",
    params(("id" = i64, Path)),
    request_body = RulePatchSchema,
    responses(
        (status = 200, body = RuleOut),
        (status = 404, description = "not_found: no such rule", body = super::openapi::ErrorBody),
        (status = 409, description = "channel_mismatch: another `channel` than the rule's, `address` on a webhook rule, or `url`/`secret` on an email rule", body = super::openapi::ErrorBody),
        (status = 422, description = "an invalid field (named in `error.field`)", body = super::openapi::ErrorBody),
    ))]
async fn patch_rule(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(body): Json<RuleIn>,
) -> Result<Json<RuleOut>, ApiError> {
    principal.require(Permission::ManageCatalog)?;
    let id = rule_id(&id)?;
    let rules = state.notifier().rules();
    let existing = rules.get(id).await?.ok_or_else(|| missing(id))?;
    let patched = NewRule::patched(&existing, body.into())?;
    malaka_notify::rules::check_target(&patched, state.notifier().allow_private_targets())?;
    let rule = rules
        .update(id, &patched)
        .await?
        .ok_or_else(|| missing(id))?;
    Ok(Json(RuleOut::from(rule)))
}

#[utoipa::path(delete, path = "/api/v1/notification-rules/{id}", tag = "notifications",
    params(("id" = i64, Path)),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "not_found: no such rule", body = super::openapi::ErrorBody),
    ))]
async fn delete_rule(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(Permission::ManageCatalog)?;
    let id = rule_id(&id)?;
    if state.notifier().rules().delete(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(missing(id))
    }
}
