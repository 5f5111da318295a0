//! `/api/v1/tokens`: create (the secret is shown once), list (no secrets) and revoke API tokens.
//! Admin only (`manage_tokens`). And `/api/v1/me`: who the caller is.

use axum::Router;
use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::ApiError;
use super::json::Json;
#[allow(unused_imports)] // names used in the `utoipa` attributes only
use super::schema::{IdCursorSchema, PageLimit, PermissionSchema, RoleSchema, TokenNameSchema};
use crate::app::AppState;
use crate::auth::{Permission, Principal, Role, TokenInfo};

/// The token part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(paths(create, list, revoke, me))]
pub(super) struct ApiDoc;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/tokens", get(list).post(create))
        .route("/tokens/{id}", delete(revoke))
        .route("/me", get(me))
}

/// The caller's token.
#[derive(Debug, Serialize, ToSchema)]
struct MeOut {
    /// Token id.
    id: i64,
    /// Token name.
    name: String,
    #[schema(value_type = RoleSchema)]
    role: &'static str,
    /// What the role may do.
    #[schema(value_type = Vec<PermissionSchema>)]
    permissions: Vec<&'static str>,
}

/// Who the caller is: the token's id, name, role and permissions.
#[utoipa::path(get, path = "/api/v1/me", tag = "tokens",
    responses(
        (status = 200, body = MeOut),
    ))]
async fn me(principal: Principal) -> Json<MeOut> {
    Json(MeOut {
        id: principal.id,
        name: principal.name.clone(),
        role: principal.role.as_str(),
        permissions: crate::auth::Permission::ALL
            .into_iter()
            .filter(|p| principal.role.allows(*p))
            .map(crate::auth::Permission::as_str)
            .collect(),
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    #[schema(value_type = TokenNameSchema)]
    name: String,
    #[schema(value_type = RoleSchema)]
    role: String,
}

#[derive(Debug, Serialize, ToSchema)]
struct Created {
    id: i64,
    name: String,
    #[schema(value_type = RoleSchema)]
    role: Role,
    created_at: DateTime<Utc>,
    /// The secret: shown in this answer only (a replay of the request with its
    /// `Idempotency-Key` answers `null`: the secret is stored nowhere).
    token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct TokenList {
    /// Never the secret.
    tokens: Vec<TokenInfo>,
    /// Pass as `after` for the next page; null on the last.
    next: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateToken,
    responses(
        (status = 201, description = "the token, shown once", body = Created),
    ))]
async fn create(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Json<CreateToken>, ApiError>,
) -> Result<Response, ApiError> {
    principal.require(Permission::ManageTokens)?;
    let Json(body) = body?;
    let name =
        crate::auth::check_name(&body.name).map_err(|m| ApiError::unprocessable("name", m))?;
    let role: Role = body
        .role
        .parse()
        .map_err(|e: crate::auth::UnknownRole| ApiError::unprocessable("role", e.to_string()))?;
    let new = state.auth().tokens.create(name, role).await?;
    tracing::info!(
        token_id = new.info.id,
        name = %new.info.name,
        role = %role,
        by = principal.id,
        "token created"
    );
    let mut created = Created {
        id: new.info.id,
        name: new.info.name,
        role: new.info.role,
        created_at: new.info.created_at,
        token: None,
    };
    let without_secret = serde_json::to_vec(&created).map_err(ApiError::internal)?;
    created.token = Some(new.token.expose().to_owned());
    let mut response = (StatusCode::CREATED, Json(created)).into_response();
    response
        .extensions_mut()
        .insert(super::idempotency::RecordInstead(without_secret.into()));
    Ok(response)
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    params(
        ("after" = Option<IdCursorSchema>, Query, description = "the `next` of the previous page"),
        ("limit" = Option<PageLimit>, Query, description = "1 to 1000, default 100"),
    ),
    responses(
        (status = 200, body = TokenList),
        (status = 422, description = "an invalid query parameter (named in `error.field`)", body = super::openapi::ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<TokenList>, ApiError> {
    principal.require(Permission::ManageTokens)?;
    let limit = super::inventory::limit(&q, 100, 1000)?;
    let after = super::inventory::id_cursor(&q, "after")?;
    let tokens = state.auth().tokens.page(after, limit).await?;
    let next = super::inventory::next_cursor(&tokens, limit, |t| t.id.to_string());
    Ok(Json(TokenList { tokens, next }))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = i64, Path)),
    responses(
        (status = 204, description = "revoked"),
        (status = 404, description = "not_found: no such token", body = super::openapi::ErrorBody),
    ))]
async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(Permission::ManageTokens)?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("no token {id}")))?;
    if state.auth().tokens.revoke(id).await? {
        tracing::info!(token_id = id, by = principal.id, "token revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no token {id}")))
    }
}
