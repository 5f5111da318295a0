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

use crate::outbox::{no_write_turn, on, sqlite_write_turn};
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
    /// The balance's quantity now (read by lists, not carried in events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_qty: Option<Decimal>,
    /// The article's name (read by lists, not carried in events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
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
    pub(crate) fn limit(&self) -> i64 {
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

/// The columns an [`Alert`] is read from.
pub(crate) const ALERT_COLS: &str = "id, sku, warehouse, level, qty, min_qty, raised_at, \
     updated_at, cleared_at, acknowledged_by, acknowledged_at";

/// An [`Alert`] from a row of [`ALERT_COLS`] (and, from a list, `current_qty` and `name`).
pub(crate) fn alert_of<R: sqlx::Row>(r: &R) -> Result<Alert, InventoryError>
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
        // Only lists select these two.
        current_qty: match r.try_get::<Option<String>, _>("current_qty") {
            Ok(Some(q)) => Some(dec("current_qty", &q)?),
            Ok(None) | Err(sqlx::Error::ColumnNotFound(_)) => None,
            Err(e) => return Err(e.into()),
        },
        name: match r.try_get::<Option<String>, _>("name") {
            Ok(n) => n,
            Err(sqlx::Error::ColumnNotFound(_)) => None,
            Err(e) => return Err(e.into()),
        },
    })
}

/// Pushes the list query for filter `$f` onto `$q`: only the filters given, so each shape reads
/// its index (shared by both backends' `list` and by `plan::explain`).
macro_rules! alerts_query {
    ($q:ident, $f:expr) => {{
        let f = $f;
        // With the balance's quantity now and the article's name, each by its primary key.
        $q.push(format!(
            "SELECT {}, (SELECT b.qty FROM inv_balances b WHERE b.sku = inv_alerts.sku \
             AND b.warehouse = inv_alerts.warehouse) AS current_qty, \
             (SELECT a.name FROM inv_articles a WHERE a.sku = inv_alerts.sku) AS name \
             FROM inv_alerts WHERE 1 = 1",
            $crate::alerts::ALERT_COLS
        ));
        match f.open {
            Some(true) => {
                $q.push(" AND cleared_at IS NULL");
            }
            Some(false) => {
                $q.push(" AND cleared_at IS NOT NULL");
            }
            None => {}
        }
        if let Some(v) = &f.sku {
            $q.push(" AND sku = ").push_bind(v.as_str());
        }
        if let Some(v) = &f.warehouse {
            $q.push(" AND warehouse = ").push_bind(v.as_str());
        }
        if let Some(v) = f.level {
            $q.push(" AND level = ").push_bind(v.as_str());
        }
        if let Some(v) = f.before_id {
            $q.push(" AND id < ").push_bind(v);
        }
        $q.push(" ORDER BY id DESC LIMIT ").push_bind(f.limit());
    }};
}
pub(crate) use alerts_query;

mod postgres;
mod sqlite;

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
