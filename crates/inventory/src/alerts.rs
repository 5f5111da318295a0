//! Stock alerts: what the level changes a posting writes open, escalate, ease and clear
//! (`Alerts`), with a `stock.alert` event in the same transaction; the sweep that makes alerts
//! agree with the balances. On a pool the caller chooses (a `malaka_db::Database`).

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

use crate::error::InventoryError;
use malaka_db::Database;

use crate::outbox::{PoolDb, no_write_turn, on, sqlite_write_turn};
use crate::storage::{dec, text};
use crate::types::AlertLevel;

pub use crate::topics::TOPIC_ALERT;

/// A stock alert: one article in one warehouse below its minimum, from raised to cleared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// Id.
    pub id: i64,
    /// Article.
    pub sku: String,
    /// Warehouse.
    pub warehouse: String,
    /// Its level now (the last before clearing, once cleared).
    pub level: AlertLevel,
    /// Quantity when it last changed.
    pub qty: Decimal,
    /// The article's minimum then.
    pub min_qty: Decimal,
    /// Raised.
    pub raised_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Cleared (the balance is NORMAL again), if it is.
    pub cleared_at: Option<DateTime<Utc>>,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// When.
    pub acknowledged_at: Option<DateTime<Utc>>,
}

/// What happened to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertAction {
    /// Opened.
    Raised,
    /// Moved to a worse level.
    Escalated,
    /// Moved to a less bad level, still not NORMAL.
    Eased,
    /// Closed: the balance is NORMAL again.
    Cleared,
    /// Someone acknowledged it.
    Acknowledged,
}

impl AlertAction {
    /// The name in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raised => "raised",
            Self::Escalated => "escalated",
            Self::Eased => "eased",
            Self::Cleared => "cleared",
            Self::Acknowledged => "acknowledged",
        }
    }
}

/// A change of an alert, as its `stock.alert` event tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertChange {
    /// What happened.
    pub action: AlertAction,
    /// The level before (none when raised).
    pub from: Option<AlertLevel>,
    /// The alert after it.
    pub alert: Alert,
    /// The outbox event that caused it (for the sweep: none).
    pub cause: Option<i64>,
}

impl AlertChange {
    /// The `stock.alert` event payload.
    pub fn payload(&self) -> serde_json::Value {
        json!({
            "action": self.action,
            "from": self.from,
            "cause": self.cause,
            "alert": self.alert,
        })
    }
}

/// A `stock.level_changed` event, read back from the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelChange {
    /// Article.
    pub sku: String,
    /// Warehouse.
    pub warehouse: String,
    /// New level.
    pub to: AlertLevel,
    /// Quantity after the change.
    pub qty: Decimal,
    /// The article's minimum.
    pub min_qty: Decimal,
}

impl LevelChange {
    /// Reads the payload of a `stock.level_changed` event.
    ///
    /// # Errors
    /// `Corrupt` when a field is missing or wrong.
    pub fn from_payload(v: &serde_json::Value) -> Result<Self, InventoryError> {
        let s = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .ok_or_else(|| InventoryError::Corrupt(format!("stock.level_changed: no {k}")))
        };
        let d = |k: &str| {
            s(k).and_then(|t| {
                Decimal::from_str(&t)
                    .map_err(|e| InventoryError::Corrupt(format!("stock.level_changed {k}: {e}")))
            })
        };
        Ok(Self {
            sku: s("sku")?,
            warehouse: s("warehouse")?,
            to: AlertLevel::from_str(&s("to")?)
                .map_err(|e| InventoryError::Corrupt(e.to_string()))?,
            qty: d("qty")?,
            min_qty: d("min_qty")?,
        })
    }
}

/// Which alerts to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertFilter {
    /// Open (`Some(true)`), cleared (`Some(false)`) or both.
    pub open: Option<bool>,
    /// One article.
    pub sku: Option<String>,
    /// One warehouse.
    pub warehouse: Option<String>,
    /// One level.
    pub level: Option<AlertLevel>,
    /// Ids below this one (pages newest first).
    pub before_id: Option<i64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
}

impl AlertFilter {
    fn limit(&self) -> i64 {
        i64::from(self.limit.unwrap_or(100).clamp(1, 1000))
    }
}

/// What a sweep found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Balances looked at.
    pub balances: u64,
    /// Alerts raised, moved or cleared to match them.
    pub repaired: u64,
}

/// What else must happen, in the same transaction, when an alert is raised, moves or clears
/// (the server enqueues its notification jobs here, so they exist if and only if the alert
/// change does). Not called for acknowledgements.
#[async_trait::async_trait]
pub trait AlertEffects: Send + Sync + 'static {
    /// On SQLite, inside the alert's transaction.
    ///
    /// # Errors
    /// Any failure rolls the alert change back (the event is delivered again).
    async fn sqlite(
        &self,
        conn: &mut sqlx::SqliteConnection,
        change: &AlertChange,
    ) -> Result<(), InventoryError>;
    /// On PostgreSQL, inside the alert's transaction.
    ///
    /// # Errors
    /// As for SQLite.
    async fn postgres(
        &self,
        conn: &mut sqlx::PgConnection,
        change: &AlertChange,
    ) -> Result<(), InventoryError>;
}

/// Stock alerts.
#[derive(Clone)]
pub struct Alerts {
    pool: Database,
    effects: Option<std::sync::Arc<dyn AlertEffects>>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts")
            .field("effects", &self.effects.is_some())
            .finish_non_exhaustive()
    }
}

/// How an open alert (or none) moves to `to`: the action and the level before, or `None`
/// when nothing changes.
fn transition(
    open: Option<AlertLevel>,
    to: AlertLevel,
) -> Option<(AlertAction, Option<AlertLevel>)> {
    match (open, to) {
        (None, AlertLevel::Normal) => None,
        (None, _) => Some((AlertAction::Raised, None)),
        (Some(from), AlertLevel::Normal) => Some((AlertAction::Cleared, Some(from))),
        (Some(from), to) if from == to => None,
        (Some(from), to) if to.severity() > from.severity() => {
            Some((AlertAction::Escalated, Some(from)))
        }
        (Some(from), _) => Some((AlertAction::Eased, Some(from))),
    }
}

impl Alerts {
    /// The alerts on `pool`.
    pub fn new(pool: Database) -> Self {
        Self {
            pool,
            effects: None,
        }
    }

    /// The same alerts, running `effects` in every raise, move and clear transaction.
    #[must_use]
    pub fn with_effects(mut self, effects: std::sync::Arc<dyn AlertEffects>) -> Self {
        self.effects = Some(effects);
        self
    }

    /// Applies the level change of outbox event `event`: raises, moves or clears the open
    /// alert of its article and warehouse, and writes a `stock.alert` event, in one
    /// transaction. An event older than the alert's last change (a redelivery) changes nothing.
    ///
    /// # Errors
    /// A database error.
    pub async fn apply(
        &self,
        event: i64,
        change: &LevelChange,
    ) -> Result<Option<AlertChange>, InventoryError> {
        let fx = self.effects.as_deref();
        match &self.pool {
            Database::Sqlite(p) => sqlite::apply(p, fx, event, change, Some(event)).await,
            Database::Postgres(p) => postgres::apply(p, fx, event, change, Some(event)).await,
        }
    }

    /// Makes every alert agree with the balances as they are now (the safety net behind the
    /// event path): opens what is missing, moves or clears what is stale.
    ///
    /// # Errors
    /// A database error.
    pub async fn sweep(&self) -> Result<(SweepReport, Vec<AlertChange>), InventoryError> {
        let fx = self.effects.as_deref();
        match &self.pool {
            Database::Sqlite(p) => sqlite::sweep(p, fx).await,
            Database::Postgres(p) => postgres::sweep(p, fx).await,
        }
    }

    /// Alerts matching `filter`, newest first.
    ///
    /// # Errors
    /// A database error.
    pub async fn list(&self, filter: &AlertFilter) -> Result<Vec<Alert>, InventoryError> {
        on!(self.list(filter))
    }

    /// Acknowledges alert `id` for `by` (again: unchanged), writing a `stock.alert` event the
    /// first time.
    ///
    /// # Errors
    /// `NotFound` or a database error.
    pub async fn acknowledge(&self, id: i64, by: &str) -> Result<Alert, InventoryError> {
        on!(self.acknowledge(id, by))
    }
}

macro_rules! backend {
    ($module:ident, $pool:ty, begin = $begin:literal, lock = $lock:literal, notify = $notify:literal, turn = $turn:path) => {
        mod $module {
            use super::*;
            use sqlx::Row;

            fn alert_of<R: Row>(r: &R) -> Result<Alert, InventoryError>
            where
                for<'a> &'a str: sqlx::ColumnIndex<R>,
                for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
                for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
                for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
                for<'a> DateTime<Utc>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
                for<'a> Option<DateTime<Utc>>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
            {
                Ok(Alert {
                    id: r.try_get("id")?,
                    sku: r.try_get("sku")?,
                    warehouse: r.try_get("warehouse")?,
                    level: AlertLevel::from_str(&r.try_get::<String, _>("level")?)
                        .map_err(|e| InventoryError::Corrupt(e.to_string()))?,
                    qty: dec("qty", &r.try_get::<String, _>("qty")?)?,
                    min_qty: dec("min_qty", &r.try_get::<String, _>("min_qty")?)?,
                    raised_at: r.try_get("raised_at")?,
                    updated_at: r.try_get("updated_at")?,
                    cleared_at: r.try_get("cleared_at")?,
                    acknowledged_by: r.try_get("acknowledged_by")?,
                    acknowledged_at: r.try_get("acknowledged_at")?,
                })
            }

            const ALERT_COLS: &str = "id, sku, warehouse, level, qty, min_qty, raised_at, updated_at, \
                                      cleared_at, acknowledged_by, acknowledged_at";


            /// Moves the alert of (sku, warehouse) to `to` as of watermark `event`.
            pub(super) async fn apply(
                pool: &$pool,
                effects: Option<&dyn AlertEffects>,
                event: i64,
                change: &LevelChange,
                cause: Option<i64>,
            ) -> Result<Option<AlertChange>, InventoryError> {
                let _turn = $turn(pool).await;
                let mut tx = pool.begin_with($begin).await?;
                let latest = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {ALERT_COLS}, last_event FROM inv_alerts WHERE sku = $1 AND warehouse = $2 \
                     ORDER BY id DESC LIMIT 1{}",
                    $lock
                )))
                .bind(&change.sku)
                .bind(&change.warehouse)
                .fetch_optional(&mut *tx)
                .await?;
                let mut open = None;
                if let Some(r) = &latest {
                    let last: i64 = r.try_get("last_event")?;
                    if last >= event {
                        return Ok(None);
                    }
                    let a = alert_of(r)?;
                    if a.cleared_at.is_none() {
                        open = Some(a);
                    }
                }
                let Some((action, from)) = transition(open.as_ref().map(|a| a.level), change.to)
                else {
                    if let Some(a) = &open {
                        // Same level: keep the figures current, and the watermark.
                        sqlx::query(
                            "UPDATE inv_alerts SET qty = $1, min_qty = $2, last_event = $3 WHERE id = $4",
                        )
                        .bind(text(change.qty))
                        .bind(text(change.min_qty))
                        .bind(event)
                        .bind(a.id)
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                    }
                    return Ok(None);
                };
                let now = Utc::now();
                let row = match (&open, action) {
                    (None, _) => {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "INSERT INTO inv_alerts (sku, warehouse, level, qty, min_qty, raised_at, \
                             updated_at, last_event) VALUES ($1, $2, $3, $4, $5, $6, $6, $7) \
                             RETURNING {ALERT_COLS}"
                        )))
                        .bind(&change.sku)
                        .bind(&change.warehouse)
                        .bind(change.to.as_str())
                        .bind(text(change.qty))
                        .bind(text(change.min_qty))
                        .bind(now)
                        .bind(event)
                        .fetch_one(&mut *tx)
                        .await?
                    }
                    (Some(a), AlertAction::Cleared) => {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "UPDATE inv_alerts SET qty = $1, min_qty = $2, updated_at = $3, \
                             cleared_at = $3, last_event = $4 WHERE id = $5 RETURNING {ALERT_COLS}"
                        )))
                        .bind(text(change.qty))
                        .bind(text(change.min_qty))
                        .bind(now)
                        .bind(event)
                        .bind(a.id)
                        .fetch_one(&mut *tx)
                        .await?
                    }
                    (Some(a), _) => {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "UPDATE inv_alerts SET level = $1, qty = $2, min_qty = $3, updated_at = $4, \
                             last_event = $5 WHERE id = $6 RETURNING {ALERT_COLS}"
                        )))
                        .bind(change.to.as_str())
                        .bind(text(change.qty))
                        .bind(text(change.min_qty))
                        .bind(now)
                        .bind(event)
                        .bind(a.id)
                        .fetch_one(&mut *tx)
                        .await?
                    }
                };
                let out = AlertChange {
                    action,
                    from,
                    alert: alert_of(&row)?,
                    cause,
                };
                write_event(&mut tx, &out, now).await?;
                if let Some(fx) = effects {
                    fx.$module(&mut *tx, &out).await?;
                }
                tx.commit().await?;
                Ok(Some(out))
            }

            async fn write_event(
                tx: &mut sqlx::Transaction<'_, <$pool as PoolDb>::Db>,
                change: &AlertChange,
                now: DateTime<Utc>,
            ) -> Result<(), InventoryError> {
                sqlx::query("INSERT INTO malaka_outbox (topic, payload, created_at) VALUES ($1, $2, $3)")
                    .bind(TOPIC_ALERT)
                    .bind(change.payload().to_string())
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            pub(super) async fn sweep(
                pool: &$pool,
                effects: Option<&dyn AlertEffects>,
            ) -> Result<(SweepReport, Vec<AlertChange>), InventoryError> {
                // Everything up to the newest event is reflected in what is read next, so an
                // older event still on its way must not undo a repair.
                let watermark: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM malaka_outbox")
                    .fetch_one(pool)
                    .await?;
                let watermark = watermark.unwrap_or(0);
                let balances = sqlx::query(
                    "SELECT b.sku, b.warehouse, b.qty, a.min_qty FROM inv_balances b \
                     JOIN inv_articles a ON a.sku = b.sku ORDER BY b.sku, b.warehouse",
                )
                .fetch_all(pool)
                .await?;
                let open: BTreeMap<(String, String), AlertLevel> = sqlx::query(
                    "SELECT sku, warehouse, level FROM inv_alerts WHERE cleared_at IS NULL",
                )
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    Ok((
                        (r.try_get::<String, _>("sku")?, r.try_get::<String, _>("warehouse")?),
                        AlertLevel::from_str(&r.try_get::<String, _>("level")?)
                            .map_err(|e| InventoryError::Corrupt(e.to_string()))?,
                    ))
                })
                .collect::<Result<_, InventoryError>>()?;
                let mut report = SweepReport::default();
                let mut changes = Vec::new();
                for b in &balances {
                    report.balances += 1;
                    let sku: String = b.try_get("sku")?;
                    let warehouse: String = b.try_get("warehouse")?;
                    let qty = dec("qty", &b.try_get::<String, _>("qty")?)?;
                    let min_qty = dec("min_qty", &b.try_get::<String, _>("min_qty")?)?;
                    let to = AlertLevel::of(qty, min_qty);
                    let current = open.get(&(sku.clone(), warehouse.clone())).copied();
                    if transition(current, to).is_none() {
                        continue;
                    }
                    let change = LevelChange { sku, warehouse, to, qty, min_qty };
                    if let Some(c) = apply(pool, effects, watermark, &change, None).await? {
                        report.repaired += 1;
                        changes.push(c);
                    }
                }
                Ok((report, changes))
            }

            pub(super) async fn list(
                pool: &$pool,
                f: &AlertFilter,
            ) -> Result<Vec<Alert>, InventoryError> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {ALERT_COLS} FROM inv_alerts \
                     WHERE ($1 IS NULL OR ($1 AND cleared_at IS NULL) OR (NOT $1 AND cleared_at IS NOT NULL)) \
                       AND ($2 IS NULL OR sku = $2) AND ($3 IS NULL OR warehouse = $3) \
                       AND ($4 IS NULL OR level = $4) AND ($5 IS NULL OR id < $5) \
                     ORDER BY id DESC LIMIT $6"
                )))
                .bind(f.open)
                .bind(&f.sku)
                .bind(&f.warehouse)
                .bind(f.level.map(AlertLevel::as_str))
                .bind(f.before_id)
                .bind(f.limit())
                .fetch_all(pool)
                .await?;
                rows.iter().map(alert_of).collect()
            }

            pub(super) async fn acknowledge(
                pool: &$pool,
                id: i64,
                by: &str,
            ) -> Result<Alert, InventoryError> {
                let _turn = $turn(pool).await;
                let mut tx = pool.begin_with($begin).await?;
                let now = Utc::now();
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE inv_alerts SET acknowledged_by = $1, acknowledged_at = $2 \
                     WHERE id = $3 AND acknowledged_at IS NULL RETURNING {ALERT_COLS}"
                )))
                .bind(by)
                .bind(now)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    let existing = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {ALERT_COLS} FROM inv_alerts WHERE id = $1"
                    )))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| InventoryError::NotFound {
                        what: "alert",
                        key: id.to_string(),
                    })?;
                    return alert_of(&existing);
                };
                let alert = alert_of(&row)?;
                let change = AlertChange {
                    action: AlertAction::Acknowledged,
                    from: Some(alert.level),
                    alert: alert.clone(),
                    cause: None,
                };
                write_event(&mut tx, &change, now).await?;
                tx.commit().await?;
                Ok(alert)
            }
        }
    };
}

backend!(
    sqlite,
    SqlitePool,
    begin = "BEGIN IMMEDIATE",
    lock = "",
    notify = false,
    turn = sqlite_write_turn
);
backend!(
    postgres,
    PgPool,
    begin = "BEGIN",
    lock = " FOR UPDATE",
    notify = true,
    turn = no_write_turn
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_levels() {
        use AlertLevel::{Critical, Low, Normal, OutOfStock};
        assert_eq!(transition(None, Normal), None);
        assert_eq!(transition(None, Low), Some((AlertAction::Raised, None)));
        assert_eq!(
            transition(Some(Low), OutOfStock),
            Some((AlertAction::Escalated, Some(Low)))
        );
        assert_eq!(
            transition(Some(OutOfStock), Critical),
            Some((AlertAction::Eased, Some(OutOfStock)))
        );
        assert_eq!(
            transition(Some(Critical), Normal),
            Some((AlertAction::Cleared, Some(Critical)))
        );
        assert_eq!(transition(Some(Low), Low), None);
    }

    #[test]
    fn a_level_change_reads_back_from_its_payload() {
        let v = json!({"sku": "A", "warehouse": "W", "from": "NORMAL", "to": "LOW",
                       "qty": "4", "min_qty": "5"});
        let c = LevelChange::from_payload(&v).unwrap();
        assert_eq!(c.to, AlertLevel::Low);
        assert_eq!(c.qty, Decimal::from(4));
        assert!(LevelChange::from_payload(&json!({"sku": "A"})).is_err());
    }
}
