//! `Idempotency-Key` on `/api/v1` POST requests: the first request with a key runs and its answer
//! (below 500) is stored; a retry with the same key and the same request gets that answer again
//! with `Idempotent-Replayed: true`. Keys are per token.
//!
//! A key is reserved by inserting a row whose `status` is NULL; a second request while the first
//! runs gets 409 `idempotency_in_progress`; the same key with another method, path or body gets
//! 422 `idempotency_key_reused`. A 5xx answer, or a request that never finishes (timeout, client
//! gone), deletes the reservation so the client may retry. Rows older than 24 h are pruned.

use std::sync::atomic::{AtomicI64, Ordering};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{TimeDelta, Utc};
use sha2::{Digest, Sha256};

use super::auth::{Authenticated, authenticate};
use super::{ApiError, BODY_LIMIT};
use crate::app::AppState;
use crate::auth::{hex, on_pool};
use crate::db::{Database, DbError};

/// The request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Set on a replayed answer.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// How long a key is remembered.
const RETENTION: TimeDelta = TimeDelta::hours(24);

/// A reservation without an answer for this long was left by a process that died mid-request
/// (requests time out after 30 s, and a dropped request releases its key).
const ABANDONED_AFTER: TimeDelta = TimeDelta::seconds(120);

/// Unix seconds of this process's last prune.
static LAST_PRUNE: AtomicI64 = AtomicI64::new(0);

/// The middleware, for `/api/v1` routes.
pub(super) async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST || !req.headers().contains_key(IDEMPOTENCY_KEY) {
        return next.run(req).await;
    }
    match idempotent(&state, req, next).await {
        Ok(r) | Err(r) => r,
    }
}

fn valid_key(value: &HeaderValue) -> Result<String, ApiError> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(ApiError::unprocessable(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

fn request_hash(method: &Method, path: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update(b" ");
    h.update(path.as_bytes());
    h.update(b"\n");
    h.update(body);
    hex(&h.finalize())
}

type Stored = (String, Option<i32>, Option<Vec<u8>>, Option<String>);

async fn idempotent(state: &AppState, req: Request, next: Next) -> Result<Response, Response> {
    let fail = IntoResponse::into_response;
    let key = req
        .headers()
        .get(IDEMPOTENCY_KEY)
        .map(valid_key)
        .transpose()
        .map_err(fail)?
        .unwrap_or_default();
    // Authentication first: keys belong to a token, and no token means 401.
    let principal = authenticate(state, req.headers()).await.map_err(fail)?;
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(Authenticated(principal.clone()));
    let bytes = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "request body is too large",
        )
        .into_response()
    })?;
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    let hash = request_hash(&parts.method, path, &bytes);
    let db = state.db();
    prune_now_and_then(state);

    let reserved = reserve(db, principal.id, &key, &hash).await.map_err(err)?
        || (take_over_abandoned(db, principal.id, &key)
            .await
            .map_err(err)?
            && reserve(db, principal.id, &key, &hash).await.map_err(err)?);
    if !reserved {
        let stored = stored(db, principal.id, &key).await.map_err(err)?;
        return Err(match stored {
            // Gone between our insert and select (its 5xx was just deleted): ask for a retry.
            None => ApiError::conflict(
                "idempotency_in_progress",
                "a request with this Idempotency-Key is being processed; retry",
            )
            .into_response(),
            Some((stored_hash, _, _, _)) if stored_hash != hash => ApiError::unprocessable(
                "Idempotency-Key",
                "this Idempotency-Key was used for a different request",
            )
            .with_code("idempotency_key_reused")
            .into_response(),
            Some((_, None, _, _)) => ApiError::conflict(
                "idempotency_in_progress",
                "a request with this Idempotency-Key is still being processed",
            )
            .into_response(),
            Some((_, Some(status), body, content_type)) => replay(status, body, content_type),
        });
    }

    let mut guard = Reservation {
        db: db.clone(),
        token_id: principal.id,
        key: key.clone(),
        armed: true,
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            return Err(ApiError::internal(format!("reading the answer: {e}")).into_response());
        }
    };
    if parts.status.is_server_error() {
        // The guard deletes the reservation: the client may retry.
        return Ok(Response::from_parts(parts, Body::from(body)));
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match complete(
        db,
        principal.id,
        &key,
        parts.status,
        &body,
        content_type.as_deref(),
    )
    .await
    {
        Ok(()) => guard.armed = false,
        Err(e) => tracing::error!(error = %e, "cannot store an idempotent answer; key released"),
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

fn err(e: DbError) -> Response {
    ApiError::from(e).into_response()
}

fn replay(status: i32, body: Option<Vec<u8>>, content_type: Option<String>) -> Response {
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut r = Response::new(Body::from(Bytes::from(body.unwrap_or_default())));
    *r.status_mut() = status;
    if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    r.headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    r
}

/// Inserts the reservation; `false` when the key already has a row.
async fn reserve(db: &Database, token_id: i64, key: &str, hash: &str) -> Result<bool, DbError> {
    const SQL: &str = "INSERT INTO malaka_idempotency (token_id, key, request_hash, created_at) \
                       VALUES ($1, $2, $3, $4) ON CONFLICT (token_id, key) DO NOTHING";
    let now = Utc::now();
    let n = on_pool!(db, pool => {
        sqlx::query(SQL)
            .bind(token_id)
            .bind(key)
            .bind(hash)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(n == 1)
}

/// Deletes the key's reservation when it has had no answer for longer than any request may run
/// (its process died mid-request); `true` when one was deleted.
async fn take_over_abandoned(db: &Database, token_id: i64, key: &str) -> Result<bool, DbError> {
    const SQL: &str = "DELETE FROM malaka_idempotency \
                       WHERE token_id = $1 AND key = $2 AND status IS NULL AND created_at < $3";
    let cutoff = Utc::now() - ABANDONED_AFTER;
    let n = on_pool!(db, pool => {
        sqlx::query(SQL)
            .bind(token_id)
            .bind(key)
            .bind(cutoff)
            .execute(pool)
            .await?
            .rows_affected()
    });
    if n > 0 {
        tracing::warn!(
            token_id,
            "taking over an abandoned Idempotency-Key reservation"
        );
    }
    Ok(n > 0)
}

async fn stored(db: &Database, token_id: i64, key: &str) -> Result<Option<Stored>, DbError> {
    const SQL: &str = "SELECT request_hash, status, body, content_type FROM malaka_idempotency \
                       WHERE token_id = $1 AND key = $2";
    Ok(on_pool!(db, pool => {
        sqlx::query_as(SQL).bind(token_id).bind(key).fetch_optional(pool).await?
    }))
}

async fn complete(
    db: &Database,
    token_id: i64,
    key: &str,
    status: StatusCode,
    body: &[u8],
    content_type: Option<&str>,
) -> Result<(), DbError> {
    const SQL: &str = "UPDATE malaka_idempotency SET status = $3, body = $4, content_type = $5 \
                       WHERE token_id = $1 AND key = $2";
    on_pool!(db, pool => {
        sqlx::query(SQL)
            .bind(token_id)
            .bind(key)
            .bind(i32::from(status.as_u16()))
            .bind(body)
            .bind(content_type)
            .execute(pool)
            .await?;
    });
    Ok(())
}

async fn release(db: &Database, token_id: i64, key: &str) -> Result<(), DbError> {
    const SQL: &str =
        "DELETE FROM malaka_idempotency WHERE token_id = $1 AND key = $2 AND status IS NULL";
    on_pool!(db, pool => {
        sqlx::query(SQL).bind(token_id).bind(key).execute(pool).await?;
    });
    Ok(())
}

/// Deletes keys older than 24 h, at most once an hour per process, in the background (checked on
/// each keyed request).
fn prune_now_and_then(state: &AppState) {
    let now = Utc::now().timestamp();
    let last = LAST_PRUNE.load(Ordering::Relaxed);
    if now - last < 3600
        || LAST_PRUNE
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    // Also forget the rate-limit state of tokens that have been idle.
    state.auth().rate_limit.shrink();
    let db = state.db().clone();
    tokio::spawn(async move {
        if let Err(e) = prune(&db).await {
            tracing::warn!(error = %e, "cannot prune idempotency keys");
        }
    });
}

/// Deletes keys older than 24 h; returns how many.
///
/// # Errors
/// A database error.
pub async fn prune(db: &Database) -> Result<u64, DbError> {
    const SQL: &str = "DELETE FROM malaka_idempotency WHERE created_at < $1";
    let cutoff = Utc::now() - RETENTION;
    Ok(on_pool!(db, pool => {
        sqlx::query(SQL).bind(cutoff).execute(pool).await?.rows_affected()
    }))
}

/// A reservation that is released (deleted) when dropped still armed: on a 5xx, or when the
/// request's future is dropped (timeout, client gone) before its answer was stored.
struct Reservation {
    db: Database,
    token_id: i64,
    key: String,
    armed: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (db, token_id, key) = (
            self.db.clone(),
            self.token_id,
            std::mem::take(&mut self.key),
        );
        handle.spawn(async move {
            if let Err(e) = release(&db, token_id, &key).await {
                tracing::warn!(error = %e, "cannot release an idempotency key");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii() {
        assert!(valid_key(&HeaderValue::from_static("abc-123_XYZ")).is_ok());
        assert!(valid_key(&HeaderValue::from_static("")).is_err());
        assert!(valid_key(&HeaderValue::from_static("a b")).is_err());
        let long = "k".repeat(256);
        assert!(valid_key(&HeaderValue::from_str(&long).unwrap()).is_err());
        let e = valid_key(&HeaderValue::from_static("")).unwrap_err();
        assert_eq!(e.field(), Some("Idempotency-Key"));
    }

    #[test]
    fn the_hash_covers_method_path_and_body() {
        let a = request_hash(&Method::POST, "/tokens", b"{}");
        assert_eq!(a.len(), 64);
        assert_ne!(a, request_hash(&Method::POST, "/tokens", b"{ }"));
        assert_ne!(a, request_hash(&Method::POST, "/tokenz", b"{}"));
        assert_ne!(a, request_hash(&Method::PUT, "/tokens", b"{}"));
    }
}
