//! `/api/v1/alerts`: stock alerts (open and cleared) and their acknowledgement.

use std::collections::HashMap;
use std::str::FromStr;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use malaka_inventory::{Alert, AlertFilter, AlertLevel};
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::ApiError;
use super::auth::{Permission, Principal};
use super::inventory::limit;
use super::json::Json;
#[allow(unused_imports)] // names used in the `utoipa` attributes only
use super::schema::{
    AlertStateSchema, AlertingLevelSchema, PageLimit, PositiveIdSchema, TextFilterSchema,
};
use crate::app::AppState;

#[derive(OpenApi)]
#[openapi(paths(list_alerts, ack_alert))]
pub(super) struct ApiDoc;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/alerts", get(list_alerts))
        .route("/alerts/{id}/ack", post(ack_alert))
}

/// A stock alert.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AlertOut {
    id: i64,
    sku: String,
    warehouse: String,
    #[schema(value_type = AlertingLevelSchema)]
    level: &'static str,
    #[schema(value_type = AlertStateSchema)]
    state: &'static str,
    #[schema(value_type = String, example = "4")]
    qty: Decimal,
    #[schema(value_type = String, example = "10")]
    min_qty: Decimal,
    /// The balance's quantity now (`qty` is the one at the alert's last level change); null
    /// when the balance is gone.
    #[schema(value_type = Option<String>, example = "3")]
    current_qty: Option<Decimal>,
    /// The article's name; null when the article is gone.
    name: Option<String>,
    raised_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    cleared_at: Option<DateTime<Utc>>,
    acknowledged_by: Option<String>,
    acknowledged_at: Option<DateTime<Utc>>,
}

impl From<Alert> for AlertOut {
    fn from(a: Alert) -> Self {
        Self {
            id: a.id,
            sku: a.sku,
            warehouse: a.warehouse,
            level: a.level.as_str(),
            state: if a.cleared_at.is_none() {
                "open"
            } else {
                "closed"
            },
            qty: a.qty.normalize(),
            min_qty: a.min_qty.normalize(),
            current_qty: a.current_qty.map(|q| q.normalize()),
            name: a.name,
            raised_at: a.raised_at,
            updated_at: a.updated_at,
            cleared_at: a.cleared_at,
            acknowledged_by: a.acknowledged_by,
            acknowledged_at: a.acknowledged_at,
        }
    }
}

/// A page of alerts, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AlertsOut {
    items: Vec<AlertOut>,
    /// Pass as `before` for the next page.
    next: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts",
    params(
        ("state" = Option<AlertStateSchema>, Query, description = "open or closed (default both)"),
        ("sku" = Option<TextFilterSchema>, Query),
        ("warehouse" = Option<TextFilterSchema>, Query),
        ("level" = Option<AlertingLevelSchema>, Query),
        ("before" = Option<PositiveIdSchema>, Query, description = "the `next` of the previous page"),
        ("limit" = Option<PageLimit>, Query, description = "1 to 1000, default 100"),
    ),
    responses(
        (status = 200, body = AlertsOut),
        (status = 422, description = "an invalid query parameter (named in `error.field`)", body = super::openapi::ErrorBody),
    ))]
async fn list_alerts(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<AlertsOut>, ApiError> {
    principal.require(Permission::Read)?;
    let open = match q.get("state").map(String::as_str) {
        None => None,
        Some("open") => Some(true),
        Some("closed") => Some(false),
        Some(other) => {
            return Err(ApiError::unprocessable(
                "state",
                format!("state must be open or closed, not {other:?}"),
            ));
        }
    };
    let level = q
        .get("level")
        .map(|l| AlertLevel::from_str(&l.to_ascii_uppercase()))
        .transpose()?;
    if level == Some(AlertLevel::Normal) {
        return Err(ApiError::unprocessable(
            "level",
            "an alert is LOW, CRITICAL or OUT_OF_STOCK",
        ));
    }
    let before_id = q
        .get("before")
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::unprocessable("before", "before is not valid"))
        })
        .transpose()?;
    let page = limit(&q, 100, 1000)?;
    let filter = AlertFilter {
        open,
        sku: super::inventory::text_filter(&q, "sku")?,
        warehouse: super::inventory::text_filter(&q, "warehouse")?,
        level,
        before_id,
        limit: Some(page),
    };
    let alerts = state.live().alerts().list(&filter).await?;
    let next = super::inventory::next_cursor(&alerts, page, |a| a.id.to_string());
    Ok(Json(AlertsOut {
        items: alerts.into_iter().map(AlertOut::from).collect(),
        next,
    }))
}

#[utoipa::path(post, path = "/api/v1/alerts/{id}/ack", tag = "alerts",
    params(("id" = i64, Path)),
    responses(
        (status = 200, body = AlertOut),
        (status = 404, description = "not_found: no such alert", body = super::openapi::ErrorBody),
    ))]
async fn ack_alert(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<AlertOut>, ApiError> {
    principal.require(Permission::AckAlerts)?;
    let id = id
        .parse::<i64>()
        .map_err(|_| ApiError::not_found(format!("alert {id:?} not found")))?;
    let alert = state
        .live()
        .alerts()
        .acknowledge(id, &principal.name)
        .await?;
    state.live().events_written();
    Ok(Json(AlertOut::from(alert)))
}
