//! Notification rules: a channel (an email address, or a webhook URL and its secret) and the
//! filters that decide which events it gets. Parsed once at the edge (`NewRule::parse`).

use chrono::{DateTime, Utc};
use malaka_inventory::AlertLevel;
use serde::Serialize;

use malaka_db::{Database, Secret, on_pool};

/// Event types a rule can ask for.
pub const EVENTS: [&str; 2] = ["stock_alert", "report_ready"];

// The limits `NewRule::parse` applies, for the API's schema.

/// Longest rule name, in characters (trimmed; not only spaces; no control characters).
pub const RULE_NAME_MAX: usize = 100;
/// Most entries in `warehouses` or `skus`.
pub const LIST_MAX: usize = 1000;
/// Longest entry of `warehouses` or `skus`, in characters.
pub const LIST_ENTRY_MAX: usize = 64;
/// Shortest webhook secret, in characters.
pub const SECRET_MIN: usize = 16;
/// Longest webhook secret, in characters.
pub const SECRET_MAX: usize = 256;
/// A webhook secret's characters: no control characters.
pub const SECRET_PATTERN: &str = "^[^\\x00-\\x1f\\x7f-\\x9f]+$";
/// Webhook URLs that always parse as an http(s) URL with a host: a lowercase host name whose
/// labels start with a letter, an optional port, a plain path. (`url` takes any http(s) URL
/// with a host; this is the part of it the API's schema promises.)
pub const URL_PATTERN: &str =
    "^https?://[a-z][a-z0-9-]*(\\.[a-z][a-z0-9-]*)*(:[0-9]{1,4})?(/[A-Za-z0-9._~-]*)*$";

/// Where a rule sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// An email to this address.
    Email,
    /// A signed POST to this URL.
    Webhook,
}

impl Channel {
    /// Every channel.
    pub const ALL: [Self; 2] = [Self::Email, Self::Webhook];

    /// `email` or `webhook`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Webhook => "webhook",
        }
    }
}

/// A stored rule. Its `Debug` shows a webhook's URL as scheme://host only (a chat webhook's
/// path is its secret) and never the signing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Rule {
    /// Id.
    pub id: i64,
    /// Name, for people.
    pub name: String,
    /// Email or webhook.
    pub channel: Channel,
    /// The address or URL.
    pub target: String,
    /// The webhook's signing secret.
    pub secret: Option<Secret>,
    /// Only these warehouses (empty: all).
    pub warehouses: Vec<String>,
    /// Only these articles (empty: all).
    pub skus: Vec<String>,
    /// The lowest level that triggers it.
    pub min_level: AlertLevel,
    /// Event types (`stock_alert`, `report_ready`).
    pub events: Vec<String>,
    /// Off: matches nothing.
    pub enabled: bool,
    /// Who made it.
    pub created_by: String,
    /// Made.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// How a rule's target may be shown outside the rule's own API: an email address as it is, a
/// webhook URL as scheme://host.
fn shown_target(channel: &Channel, target: &str) -> String {
    match channel {
        Channel::Email => target.to_owned(),
        Channel::Webhook => malaka_db::secret::origin(target),
    }
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("channel", &self.channel)
            .field("target", &shown_target(&self.channel, &self.target))
            .field("secret", &self.secret)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Rule {
    /// Whether a `stock_alert` about `sku` in `warehouse` at `level` is for this rule.
    pub fn wants_alert(&self, sku: &str, warehouse: &str, level: AlertLevel) -> bool {
        self.enabled
            && self.events.iter().any(|e| e == "stock_alert")
            && (self.skus.is_empty() || self.skus.iter().any(|s| s == sku))
            && (self.warehouses.is_empty() || self.warehouses.iter().any(|w| w == warehouse))
            && level.severity() >= self.min_level.severity()
    }

    /// Whether `report_ready` is for this rule.
    pub fn wants_report(&self) -> bool {
        self.enabled && self.events.iter().any(|e| e == "report_ready")
    }
}

/// Why a rule's input was refused: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuleError {
    /// The field at fault.
    pub field: &'static str,
    /// For a person.
    pub message: String,
    /// Whether the value is fine in itself but not for the stored rule it would change (another
    /// channel, or a field of the other channel): a conflict with its state, not bad input.
    pub conflict: bool,
}

fn bad(field: &'static str, message: impl Into<String>) -> RuleError {
    RuleError {
        field,
        message: message.into(),
        conflict: false,
    }
}

fn conflict(field: &'static str, message: impl Into<String>) -> RuleError {
    RuleError {
        conflict: true,
        ..bad(field, message)
    }
}

/// A rule's fields, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct NewRule {
    /// Name.
    pub name: String,
    /// Channel.
    pub channel: Channel,
    /// Address or URL.
    pub target: String,
    /// Webhook secret.
    pub secret: Option<Secret>,
    /// Warehouses.
    pub warehouses: Vec<String>,
    /// Articles.
    pub skus: Vec<String>,
    /// Lowest level.
    pub min_level: AlertLevel,
    /// Event types.
    pub events: Vec<String>,
    /// On or off.
    pub enabled: bool,
}

impl std::fmt::Debug for NewRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewRule")
            .field("name", &self.name)
            .field("channel", &self.channel)
            .field("target", &shown_target(&self.channel, &self.target))
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

/// The raw fields of a rule, as a request gives them (all optional; `parse` decides).
#[derive(Clone, Default)]
pub struct RuleInput {
    /// Name.
    pub name: Option<String>,
    /// `email` or `webhook`.
    pub channel: Option<String>,
    /// For email.
    pub address: Option<String>,
    /// For webhooks.
    pub url: Option<String>,
    /// For webhooks.
    pub secret: Option<Secret>,
    /// Warehouses.
    pub warehouses: Option<Vec<String>>,
    /// Articles.
    pub skus: Option<Vec<String>>,
    /// `LOW`, `CRITICAL` or `OUT_OF_STOCK`.
    pub min_level: Option<String>,
    /// Event types.
    pub events: Option<Vec<String>>,
    /// On or off.
    pub enabled: Option<bool>,
}

impl std::fmt::Debug for RuleInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleInput")
            .field("name", &self.name)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

fn level(s: &str) -> Result<AlertLevel, RuleError> {
    match s.to_ascii_uppercase().as_str() {
        "LOW" => Ok(AlertLevel::Low),
        "CRITICAL" => Ok(AlertLevel::Critical),
        "OUT_OF_STOCK" => Ok(AlertLevel::OutOfStock),
        _ => Err(bad(
            "min_level",
            format!("min_level must be LOW, CRITICAL or OUT_OF_STOCK, not {s:?}"),
        )),
    }
}

fn list(field: &'static str, v: Vec<String>) -> Result<Vec<String>, RuleError> {
    if v.len() > LIST_MAX {
        return Err(bad(
            field,
            format!("{field} holds at most {LIST_MAX} entries"),
        ));
    }
    if let Some(e) = v
        .iter()
        .find(|e| e.is_empty() || e.chars().count() > LIST_ENTRY_MAX)
    {
        return Err(bad(
            field,
            format!("{field} entries are 1 to {LIST_ENTRY_MAX} characters, not {e:?}"),
        ));
    }
    Ok(v)
}

fn address(s: &str) -> Result<String, RuleError> {
    s.trim()
        .parse::<lettre::Address>()
        .map(|a| a.to_string())
        .map_err(|e| bad("address", format!("address is not an email address: {e}")))
}

fn url(s: &str) -> Result<String, RuleError> {
    let u =
        reqwest::Url::parse(s.trim()).map_err(|e| bad("url", format!("url is not a URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(bad(
            "url",
            "url must be an http:// or https:// URL with a host",
        ));
    }
    Ok(u.to_string())
}

fn secret(s: &Secret) -> Result<Secret, RuleError> {
    if !(SECRET_MIN..=SECRET_MAX).contains(&s.expose().chars().count()) {
        return Err(bad(
            "secret",
            format!("secret must be {SECRET_MIN} to {SECRET_MAX} characters"),
        ));
    }
    if s.expose().chars().any(char::is_control) {
        return Err(bad("secret", "secret must not contain control characters"));
    }
    Ok(s.clone())
}

/// Refuses a webhook whose URL names a non-public address literally (`http://127.0.0.1/`,
/// `http://[fd00::1]/`), unless `allow_private`; names are checked when the webhook connects.
///
/// # Errors
/// `url`, saying why.
pub fn check_target(rule: &NewRule, allow_private: bool) -> Result<(), RuleError> {
    if allow_private || rule.channel != Channel::Webhook {
        return Ok(());
    }
    let Ok(url) = reqwest::Url::parse(&rule.target) else {
        return Ok(());
    };
    match super::guard::private_literal(&url) {
        Some(ip) => Err(bad(
            "url",
            format!(
                "url points at {ip}, which is not a public address; webhooks may not reach loopback, private, link-local or unique-local addresses unless notify.allow_private_targets = true"
            ),
        )),
        None => Ok(()),
    }
}

impl NewRule {
    /// Checks a new rule: `channel` and its target (`address` for email; `url` and `secret`
    /// for webhooks) are required; `min_level` defaults to LOW, `events` to `stock_alert`.
    ///
    /// # Errors
    /// The first field at fault.
    pub fn parse(i: RuleInput) -> Result<Self, RuleError> {
        let channel = match i.channel.as_deref() {
            Some("email") => Channel::Email,
            Some("webhook") => Channel::Webhook,
            Some(other) => {
                return Err(bad(
                    "channel",
                    format!("channel must be email or webhook, not {other:?}"),
                ));
            }
            None => return Err(bad("channel", "channel is required (email or webhook)")),
        };
        let (target, secret_) = match channel {
            Channel::Email => {
                if i.url.is_some() || i.secret.is_some() {
                    return Err(bad(
                        "url",
                        "an email rule takes an address, not a url or secret",
                    ));
                }
                let a = i
                    .address
                    .as_deref()
                    .ok_or_else(|| bad("address", "address is required for email"))?;
                (address(a)?, None)
            }
            Channel::Webhook => {
                if i.address.is_some() {
                    return Err(bad("address", "a webhook rule takes a url, not an address"));
                }
                let u = i
                    .url
                    .as_deref()
                    .ok_or_else(|| bad("url", "url is required for a webhook"))?;
                let s = i.secret.as_ref().ok_or_else(|| {
                    bad(
                        "secret",
                        "secret is required for a webhook (16 to 256 characters)",
                    )
                })?;
                (url(u)?, Some(secret(s)?))
            }
        };
        // By default the address or the URL's origin, cut to the longest name.
        let name = i.name.unwrap_or_else(|| {
            shown_target(&channel, &target)
                .chars()
                .take(RULE_NAME_MAX)
                .collect()
        });
        if name.trim().is_empty() || name.chars().count() > RULE_NAME_MAX {
            return Err(bad(
                "name",
                format!("name must be 1 to {RULE_NAME_MAX} characters"),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(bad("name", "name must not contain control characters"));
        }
        let name = name.trim().to_owned();
        let events = i.events.unwrap_or_else(|| vec!["stock_alert".to_owned()]);
        if events.is_empty() {
            return Err(bad("events", "events must name at least one event type"));
        }
        if let Some(e) = events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
            return Err(bad(
                "events",
                format!("unknown event type {e:?}: use {}", EVENTS.join(", ")),
            ));
        }
        Ok(Self {
            name,
            channel,
            target,
            secret: secret_,
            warehouses: list("warehouses", i.warehouses.unwrap_or_default())?,
            skus: list("skus", i.skus.unwrap_or_default())?,
            min_level: i
                .min_level
                .as_deref()
                .map(level)
                .transpose()?
                .unwrap_or(AlertLevel::Low),
            events,
            enabled: i.enabled.unwrap_or(true),
        })
    }

    /// `existing` with the fields of `patch` that are set (the channel cannot change).
    ///
    /// # Errors
    /// The first field at fault.
    pub fn patched(existing: &Rule, patch: RuleInput) -> Result<Self, RuleError> {
        if let Some(c) = &patch.channel
            && c != existing.channel.as_str()
        {
            // A channel that is no channel at all is bad input; another one, a conflict.
            if !Channel::ALL.iter().any(|ch| ch.as_str() == c) {
                return Err(bad(
                    "channel",
                    format!("channel must be email or webhook, not {c:?}"),
                ));
            }
            return Err(conflict(
                "channel",
                "a rule's channel cannot change; make a new rule",
            ));
        }
        match existing.channel {
            Channel::Email if patch.url.is_some() || patch.secret.is_some() => {
                let field = if patch.url.is_some() { "url" } else { "secret" };
                return Err(conflict(
                    field,
                    "an email rule takes an address, not a url or secret",
                ));
            }
            Channel::Webhook if patch.address.is_some() => {
                return Err(conflict(
                    "address",
                    "a webhook rule takes a url, not an address",
                ));
            }
            _ => {}
        }
        let (address, url_) = match existing.channel {
            Channel::Email => (
                Some(patch.address.unwrap_or_else(|| existing.target.clone())),
                None,
            ),
            Channel::Webhook => (
                None,
                Some(patch.url.unwrap_or_else(|| existing.target.clone())),
            ),
        };
        Self::parse(RuleInput {
            name: Some(patch.name.unwrap_or_else(|| existing.name.clone())),
            channel: Some(existing.channel.as_str().to_owned()),
            address,
            url: url_,
            secret: patch.secret.or_else(|| existing.secret.clone()),
            warehouses: Some(
                patch
                    .warehouses
                    .unwrap_or_else(|| existing.warehouses.clone()),
            ),
            skus: Some(patch.skus.unwrap_or_else(|| existing.skus.clone())),
            min_level: Some(
                patch
                    .min_level
                    .unwrap_or_else(|| existing.min_level.as_str().to_owned()),
            ),
            events: Some(patch.events.unwrap_or_else(|| existing.events.clone())),
            enabled: Some(patch.enabled.unwrap_or(existing.enabled)),
        })
    }
}

type Row = (
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    bool,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
);

const COLS: &str = "id, name, channel, target, secret, warehouses, skus, min_level, events, \
                    enabled, created_by, created_at, updated_at";

fn decode(r: Row) -> Result<Rule, sqlx::Error> {
    let corrupt = |what: &str| sqlx::Error::Decode(format!("rule {}: {what}", r.0).into());
    let json_list = |s: &str| serde_json::from_str::<Vec<String>>(s).map_err(|_| corrupt("a list"));
    Ok(Rule {
        id: r.0,
        name: r.1.clone(),
        channel: match r.2.as_str() {
            "email" => Channel::Email,
            "webhook" => Channel::Webhook,
            _ => return Err(corrupt("channel")),
        },
        target: r.3.clone(),
        secret: r.4.clone().map(Secret::new),
        warehouses: json_list(&r.5)?,
        skus: json_list(&r.6)?,
        min_level: level(&r.7).map_err(|_| corrupt("min_level"))?,
        events: json_list(&r.8)?,
        enabled: r.9,
        created_by: r.10.clone(),
        created_at: r.11,
        updated_at: r.12,
    })
}

fn json(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".to_owned())
}

/// Rules in the database.
#[derive(Debug, Clone)]
pub struct RuleStore {
    db: Database,
}

impl RuleStore {
    /// Rules in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Stores a new rule.
    ///
    /// # Errors
    /// A database error.
    pub async fn create(&self, r: &NewRule, by: &str) -> Result<Rule, sqlx::Error> {
        let sql = format!(
            "INSERT INTO malaka_notification_rules (name, channel, target, secret, warehouses, skus, \
             min_level, events, enabled, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING {COLS}"
        );
        let now = Utc::now();
        let row: Row = on_pool!(&self.db, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(&r.name).bind(r.channel.as_str()).bind(&r.target).bind(r.secret.as_ref().map(Secret::expose))
                .bind(json(&r.warehouses)).bind(json(&r.skus)).bind(r.min_level.as_str())
                .bind(json(&r.events)).bind(r.enabled).bind(by).bind(now)
                .fetch_one(pool).await?
        });
        decode(row)
    }

    /// One rule.
    ///
    /// # Errors
    /// A database error.
    pub async fn get(&self, id: i64) -> Result<Option<Rule>, sqlx::Error> {
        let sql = format!("SELECT {COLS} FROM malaka_notification_rules WHERE id = $1");
        let row: Option<Row> = on_pool!(&self.db, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(id).fetch_optional(pool).await?
        });
        row.map(decode).transpose()
    }

    /// Up to `limit` rules after id `after`, by id.
    ///
    /// # Errors
    /// A database error.
    pub async fn page(&self, after: Option<i64>, limit: u32) -> Result<Vec<Rule>, sqlx::Error> {
        let rows: Vec<Row> = on_pool!(&self.db, pool => {
            let mut q = sqlx::QueryBuilder::new(format!("SELECT {COLS} FROM malaka_notification_rules"));
            if let Some(a) = after {
                q.push(" WHERE id > ").push_bind(a);
            }
            q.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit.clamp(1, 1000)));
            q.build_query_as().fetch_all(pool).await?
        });
        rows.into_iter().map(decode).collect()
    }

    /// Every rule, by id.
    ///
    /// # Errors
    /// A database error.
    pub async fn list(&self) -> Result<Vec<Rule>, sqlx::Error> {
        let sql = format!("SELECT {COLS} FROM malaka_notification_rules ORDER BY id");
        let rows: Vec<Row> = on_pool!(&self.db, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).fetch_all(pool).await?
        });
        rows.into_iter().map(decode).collect()
    }

    /// Replaces rule `id`'s fields.
    ///
    /// # Errors
    /// A database error.
    pub async fn update(&self, id: i64, r: &NewRule) -> Result<Option<Rule>, sqlx::Error> {
        let sql = format!(
            "UPDATE malaka_notification_rules SET name = $1, target = $2, secret = $3, \
             warehouses = $4, skus = $5, min_level = $6, events = $7, enabled = $8, updated_at = $9 \
             WHERE id = $10 RETURNING {COLS}"
        );
        let now = Utc::now();
        let row: Option<Row> = on_pool!(&self.db, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(&r.name).bind(&r.target).bind(r.secret.as_ref().map(Secret::expose)).bind(json(&r.warehouses))
                .bind(json(&r.skus)).bind(r.min_level.as_str()).bind(json(&r.events))
                .bind(r.enabled).bind(now).bind(id)
                .fetch_optional(pool).await?
        });
        row.map(decode).transpose()
    }

    /// Deletes rule `id`; whether it existed. Its pending deliveries find it gone and send
    /// nothing.
    ///
    /// # Errors
    /// A database error.
    pub async fn delete(&self, id: i64) -> Result<bool, sqlx::Error> {
        const SQL: &str = "DELETE FROM malaka_notification_rules WHERE id = $1";
        let n = on_pool!(&self.db, pool => {
            sqlx::query(SQL).bind(id).execute(pool).await?.rows_affected()
        });
        Ok(n > 0)
    }
}

const ENABLED: &str = "SELECT id, name, channel, target, secret, warehouses, skus, min_level, \
                       events, enabled, created_by, created_at, updated_at \
                       FROM malaka_notification_rules WHERE enabled ORDER BY id";

/// Enabled rules as an SQLite connection (inside an alert's transaction) sees them.
pub async fn enabled_sqlite(conn: &mut sqlx::SqliteConnection) -> Result<Vec<Rule>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(ENABLED).fetch_all(conn).await?;
    rows.into_iter().map(decode).collect()
}

/// Enabled rules as a PostgreSQL connection (inside an alert's transaction) sees them.
pub async fn enabled_postgres(conn: &mut sqlx::PgConnection) -> Result<Vec<Rule>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(ENABLED).fetch_all(conn).await?;
    rows.into_iter().map(decode).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> RuleInput {
        RuleInput {
            channel: Some("webhook".into()),
            url: Some("https://erp.example/hooks/stock".into()),
            secret: Some("0123456789abcdef".into()),
            ..Default::default()
        }
    }

    #[test]
    fn literal_private_targets_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:9/x",
            "http://[::1]/x",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest",
        ] {
            let r = NewRule::parse(RuleInput {
                url: Some(url.into()),
                ..input()
            })
            .unwrap();
            assert_eq!(check_target(&r, false).unwrap_err().field, "url", "{url}");
            assert!(check_target(&r, true).is_ok());
        }
        let public = NewRule::parse(input()).unwrap();
        assert!(check_target(&public, false).is_ok());
    }

    #[test]
    fn a_rule_parses_with_defaults_and_names_the_field_at_fault() {
        let r = NewRule::parse(input()).unwrap();
        assert_eq!(r.min_level, AlertLevel::Low);
        assert_eq!(r.events, ["stock_alert"]);
        // Named after the host only: a webhook's path may be its secret.
        assert_eq!(r.name, "https://erp.example");
        assert!(!format!("{r:?}").contains("hooks/stock"));
        assert!(!format!("{r:?}").contains("0123456789abcdef"));
        let field = |i: RuleInput| NewRule::parse(i).unwrap_err().field;
        assert_eq!(
            field(RuleInput {
                channel: None,
                ..input()
            }),
            "channel"
        );
        assert_eq!(
            field(RuleInput {
                channel: Some("sms".into()),
                ..input()
            }),
            "channel"
        );
        assert_eq!(
            field(RuleInput {
                secret: Some("short".into()),
                ..input()
            }),
            "secret"
        );
        assert_eq!(
            field(RuleInput {
                url: Some("ftp://x".into()),
                ..input()
            }),
            "url"
        );
        assert_eq!(
            field(RuleInput {
                min_level: Some("NORMAL".into()),
                ..input()
            }),
            "min_level"
        );
        assert_eq!(
            field(RuleInput {
                events: Some(vec!["gossip".into()]),
                ..input()
            }),
            "events"
        );
        assert_eq!(
            field(RuleInput {
                events: Some(vec![]),
                ..input()
            }),
            "events"
        );
        assert_eq!(
            field(RuleInput {
                skus: Some(vec![String::new()]),
                ..input()
            }),
            "skus"
        );
        let email = RuleInput {
            channel: Some("email".into()),
            address: Some("buyer@example.com".into()),
            ..Default::default()
        };
        assert_eq!(
            NewRule::parse(email.clone()).unwrap().target,
            "buyer@example.com"
        );
        assert_eq!(
            field(RuleInput {
                address: Some("not an address".into()),
                ..email.clone()
            }),
            "address"
        );
        assert_eq!(
            field(RuleInput {
                url: Some("https://x.example".into()),
                ..email
            }),
            "url"
        );
    }

    #[test]
    fn rules_match_by_level_article_warehouse_and_event() {
        let now = Utc::now();
        let r = Rule {
            id: 1,
            name: "r".into(),
            channel: Channel::Email,
            target: "a@b.example".into(),
            secret: None,
            warehouses: vec!["MAIN".into()],
            skus: vec![],
            min_level: AlertLevel::Critical,
            events: vec!["stock_alert".into()],
            enabled: true,
            created_by: "t".into(),
            created_at: now,
            updated_at: now,
        };
        assert!(r.wants_alert("X", "MAIN", AlertLevel::Critical));
        assert!(r.wants_alert("X", "MAIN", AlertLevel::OutOfStock));
        assert!(!r.wants_alert("X", "MAIN", AlertLevel::Low));
        assert!(!r.wants_alert("X", "SIDE", AlertLevel::OutOfStock));
        assert!(!r.wants_report());
        let off = Rule {
            enabled: false,
            ..r
        };
        assert!(!off.wants_alert("X", "MAIN", AlertLevel::OutOfStock));
    }
}
