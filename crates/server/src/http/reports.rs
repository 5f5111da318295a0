//! `/api/v1/reports`: request a report (202: it runs as a job), follow its progress, download
//! its file (streamed chunk by chunk), cancel or delete it.

use std::collections::HashMap;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use malaka_inventory::ReportKind;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::ApiError;
use super::auth::{Permission, Principal};
use super::inventory::limit;
use super::json::Json;
#[allow(unused_imports)] // names used in the `utoipa` attributes only
use super::schema::{
    PageLimit, ReportFormatSchema, ReportKindSchema, ReportParamsSchema, ReportStateSchema,
    TextFilterSchema,
};
use crate::app::AppState;
use crate::auth::Role;
use malaka_reports::{Format, Report, ReportError, ReportState, StoredParams};

#[derive(OpenApi)]
#[openapi(paths(
    request_report,
    list_reports,
    get_report,
    download_report,
    delete_report
))]
pub(super) struct ApiDoc;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/reports", get(list_reports).post(request_report))
        .route("/reports/{id}", get(get_report).delete(delete_report))
        .route("/reports/{id}/download", get(download_report))
}

impl From<ReportError> for ApiError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Inventory(i) => i.into(),
            ReportError::TooMany(n) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_reports",
                ReportError::TooMany(n).to_string(),
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from(5u32)),
            other => ApiError::internal(other),
        }
    }
}

/// What to report on.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReportIn {
    #[serde(rename = "type")]
    #[schema(value_type = ReportKindSchema)]
    kind: String,
    #[serde(default, deserialize_with = "crate::input::object")]
    #[schema(value_type = ReportParamsSchema, required = false)]
    params: StoredParams,
    /// Default csv.
    #[schema(value_type = Option<ReportFormatSchema>)]
    format: Option<String>,
}

/// A report.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ReportOut {
    id: String,
    #[serde(rename = "type")]
    #[schema(value_type = ReportKindSchema)]
    kind: &'static str,
    #[schema(value_type = ReportParamsSchema)]
    params: StoredParams,
    #[schema(value_type = ReportFormatSchema)]
    format: &'static str,
    #[schema(value_type = ReportStateSchema)]
    state: &'static str,
    /// Percent done.
    progress: i64,
    rows: Option<i64>,
    bytes: Option<i64>,
    /// Totals, notes and the snapshot's time, once completed.
    #[schema(value_type = Option<Object>)]
    summary: Option<serde_json::Value>,
    error: Option<String>,
    requested_by: String,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    /// Where to get the file, once completed.
    download: Option<String>,
}

impl From<Report> for ReportOut {
    fn from(r: Report) -> Self {
        Self {
            download: (r.state == ReportState::Completed)
                .then(|| format!("/api/v1/reports/{}/download", r.id)),
            kind: r.kind.as_str(),
            params: r.params,
            format: r.format.as_str(),
            state: r.state.as_str(),
            progress: r.progress,
            rows: r.rows,
            bytes: r.bytes,
            summary: r.summary,
            error: r.error,
            requested_by: r.requested_by,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            expires_at: r.expires_at,
            id: r.id,
        }
    }
}

/// Reports, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ReportsOut {
    items: Vec<ReportOut>,
    /// Pass as `before` for the next page.
    next: Option<String>,
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("report {id:?} not found"))
}

#[utoipa::path(post, path = "/api/v1/reports", tag = "reports", request_body = ReportIn,
    responses(
        (status = 202, body = ReportOut),
        (status = 422, description = "an invalid field (named in `error.field`; `params.from` after `params.to`, ...)", body = super::openapi::ErrorBody),
        (status = 429, description = "too_many_reports: the token has its most reports queued or running; or rate_limited", body = super::openapi::ErrorBody),
    ))]
async fn request_report(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<ReportIn>,
) -> Result<Response, ApiError> {
    principal.require(Permission::Read)?;
    let kind: ReportKind = body.kind.parse()?;
    let format = match body.format.as_deref() {
        None => Format::Csv,
        Some(f) => Format::parse(f).ok_or_else(|| {
            ApiError::unprocessable("format", format!("format must be csv or json, not {f:?}"))
        })?,
    };
    // Checked now, so a bad request is refused at once instead of failing as a job.
    body.params
        .parse()
        .map_err(|e| ApiError::from(e).in_field("params"))?;
    let report = state
        .reports()
        .request(kind, body.params, format, principal.id, &principal.name)
        .await?;
    let location = format!("/api/v1/reports/{}", report.id);
    let mut r = (StatusCode::ACCEPTED, Json(ReportOut::from(report))).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

#[utoipa::path(get, path = "/api/v1/reports", tag = "reports",
    params(
        ("state" = Option<ReportStateSchema>, Query),
        ("before" = Option<TextFilterSchema>, Query, description = "the `next` of the previous page"),
        ("limit" = Option<PageLimit>, Query, description = "1 to 1000, default 50"),
    ),
    responses(
        (status = 200, body = ReportsOut),
        (status = 422, description = "an invalid query parameter (named in `error.field`)", body = super::openapi::ErrorBody),
    ))]
async fn list_reports(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<ReportsOut>, ApiError> {
    principal.require(Permission::Read)?;
    let st = match q.get("state").map(String::as_str) {
        None => None,
        Some(s) => Some(
            ["queued", "running", "completed", "failed", "cancelled"]
                .iter()
                .position(|x| *x == s)
                .map(|i| {
                    [
                        ReportState::Queued,
                        ReportState::Running,
                        ReportState::Completed,
                        ReportState::Failed,
                        ReportState::Cancelled,
                    ][i]
                })
                .ok_or_else(|| ApiError::unprocessable("state", format!("unknown state {s:?}")))?,
        ),
    };
    let page = limit(&q, 50, 1000)?;
    let items = state
        .reports()
        .list(
            st,
            super::inventory::text_filter(&q, "before")?.as_deref(),
            page,
        )
        .await?;
    let next = super::inventory::next_cursor(&items, page, |r| r.id.clone());
    Ok(Json(ReportsOut {
        items: items.into_iter().map(ReportOut::from).collect(),
        next,
    }))
}

#[utoipa::path(get, path = "/api/v1/reports/{id}", tag = "reports",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = ReportOut),
        (status = 404, description = "not_found: no such report", body = super::openapi::ErrorBody),
    ))]
async fn get_report(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<ReportOut>, ApiError> {
    principal.require(Permission::Read)?;
    let r = state
        .reports()
        .get(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(ReportOut::from(r)))
}

#[utoipa::path(get, path = "/api/v1/reports/{id}/download", tag = "reports",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "the file, streamed", content(
            (String = "text/csv"),
            (Object = "application/json"),
        )),
        (status = 404, description = "not_found: no such report", body = super::openapi::ErrorBody),
        (status = 409, description = "not_ready: not completed (yet)", body = super::openapi::ErrorBody),
    ))]
async fn download_report(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(Permission::Read)?;
    let r = state
        .reports()
        .get(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    if r.state != ReportState::Completed {
        return Err(ApiError::conflict(
            "not_ready",
            format!(
                "report {id} is {}; it can be downloaded once completed",
                r.state.as_str()
            ),
        ));
    }
    let reports = std::sync::Arc::clone(state.reports());
    let stream_id = id.clone();
    let chunks = futures::stream::unfold(0i64, move |seq| {
        let reports = std::sync::Arc::clone(&reports);
        let id = stream_id.clone();
        async move {
            match reports.chunk(&id, seq).await {
                Ok(Some(data)) => Some((Ok::<_, std::io::Error>(data), seq + 1)),
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), i64::MAX)),
            }
        }
    });
    let name = format!(
        "{}-{}.{}",
        r.kind.as_str(),
        r.created_at.format("%Y%m%d-%H%M%S"),
        r.format.as_str()
    );
    let mut resp = Response::new(Body::from_stream(chunks));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(r.format.content_type()),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(bytes) = r.bytes
        && let Ok(v) = HeaderValue::from_str(&bytes.to_string())
    {
        h.insert(header::CONTENT_LENGTH, v);
    }
    Ok(resp)
}

#[utoipa::path(delete, path = "/api/v1/reports/{id}", tag = "reports",
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "cancelled (if it had not finished) or deleted"),
        (status = 403, description = "forbidden: only the token that asked for it, or an admin, may", body = super::openapi::ErrorBody),
        (status = 404, description = "not_found: no such report", body = super::openapi::ErrorBody),
    ))]
async fn delete_report(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(Permission::Read)?;
    let r = state
        .reports()
        .get(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    if r.token_id != principal.id && principal.role != Role::Admin {
        return Err(ApiError::forbidden(
            "only the token that asked for a report, or an admin, may cancel or delete it",
        ));
    }
    state
        .reports()
        .cancel_or_delete(&id, state.jobs())
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(StatusCode::NO_CONTENT)
}
