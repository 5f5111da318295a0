//! `/api/v1/jobs`: the durable job queue seen from the dashboard: jobs by queue and state,
//! counts per queue, and retry or cancel (admins and managers).

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use malaka_jobs::{JobRecord, JobState, JobsError, ListFilter};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::ApiError;
use super::auth::{Permission, Principal};
use super::inventory::limit;
use super::json::Json;
#[allow(unused_imports)] // names used in the `utoipa` attributes only
use super::schema::{
    JobStateSchema, JobStatesSchema, PageLimit, PositiveIdSchema, TextFilterSchema,
};
use crate::app::AppState;

#[derive(OpenApi)]
#[openapi(paths(list_jobs, job_stats, get_job, retry_job, cancel_job))]
pub(super) struct ApiDoc;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/jobs", get(list_jobs))
        .route("/jobs/stats", get(job_stats))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/retry", post(retry_job))
        .route("/jobs/{id}/cancel", post(cancel_job))
}

impl From<JobsError> for ApiError {
    fn from(e: JobsError) -> Self {
        match e {
            JobsError::NotFound(_) => ApiError::not_found(e.to_string()),
            JobsError::WrongState { .. } => ApiError::conflict("wrong_state", e.to_string()),
            JobsError::Invalid(m) => ApiError::unprocessable("job", m),
            other => ApiError::internal(other),
        }
    }
}

/// One failed attempt.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AttemptOut {
    attempt: i32,
    at: DateTime<Utc>,
    error: String,
}

/// A job.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct JobOut {
    id: i64,
    queue: String,
    kind: String,
    #[schema(value_type = JobStateSchema)]
    state: &'static str,
    priority: i16,
    attempt: i32,
    max_attempts: i32,
    run_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    payload: serde_json::Value,
    tags: Vec<String>,
    errors: Vec<AttemptOut>,
    cancel_requested: bool,
    created_at: DateTime<Utc>,
    attempted_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    lease_expires_at: Option<DateTime<Utc>>,
    locked_by: Option<String>,
}

impl From<JobRecord> for JobOut {
    fn from(j: JobRecord) -> Self {
        Self {
            id: j.id,
            queue: j.queue,
            kind: j.kind,
            state: j.state.as_str(),
            priority: j.priority,
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            run_at: j.run_at,
            payload: j.payload,
            tags: j.tags,
            errors: j
                .errors
                .into_iter()
                .map(|e| AttemptOut {
                    attempt: e.attempt,
                    at: e.at,
                    error: e.error,
                })
                .collect(),
            cancel_requested: j.cancel_requested,
            created_at: j.created_at,
            attempted_at: j.attempted_at,
            finished_at: j.finished_at,
            lease_expires_at: j.lease_expires_at,
            locked_by: j.locked_by,
        }
    }
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct JobsOut {
    items: Vec<JobOut>,
    /// Pass as `before` for the next page.
    next: Option<String>,
}

fn job_id(s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>()
        .map_err(|_| ApiError::not_found(format!("job {s:?} not found")))
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs",
    params(
        ("queue" = Option<TextFilterSchema>, Query),
        ("state" = Option<JobStatesSchema>, Query, description = "one or more states, comma-separated"),
        ("kind" = Option<TextFilterSchema>, Query),
        ("before" = Option<PositiveIdSchema>, Query, description = "the `next` of the previous page"),
        ("limit" = Option<PageLimit>, Query, description = "1 to 1000, default 50"),
    ),
    responses(
        (status = 200, body = JobsOut),
        (status = 422, description = "an invalid query parameter (named in `error.field`)", body = super::openapi::ErrorBody),
    ))]
async fn list_jobs(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<JobsOut>, ApiError> {
    principal.require(Permission::Read)?;
    let states = q
        .get("state")
        .map(|s| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(|x| {
                    x.parse::<JobState>()
                        .map_err(|e| ApiError::unprocessable("state", e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let before_id = q
        .get("before")
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::unprocessable("before", "before is not valid"))
        })
        .transpose()?;
    let page = limit(&q, 50, 1000)?;
    let mut filter = ListFilter::default();
    filter.queue = super::inventory::text_filter(&q, "queue")?;
    filter.kind = super::inventory::text_filter(&q, "kind")?;
    filter.states = states;
    filter.before_id = before_id;
    filter.limit = Some(page);
    let jobs = state.jobs().list(&filter).await?;
    let next = super::inventory::next_cursor(&jobs, page, |j| j.id.to_string());
    Ok(Json(JobsOut {
        items: jobs.into_iter().map(JobOut::from).collect(),
        next,
    }))
}

#[utoipa::path(get, path = "/api/v1/jobs/stats", tag = "jobs",
    responses(
        (status = 200, description = "`{\"queues\": [{\"queue\", \"counts\": {state: n}, \"oldest_available_seconds\"}]}`", body = Object),
    ))]
async fn job_stats(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<serde_json::Value>, ApiError> {
    principal.require(Permission::Read)?;
    let stats = state.jobs().stats().await?;
    Ok(Json(crate::live::jobs_snapshot(&stats)))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = i64, Path)),
    responses(
        (status = 200, body = JobOut),
        (status = 404, description = "not_found: no such job", body = super::openapi::ErrorBody),
    ))]
async fn get_job(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<JobOut>, ApiError> {
    principal.require(Permission::Read)?;
    let id = job_id(&id)?;
    let job = state
        .jobs()
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id} not found")))?;
    Ok(Json(JobOut::from(job)))
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "jobs",
    params(("id" = i64, Path)),
    responses(
        (status = 200, body = JobOut),
        (status = 404, description = "not_found: no such job", body = super::openapi::ErrorBody),
        (status = 409, description = "wrong_state: the job cannot be retried in its state", body = super::openapi::ErrorBody),
    ))]
async fn retry_job(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<JobOut>, ApiError> {
    principal.require(Permission::ManageJobs)?;
    let job = state.jobs().retry(job_id(&id)?).await?;
    tracing::info!(job = job.id, by = %principal.name, "job retried");
    Ok(Json(JobOut::from(job)))
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = i64, Path)),
    responses(
        (status = 200, body = JobOut),
        (status = 404, description = "not_found: no such job", body = super::openapi::ErrorBody),
        (status = 409, description = "wrong_state: the job is already finished", body = super::openapi::ErrorBody),
    ))]
async fn cancel_job(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<JobOut>, ApiError> {
    principal.require(Permission::ManageJobs)?;
    let job = state.jobs().cancel(job_id(&id)?).await?;
    tracing::info!(job = job.id, by = %principal.name, "job cancelled");
    Ok(Json(JobOut::from(job)))
}
