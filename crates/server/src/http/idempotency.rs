//! `Idempotency-Key` on `/api/v1` POST requests: exactly once, even through faults.
//!
//! The answer to a keyed request is recorded in `malaka_idempotency` under (token, key) with a
//! hash of the request (method, path, body). Where the request has an effect, the record is
//! written *inside the effect's own transaction*: a posting carries an [`IdempotencyKey::hook`]
//! (a `PostingHook`; on SQLite's group committer a `BatchedHook`, one insert per group).
//! Whatever happens to the HTTP exchange afterwards (the client hangs up, the server's timeout
//! fires, the process is killed between commit and answer) the effect and its answer commit or
//! vanish together, and a retry with the same key finds the answer and gets it back with
//! `Idempotent-Replayed: true`. Two requests racing with one key are settled by the table's
//! primary key: the loser's transaction rolls back and it replays the winner's answer.
//!
//! Answers without a transactional effect (a refusal, a 4xx) and POSTs whose handlers do not
//! record in their transaction yet are recorded right after the handler answers. 5xx answers are
//! never recorded: nothing was committed, so the client may retry. The same key with another
//! request is 422 `idempotency_key_reused`; a request while another with the same key is in
//! flight on this node is 409 `idempotency_in_progress`. Records older than 24 h are pruned.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{TimeDelta, Utc};
use malaka_inventory::{BatchRow, BatchedHook, InventoryError, Movement, PostingHook};
use sha2::{Digest, Sha256};

use super::auth::{Authenticated, authenticate};
use super::{ApiError, BODY_LIMIT};
use crate::app::AppState;
use crate::db::on_pool;
use crate::db::{Database, DbError};

/// The request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Set on a replayed answer.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The code of the refusal a recording hook returns when the key already has an answer.
pub const ALREADY_ANSWERED: &str = "idempotency_replay";

/// Routes (under `/api/v1`) whose handlers record a keyed answer with [`IdempotencyKey::hook`]
/// in the transaction of their effect.
const RECORDED_IN_TRANSACTION: [&str; 2] = ["/movements", "/movements/batch"];

/// How long a key is remembered.
const RETENTION: TimeDelta = TimeDelta::hours(24);

/// Unix seconds of this process's last prune.
static LAST_PRUNE: AtomicI64 = AtomicI64::new(0);

/// Keys with a request in flight on one node (each node's `AppState` has its own).
#[derive(Debug, Clone, Default)]
pub struct InFlightKeys(Arc<Mutex<HashSet<(i64, String)>>>);

const INSERT: &str = "INSERT INTO malaka_idempotency \
     (token_id, key, request_hash, status, body, content_type, created_at) \
     VALUES ($1, $2, $3, $4, $5, 'application/json', $6) ON CONFLICT (token_id, key) DO NOTHING";

/// A keyed request, as its handler sees it (in the request's extensions).
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    token_id: i64,
    key: String,
    hash: String,
    /// Set once the answer is recorded by the effect's transaction.
    recorded: Arc<AtomicBool>,
}

/// Renders the answer to store from what a posting posted.
type Render = dyn Fn(&[Movement]) -> Result<Vec<u8>, InventoryError> + Send + Sync;

/// Records a posting's answer in the posting's transaction.
struct Record {
    key: IdempotencyKey,
    status: StatusCode,
    render: Box<Render>,
}

impl IdempotencyKey {
    /// A hook that records `render(posted)` with `status` as this key's answer inside the
    /// posting's transaction. When the key already has an answer, the posting is rolled back
    /// with `Conflict` `idempotency_replay`, which the middleware turns into a replay.
    pub fn hook(
        &self,
        status: StatusCode,
        render: impl Fn(&[Movement]) -> Result<Vec<u8>, InventoryError> + Send + Sync + 'static,
    ) -> Arc<dyn PostingHook> {
        Arc::new(Record {
            key: self.clone(),
            status,
            render: Box::new(render),
        })
    }

    fn recorded(&self, n: u64) -> Result<(), InventoryError> {
        if n == 1 {
            self.recorded.store(true, Ordering::Release);
            Ok(())
        } else {
            Err(already_answered())
        }
    }
}

/// One posting's record, prepared for its group's batch (SQLite).
struct Row {
    key: IdempotencyKey,
    status: i32,
    body: Vec<u8>,
}

#[async_trait::async_trait]
impl BatchedHook for Record {
    fn kind(&self) -> &'static str {
        "malaka_idempotency"
    }

    fn prepare(&self, posted: &[Movement]) -> Result<BatchRow, InventoryError> {
        Ok(Box::new(Row {
            key: self.key.clone(),
            status: i32::from(self.status.as_u16()),
            body: (self.render)(posted)?,
        }))
    }

    /// One `INSERT` for the group; a key already recorded (or twice in the group) refuses its
    /// posting, which is then replayed.
    async fn write_batch(
        &self,
        conn: &mut sqlx::SqliteConnection,
        rows: Vec<BatchRow>,
    ) -> Result<Vec<(usize, InventoryError)>, InventoryError> {
        let rows: Vec<Row> = rows
            .into_iter()
            .filter_map(|r| r.downcast::<Row>().ok().map(|r| *r))
            .collect();
        let mut seen = HashSet::new();
        let mut refused = Vec::new();
        let mut fresh: Vec<(usize, &Row)> = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            if seen.insert((r.key.token_id, r.key.key.as_str())) {
                fresh.push((i, r));
            } else {
                refused.push((i, already_answered()));
            }
        }
        if fresh.is_empty() {
            return Ok(refused);
        }
        let now = Utc::now();
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO malaka_idempotency \
             (token_id, key, request_hash, status, body, content_type, created_at) ",
        );
        q.push_values(&fresh, |mut b, (_, r)| {
            b.push_bind(r.key.token_id)
                .push_bind(r.key.key.as_str())
                .push_bind(r.key.hash.as_str())
                .push_bind(r.status)
                .push_bind(r.body.as_slice())
                .push_bind("application/json")
                .push_bind(now);
        });
        q.push(" ON CONFLICT (token_id, key) DO NOTHING RETURNING token_id, key");
        let inserted: Vec<(i64, String)> = q.build_query_as().fetch_all(conn).await?;
        let inserted: HashSet<(i64, &str)> =
            inserted.iter().map(|(t, k)| (*t, k.as_str())).collect();
        for (i, r) in fresh {
            if inserted.contains(&(r.key.token_id, r.key.key.as_str())) {
                r.key.recorded.store(true, Ordering::Release);
            } else {
                refused.push((i, already_answered()));
            }
        }
        Ok(refused)
    }
}

fn already_answered() -> InventoryError {
    InventoryError::Conflict {
        code: ALREADY_ANSWERED,
        message: "this Idempotency-Key already has an answer".into(),
    }
}

#[async_trait::async_trait]
impl PostingHook for Record {
    fn batched(&self) -> Option<&dyn BatchedHook> {
        Some(self)
    }

    async fn sqlite(
        &self,
        conn: &mut sqlx::SqliteConnection,
        posted: &[Movement],
    ) -> Result<(), InventoryError> {
        let body = (self.render)(posted)?;
        let k = &self.key;
        let n = sqlx::query(INSERT)
            .bind(k.token_id)
            .bind(&k.key)
            .bind(&k.hash)
            .bind(i32::from(self.status.as_u16()))
            .bind(body)
            .bind(Utc::now())
            .execute(conn)
            .await?
            .rows_affected();
        k.recorded(n)
    }

    async fn postgres(
        &self,
        conn: &mut sqlx::PgConnection,
        posted: &[Movement],
    ) -> Result<(), InventoryError> {
        let body = (self.render)(posted)?;
        let k = &self.key;
        let n = sqlx::query(INSERT)
            .bind(k.token_id)
            .bind(&k.key)
            .bind(&k.hash)
            .bind(i32::from(self.status.as_u16()))
            .bind(body)
            .bind(Utc::now())
            .execute(conn)
            .await?
            .rows_affected();
        k.recorded(n)
    }
}

/// Marks a response whose handler found the key already answered: replay the stored answer.
#[derive(Debug, Clone, Copy)]
pub struct ReplayStored;

/// Put on a response whose body holds a secret shown once (a new token): a replay answers this
/// body instead, and only it is stored.
#[derive(Debug, Clone)]
pub struct RecordInstead(pub axum::body::Bytes);

/// The middleware, for `/api/v1` routes.
pub(super) async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST || !req.headers().contains_key(IDEMPOTENCY_KEY) {
        return next.run(req).await;
    }
    match idempotent(&state, req, next).await {
        Ok(r) | Err(r) => r,
    }
}

/// Longest `Idempotency-Key`.
pub(crate) const MAX_KEY: usize = 255;

fn valid_key(value: &HeaderValue) -> Result<String, ApiError> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_KEY || !bytes.iter().all(|b| (0x21..=0x7e).contains(b))
    {
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
    hex::encode(h.finalize())
}

type Stored = (String, Option<i32>, Option<Vec<u8>>, Option<String>);

/// A key with a request in flight on this node; released when dropped (the request ended, or
/// its future was dropped).
struct InFlight(InFlightKeys, (i64, String));

impl InFlight {
    fn take(keys: &InFlightKeys, token_id: i64, key: &str) -> Option<Self> {
        let k = (token_id, key.to_owned());
        let inserted = keys
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(k.clone());
        // Built only once the lock is released: dropping one takes the lock.
        inserted.then(|| Self(keys.clone(), k))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.1);
    }
}

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
    let client = super::auth::client_of(req.extensions());
    let principal = authenticate(state, req.headers(), client)
        .await
        .map_err(fail)?;
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

    // Routes whose handlers record the answer in their own transaction find a recorded answer
    // there (the insert conflicts, the effect rolls back, and it is replayed below): a new key,
    // the common case, costs no lookup.
    let records_in_tx = RECORDED_IN_TRANSACTION.contains(&parts.uri.path());
    if !records_in_tx && let Some(answer) = answered(db, principal.id, &key, &hash).await? {
        return Err(answer);
    }
    let Some(_in_flight) = InFlight::take(state.in_flight_keys(), principal.id, &key) else {
        return Err(ApiError::conflict(
            "idempotency_in_progress",
            "a request with this Idempotency-Key is still being processed; retry",
        )
        .into_response());
    };
    let idem = IdempotencyKey {
        token_id: principal.id,
        key: key.clone(),
        hash: hash.clone(),
        recorded: Arc::new(AtomicBool::new(false)),
    };
    parts.extensions.insert(idem.clone());
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if response.extensions().get::<ReplayStored>().is_some() {
        // Another request with this key won the race; its answer is the answer.
        return Err(answered(db, principal.id, &key, &hash)
            .await?
            .unwrap_or_else(|| {
                ApiError::conflict(
                    "idempotency_in_progress",
                    "a request with this Idempotency-Key is still being processed; retry",
                )
                .into_response()
            }));
    }
    if response.status().is_server_error() || idem.recorded.load(Ordering::Acquire) {
        // Nothing committed (the client may retry), or recorded with the effect already.
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, BODY_LIMIT * 64).await {
        Ok(b) => b,
        Err(e) => {
            return Err(ApiError::internal(format!("reading the answer: {e}")).into_response());
        }
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let recorded = parts
        .extensions
        .get::<RecordInstead>()
        .map_or_else(|| body.clone(), |r| r.0.clone());
    match record(db, &idem, parts.status, &recorded, content_type.as_deref()).await {
        Ok(true) => {}
        Ok(false) => {
            // Recorded meanwhile by a request on another node: that answer stands.
            if let Some(answer) = answered(db, principal.id, &key, &hash).await? {
                return Err(answer);
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot record an idempotent answer"),
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

/// The recorded answer for the key, replayed; 422 when the key was used for another request;
/// `None` when there is none.
async fn answered(
    db: &Database,
    token_id: i64,
    key: &str,
    hash: &str,
) -> Result<Option<Response>, Response> {
    let stored = stored(db, token_id, key).await.map_err(err)?;
    Ok(match stored {
        None => None,
        Some((stored_hash, _, _, _)) if stored_hash != hash => Some(
            ApiError::unprocessable(
                "Idempotency-Key",
                "this Idempotency-Key was used for a different request",
            )
            .with_code("idempotency_key_reused")
            .into_response(),
        ),
        Some((_, None, _, _)) => {
            // A reservation left by an older version (which reserved keys before running):
            // nothing was recorded with an effect, so the request may run.
            release_legacy(db, token_id, key).await.map_err(err)?;
            None
        }
        Some((_, Some(status), body, content_type)) => Some(replay(status, body, content_type)),
    })
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

async fn stored(db: &Database, token_id: i64, key: &str) -> Result<Option<Stored>, DbError> {
    const SQL: &str = "SELECT request_hash, status, body, content_type FROM malaka_idempotency \
                       WHERE token_id = $1 AND key = $2";
    Ok(on_pool!(db, pool => {
        sqlx::query_as(SQL).bind(token_id).bind(key).fetch_optional(pool).await?
    }))
}

/// Records an answer that had no transaction of its own to ride in; `false` when the key was
/// answered meanwhile.
async fn record(
    db: &Database,
    k: &IdempotencyKey,
    status: StatusCode,
    body: &[u8],
    content_type: Option<&str>,
) -> Result<bool, DbError> {
    const SQL: &str = "INSERT INTO malaka_idempotency \
         (token_id, key, request_hash, status, body, content_type, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (token_id, key) DO NOTHING";
    let now = Utc::now();
    let n = on_pool!(db, pool => {
        sqlx::query(SQL)
            .bind(k.token_id)
            .bind(&k.key)
            .bind(&k.hash)
            .bind(i32::from(status.as_u16()))
            .bind(body)
            .bind(content_type)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(n == 1)
}

async fn release_legacy(db: &Database, token_id: i64, key: &str) -> Result<(), DbError> {
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

    #[test]
    fn in_flight_keys_are_released_when_dropped() {
        let keys = InFlightKeys::default();
        let a = InFlight::take(&keys, 7, "k").unwrap();
        assert!(InFlight::take(&keys, 7, "k").is_none());
        assert!(InFlight::take(&keys, 8, "k").is_some());
        assert!(InFlight::take(&InFlightKeys::default(), 7, "k").is_some());
        drop(a);
        assert!(InFlight::take(&keys, 7, "k").is_some());
    }
}
