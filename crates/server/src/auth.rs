//! API authentication: bearer tokens (generated, hashed, stored, cached), roles and their
//! permissions, the per-token rate limit and the bootstrap of the first admin token.
//!
//! A token is `mlk_` followed by the unpadded base64url of 32 random bytes. Only its SHA-256 hex
//! hash is stored: tokens carry 256 bits of entropy, so a fast hash is enough (there is nothing to
//! guess). Lookups go through a short-lived cache keyed by hash; revoking a token removes it from
//! this node's cache at once.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::ApiConfig;
use crate::db::DatabaseExt as _;
use crate::db::{Database, DbError, on_pool};

/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "mlk_";

/// Shortest token accepted (prefix included); generated tokens are 47 characters.
pub const MIN_TOKEN_LEN: usize = 32;

/// Longest token accepted (prefix included).
pub const MAX_TOKEN_LEN: usize = 256;

/// How long a looked-up token is trusted without asking the database again.
const CACHE_TTL: Duration = Duration::from_secs(30);

/// Environment variable holding a token for `serve` to store as the bootstrap admin token.
pub const BOOTSTRAP_ENV: &str = "MALAKA_BOOTSTRAP_TOKEN";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, tokens included.
    Admin,
    /// Read, post movements, manage the catalog.
    Manager,
    /// Read and post movements.
    Clerk,
    /// Read only.
    Viewer,
}

/// One thing a request may need to be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read anything but tokens.
    Read,
    /// Post stock movements.
    PostMovements,
    /// Create and change items, locations and other catalog data.
    ManageCatalog,
    /// Create, list and revoke API tokens.
    ManageTokens,
    /// Acknowledge stock alerts.
    AckAlerts,
    /// Retry and cancel jobs.
    ManageJobs,
    /// See what other systems sent (the inbox) and failed event deliveries, and replay them.
    ManageIntegrations,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Self; 7] = [
        Self::Read,
        Self::PostMovements,
        Self::ManageCatalog,
        Self::ManageTokens,
        Self::AckAlerts,
        Self::ManageJobs,
        Self::ManageIntegrations,
    ];

    /// `read`, `post_movements`, `manage_catalog`, `manage_tokens`, `ack_alerts`,
    /// `manage_jobs` or `manage_integrations`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::PostMovements => "post_movements",
            Self::ManageCatalog => "manage_catalog",
            Self::ManageTokens => "manage_tokens",
            Self::AckAlerts => "ack_alerts",
            Self::ManageJobs => "manage_jobs",
            Self::ManageIntegrations => "manage_integrations",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Self; 4] = [Self::Admin, Self::Manager, Self::Clerk, Self::Viewer];

    /// `admin`, `manager`, `clerk` or `viewer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Manager => "manager",
            Self::Clerk => "clerk",
            Self::Viewer => "viewer",
        }
    }

    /// Whether this role grants `permission`.
    pub fn allows(self, permission: Permission) -> bool {
        use Permission::{
            AckAlerts, ManageCatalog, ManageIntegrations, ManageJobs, PostMovements, Read,
        };
        match self {
            Self::Admin => true,
            Self::Manager => matches!(
                permission,
                Read | PostMovements | ManageCatalog | AckAlerts | ManageJobs | ManageIntegrations
            ),
            Self::Clerk => matches!(permission, Read | PostMovements | AckAlerts),
            Self::Viewer => matches!(permission, Read),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}`: use admin, manager, clerk or viewer")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// Who is calling: the token that authenticated the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id.
    pub id: i64,
    /// The token's name.
    pub name: String,
    /// The token's role.
    pub role: Role,
}

/// A stored token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its role.
    #[schema(value_type = crate::http::schema::RoleSchema)]
    pub role: Role,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last authenticated a request (updated at most about every 30 s).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked; a revoked token authenticates nothing.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A freshly created token: its record and the secret, shown once.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The stored record.
    pub info: TokenInfo,
    /// The secret (`mlk_...`).
    pub token: malaka_db::secret::Secret,
}

/// A new random token: `mlk_` + base64url (no padding) of 32 random bytes.
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The SHA-256 of `token`, in lowercase hex: what is stored and looked up.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Longest token name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// `name` trimmed, when it is an acceptable token name: 1 to 100 characters, not only spaces, no
/// control characters; else what is wrong with it.
///
/// # Errors
/// The reason the name is refused.
pub fn check_name(name: &str) -> Result<&str, String> {
    if name.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("must be at most {MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(name.trim())
}

/// Whether `token` has the shape of a token: the `mlk_` prefix, 32 to 256 characters, and only
/// base64url characters after the prefix. Checked before any lookup.
pub fn is_well_formed(token: &str) -> bool {
    (MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&token.len())
        && token.strip_prefix(TOKEN_PREFIX).is_some_and(|rest| {
            rest.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

type TokenRow = (
    i64,
    String,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

fn info_from_row(row: TokenRow) -> Result<TokenInfo, DbError> {
    let (id, name, role, created_at, last_used_at, revoked_at) = row;
    let role = role.parse().map_err(|e: UnknownRole| {
        DbError::Sqlx(sqlx::Error::Decode(format!("token {id}: {e}").into()))
    })?;
    Ok(TokenInfo {
        id,
        name,
        role,
        created_at,
        last_used_at,
        revoked_at,
    })
}

const TOKEN_COLUMNS: &str = "id, name, role, created_at, last_used_at, revoked_at";

/// Tokens in the database, with a cache of recent lookups.
#[derive(Clone)]
pub struct TokenStore {
    db: Database,
    /// Token hash -> who it is; only valid tokens are cached.
    cache: moka::future::Cache<String, Principal>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("cached", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    /// A store over `db` (already migrated).
    pub fn new(db: Database) -> Self {
        Self {
            db,
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(CACHE_TTL)
                .build(),
        }
    }

    /// Creates a token named `name` with `role` and returns it with its secret.
    ///
    /// # Errors
    /// A database error.
    pub async fn create(&self, name: &str, role: Role) -> Result<NewToken, DbError> {
        let token = generate_token();
        let info = self.insert(name, role, &token).await?;
        Ok(NewToken {
            info,
            token: token.into(),
        })
    }

    /// Stores `token` (a secret chosen by the caller) under `name` with `role`.
    ///
    /// # Errors
    /// A database error, including a token already stored.
    pub async fn insert(&self, name: &str, role: Role, token: &str) -> Result<TokenInfo, DbError> {
        let sql = format!(
            "INSERT INTO malaka_tokens (name, role, hash, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING {TOKEN_COLUMNS}"
        );
        let now = Utc::now();
        let row: TokenRow = on_pool!(&self.db, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(name)
                .bind(role.as_str())
                .bind(hash_token(token))
                .bind(now)
                .fetch_one(pool)
                .await?
        });
        info_from_row(row)
    }

    /// Stores `token` as an admin token named `name` only if no token exists yet. Returns
    /// whether it was stored.
    ///
    /// # Errors
    /// A database error.
    pub async fn insert_first(&self, name: &str, token: &str) -> Result<bool, DbError> {
        const SQL: &str = "INSERT INTO malaka_tokens (name, role, hash, created_at) \
                           SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM malaka_tokens)";
        let now = Utc::now();
        let done = on_pool!(&self.db, pool => {
            sqlx::query(SQL)
                .bind(name)
                .bind(Role::Admin.as_str())
                .bind(hash_token(token))
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// Up to `limit` tokens after id `after`, by id, revoked ones included.
    ///
    /// # Errors
    /// A database error.
    pub async fn page(&self, after: Option<i64>, limit: u32) -> Result<Vec<TokenInfo>, DbError> {
        let rows: Vec<TokenRow> = on_pool!(&self.db, pool => {
            let mut q = sqlx::QueryBuilder::new(format!("SELECT {TOKEN_COLUMNS} FROM malaka_tokens"));
            if let Some(a) = after {
                q.push(" WHERE id > ").push_bind(a);
            }
            q.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit.clamp(1, 1000)));
            q.build_query_as().fetch_all(pool).await?
        });
        rows.into_iter().map(info_from_row).collect()
    }

    /// Every token, oldest first, without secrets.
    ///
    /// # Errors
    /// A database error.
    pub async fn list(&self) -> Result<Vec<TokenInfo>, DbError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM malaka_tokens ORDER BY id");
        let rows: Vec<TokenRow> = on_pool!(&self.db, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?
        });
        rows.into_iter().map(info_from_row).collect()
    }

    /// How many tokens exist, revoked ones included.
    ///
    /// # Errors
    /// A database error.
    pub async fn count(&self) -> Result<i64, DbError> {
        const SQL: &str = "SELECT COUNT(*) FROM malaka_tokens";
        Ok(on_pool!(&self.db, pool => sqlx::query_scalar(SQL).fetch_one(pool).await?))
    }

    /// Revokes token `id` (revoking it again changes nothing) and forgets it in this node's
    /// cache. Returns `false` when no such token exists.
    ///
    /// # Errors
    /// A database error.
    pub async fn revoke(&self, id: i64) -> Result<bool, DbError> {
        const SQL: &str = "UPDATE malaka_tokens SET revoked_at = COALESCE(revoked_at, $2) \
                           WHERE id = $1 RETURNING hash";
        let now = Utc::now();
        let hash: Option<String> = on_pool!(&self.db, pool => {
            sqlx::query_scalar(SQL).bind(id).bind(now).fetch_optional(pool).await?
        });
        match hash {
            Some(hash) => {
                self.cache.invalidate(&hash).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The principal of token `id`, or `None` when it is unknown or revoked (for a WebSocket
    /// ticket, which names the token it was issued to).
    ///
    /// # Errors
    /// A database error.
    pub async fn principal(&self, id: i64) -> Result<Option<Principal>, DbError> {
        const SQL: &str =
            "SELECT id, name, role FROM malaka_tokens WHERE id = $1 AND revoked_at IS NULL";
        let row: Option<(i64, String, String)> = on_pool!(&self.db, pool => {
            sqlx::query_as(SQL).bind(id).fetch_optional(pool).await?
        });
        row.map(|(id, name, role)| {
            let role = role.parse().map_err(|e: UnknownRole| {
                DbError::Sqlx(sqlx::Error::Decode(format!("token {id}: {e}").into()))
            })?;
            Ok(Principal { id, name, role })
        })
        .transpose()
    }

    /// Who `token` is, or `None` when it is malformed, unknown or revoked. A hit in the cache
    /// asks nothing of the database; a miss also records `last_used_at`.
    ///
    /// # Errors
    /// A database error.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Principal>, DbError> {
        if !is_well_formed(token) {
            return Ok(None);
        }
        let hash = hash_token(token);
        if let Some(p) = self.cache.get(&hash).await {
            return Ok(Some(p));
        }
        // Read first: a bad token costs no write (SQLite has one writer at a time).
        const SQL: &str = "SELECT id, name, role FROM malaka_tokens \
                           WHERE hash = $1 AND revoked_at IS NULL";
        const TOUCH: &str = "UPDATE malaka_tokens SET last_used_at = $2 WHERE id = $1";
        let row: Option<(i64, String, String)> = on_pool!(&self.db, pool => {
            sqlx::query_as(SQL).bind(&hash).fetch_optional(pool).await?
        });
        if let Some((id, _, _)) = &row {
            let now = Utc::now();
            let _turn = self.db.write_turn().await;
            on_pool!(&self.db, pool => {
                sqlx::query(TOUCH).bind(id).bind(now).execute(pool).await?;
            });
        }
        let Some((id, name, role)) = row else {
            return Ok(None);
        };
        let role = role.parse().map_err(|e: UnknownRole| {
            DbError::Sqlx(sqlx::Error::Decode(format!("token {id}: {e}").into()))
        })?;
        let principal = Principal { id, name, role };
        self.cache.insert(hash, principal.clone()).await;
        Ok(Some(principal))
    }
}

/// Requests allowed per token per second, with a burst; built from `[api]`.
#[derive(Clone)]
pub struct RateLimit {
    limiter: Option<Arc<DefaultKeyedRateLimiter<i64>>>,
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("enabled", &self.limiter.is_some())
            .finish()
    }
}

impl RateLimit {
    /// `rate_limit_per_second` per token with bursts of `rate_limit_burst` (at least the rate);
    /// a rate of 0 disables the limit.
    pub fn new(config: &ApiConfig) -> Self {
        let limiter = NonZeroU32::new(config.rate_limit_per_second).map(|rate| {
            let burst = NonZeroU32::new(config.rate_limit_burst).unwrap_or(rate);
            Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        Self { limiter }
    }

    /// Counts one request of token `id`: `Err(wait)` when it is over its limit, with how long
    /// until the next request would be let through.
    pub fn check(&self, id: i64) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&id)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets tokens whose buckets are full again (their state is the default one).
    pub fn shrink(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Authentication state shared by every request: the token store, the per-token rate limit,
/// and the per-client limit on failed authentication.
#[derive(Debug, Clone)]
pub struct Auth {
    /// Tokens.
    pub tokens: TokenStore,
    /// The per-token rate limit.
    pub rate_limit: RateLimit,
    /// Failed authentication per client address (`api.failed_auth_*`).
    pub failures: Arc<crate::limit::ClientLimiter>,
    /// Proxies whose `X-Forwarded-For` is believed (`api.trusted_proxies`).
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
}

impl Auth {
    /// Tokens over `db`, limited as `config` says.
    pub fn new(db: Database, config: &ApiConfig) -> Self {
        Self {
            tokens: TokenStore::new(db),
            rate_limit: RateLimit::new(config),
            failures: Arc::new(crate::limit::ClientLimiter::new(
                "auth",
                config.failed_auth_per_minute,
                config.failed_auth_burst,
            )),
            trusted_proxies: config.trusted_proxies.clone().into(),
        }
    }
}

/// What [`bootstrap`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Tokens already existed; nothing was done.
    NotNeeded,
    /// A new admin token was created; its secret must be shown once.
    Created(malaka_db::secret::Secret),
    /// The token from `MALAKA_BOOTSTRAP_TOKEN` was stored.
    FromEnvironment,
}

/// Why the bootstrap token could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// `MALAKA_BOOTSTRAP_TOKEN` is not a well-formed token.
    #[error(
        "{BOOTSTRAP_ENV} must be `mlk_` followed by base64url characters, {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} characters in all"
    )]
    Malformed,
    /// A database error.
    #[error(transparent)]
    Database(#[from] DbError),
}

/// When no token exists, creates an admin token named `bootstrap`: `given` (the value of
/// `MALAKA_BOOTSTRAP_TOKEN`) when set, else a random one that the caller shows once.
///
/// # Errors
/// A malformed `given` token (checked even when tokens exist), or a database error.
pub async fn bootstrap(
    tokens: &TokenStore,
    given: Option<&str>,
) -> Result<Bootstrap, BootstrapError> {
    if let Some(token) = given
        && !is_well_formed(token)
    {
        return Err(BootstrapError::Malformed);
    }
    if tokens.count().await? > 0 {
        return Ok(Bootstrap::NotNeeded);
    }
    let (token, from_env) = match given {
        Some(t) => (t.to_owned(), true),
        None => (generate_token(), false),
    };
    if !tokens.insert_first("bootstrap", &token).await? {
        return Ok(Bootstrap::NotNeeded);
    }
    Ok(if from_env {
        Bootstrap::FromEnvironment
    } else {
        Bootstrap::Created(token.into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_permission_matrix() {
        let expected = [
            (Role::Admin, [true, true, true, true, true, true]),
            (Role::Manager, [true, true, true, false, true, true]),
            (Role::Clerk, [true, true, false, false, true, false]),
            (Role::Viewer, [true, false, false, false, false, false]),
        ];
        for (role, allowed) in expected {
            for (p, want) in Permission::ALL.into_iter().zip(allowed) {
                assert_eq!(role.allows(p), want, "{role} {p}");
            }
        }
    }

    #[test]
    fn roles_parse_and_serialize_in_lowercase() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
            assert_eq!(
                serde_json::to_value(role).unwrap(),
                serde_json::json!(role.as_str())
            );
        }
        assert!("Admin".parse::<Role>().is_err());
        assert!("root".parse::<Role>().is_err());
        assert_eq!(
            serde_json::from_str::<Role>("\"clerk\"").unwrap(),
            Role::Clerk
        );
    }

    #[test]
    fn generated_tokens_are_well_formed_and_distinct() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with("mlk_"));
        assert_eq!(a.len(), 4 + 43);
        assert!(is_well_formed(&a));
        assert!(!a.contains('='));
    }

    #[test]
    fn malformed_tokens_are_recognized() {
        assert!(!is_well_formed(""));
        assert!(!is_well_formed("mlk_short"));
        assert!(!is_well_formed(&format!("xyz_{}", "a".repeat(40))));
        assert!(!is_well_formed(&format!("mlk_{}", "a+b/".repeat(10))));
        assert!(!is_well_formed(&format!("mlk_{}", "a".repeat(300))));
        assert!(is_well_formed(&format!("mlk_{}", "a".repeat(28))));
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn rate_limit_counts_per_token_and_zero_disables() {
        let limit = RateLimit::new(&ApiConfig {
            rate_limit_per_second: 1,
            rate_limit_burst: 2,
            ..ApiConfig::default()
        });
        assert!(limit.check(1).is_ok());
        assert!(limit.check(1).is_ok());
        let wait = limit.check(1).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limit.check(2).is_ok());
        let off = RateLimit::new(&ApiConfig {
            rate_limit_per_second: 0,
            rate_limit_burst: 0,
            ..ApiConfig::default()
        });
        for _ in 0..1000 {
            assert!(off.check(1).is_ok());
        }
    }
}
