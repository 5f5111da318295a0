//! Authentication at the HTTP edge: the [`Principal`] extractor (a bearer token, looked up through
//! the token cache, then counted against the token's rate limit) and permission checks.
//!
//! Every `/api/v1` handler takes a `Principal`; a missing, malformed, unknown or revoked token is
//! 401 `unauthorized` with `WWW-Authenticate: Bearer` and counts against the client address's
//! allowance of failures (a client past it is answered 429 before anything else is done), a
//! token over its limit is 429 `rate_limited` with `Retry-After`, and [`Principal::require`]
//! answers 403 `forbidden`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use super::ApiError;
use super::client::ClientAddr;
use crate::app::AppState;
pub use crate::auth::{Permission, Principal};

/// The principal already resolved for this request (by the idempotency middleware), so the
/// request is authenticated and counted once.
#[derive(Debug, Clone)]
pub(super) struct Authenticated(pub(super) Principal);

/// The bearer token in `headers`.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer <token>` header"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("malformed Authorization header"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::unauthorized(
            "the Authorization scheme must be Bearer",
        ));
    }
    Ok(token.trim())
}

/// Who sent `headers` from `client`: a client over its allowance of failures is refused first
/// (429, before any hashing or database work); then the token is checked (401; counted as a
/// failure of the client when one was presented), then counted against its rate limit (429).
///
/// # Errors
/// 401, 429, or 500 when the database fails.
pub(super) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    client: ClientAddr,
) -> Result<Principal, ApiError> {
    let failures = &state.auth().failures;
    failures.check(client.0).map_err(ApiError::client_limited)?;
    // No credentials at all cost nothing and guess nothing: 401, not counted. Credentials that
    // are malformed or wrong count against the client.
    let presented = headers.contains_key(header::AUTHORIZATION);
    let token = bearer(headers).inspect_err(|_| {
        if presented {
            failures.failed(client.0);
        }
    })?;
    authenticate_token(state, token, client).await
}

/// Who holds `token`, asked by `client`: as [`authenticate`].
///
/// # Errors
/// 401, 429, or 500 when the database fails.
pub(super) async fn authenticate_token(
    state: &AppState,
    token: &str,
    client: ClientAddr,
) -> Result<Principal, ApiError> {
    let auth = state.auth();
    auth.failures
        .check(client.0)
        .map_err(ApiError::client_limited)?;
    let Some(principal) = auth.tokens.authenticate(token).await? else {
        auth.failures.failed(client.0);
        return Err(ApiError::unauthorized("invalid or revoked token"));
    };
    auth.rate_limit
        .check(principal.id)
        .map_err(ApiError::rate_limited)?;
    Ok(principal)
}

/// The client address the middleware recorded (none in a bare router).
pub(super) fn client_of(extensions: &axum::http::Extensions) -> ClientAddr {
    extensions
        .get::<ClientAddr>()
        .copied()
        .unwrap_or(ClientAddr(None))
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(Authenticated(p)) = parts.extensions.get::<Authenticated>() {
            return Ok(p.clone());
        }
        let client = client_of(&parts.extensions);
        let principal = authenticate(state, &parts.headers, client).await?;
        parts.extensions.insert(Authenticated(principal.clone()));
        Ok(principal)
    }
}

impl Principal {
    /// `Ok` when this token's role grants `permission`, else 403 `forbidden` naming it.
    ///
    /// # Errors
    /// 403.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.role.allows(permission) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "the {} role lacks the `{permission}` permission",
                self.role
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn bearer_header_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h).unwrap_err().code(), "unauthorized");
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(bearer(&h).is_err());
        h.insert(header::AUTHORIZATION, "Bearer".parse().unwrap());
        assert!(bearer(&h).is_err());
        h.insert(header::AUTHORIZATION, "bearer mlk_x".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), "mlk_x");
    }

    #[test]
    fn require_names_the_permission() {
        let p = Principal {
            id: 1,
            name: "v".into(),
            role: Role::Viewer,
        };
        assert!(p.require(Permission::Read).is_ok());
        let e = p.require(Permission::ManageTokens).unwrap_err();
        assert_eq!(e.code(), "forbidden");
        assert_eq!(e.status(), axum::http::StatusCode::FORBIDDEN);
    }
}
