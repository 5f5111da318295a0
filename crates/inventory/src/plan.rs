//! What the database plans for each list query: `EXPLAIN QUERY PLAN` (SQLite) or `EXPLAIN`
//! (PostgreSQL, with sequential scans priced out) of the very statements the lists run, for the
//! tests that hold every filtered list to an index.

use malaka_db::Database;
use sqlx::Row;

use crate::alerts::{AlertFilter, alerts_query};
use crate::error::InventoryError;
use crate::storage::reads::{LEDGER_COLS, and_eq, balances_query, ledger_query};
use crate::types::{AlertLevel, BalanceFilter, LedgerCursor, LedgerFilter, Sku, WarehouseCode};

/// A list query, as its filters shape it.
#[derive(Debug, Clone)]
pub enum ListQuery {
    /// `GET /ledger`.
    Ledger(LedgerFilter),
    /// `GET /balances`.
    Balances(BalanceFilter),
    /// `GET /alerts`.
    Alerts(AlertFilter),
}

/// The plan's lines for `list` on `db`.
///
/// # Errors
/// A database error.
pub async fn explain(db: &Database, list: &ListQuery) -> Result<Vec<String>, InventoryError> {
    match db {
        Database::Sqlite(pool) => {
            let mut q = sqlx::QueryBuilder::new("EXPLAIN QUERY PLAN ");
            push_sqlite(&mut q, list, crate::storage::sqlite::LAYERS_JSON);
            let rows = q.build().fetch_all(pool).await?;
            rows.iter()
                .map(|r| Ok(r.try_get::<String, _>("detail")?))
                .collect()
        }
        Database::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query("SET LOCAL enable_seqscan = off")
                .execute(&mut *tx)
                .await?;
            let mut q = sqlx::QueryBuilder::new("EXPLAIN ");
            push_postgres(&mut q, list, crate::storage::postgres::LAYERS_JSON);
            let rows = q.build().fetch_all(&mut *tx).await?;
            rows.iter()
                .map(|r| Ok(r.try_get::<String, _>(0)?))
                .collect()
        }
    }
}

/// Pushes `list`'s statement with the same macros the lists use.
macro_rules! push_list {
    ($name:ident, $db:ty) => {
        fn $name(q: &mut sqlx::QueryBuilder<$db>, list: &ListQuery, layers: &str) {
            match list {
                ListQuery::Ledger(f) => ledger_query!(q, f, f.limit.unwrap_or(100).clamp(1, 1000)),
                ListQuery::Balances(f) => balances_query!(q, f, layers),
                ListQuery::Alerts(f) => alerts_query!(q, f),
            }
        }
    };
}
push_list!(push_sqlite, sqlx::Sqlite);
push_list!(push_postgres, sqlx::Postgres);
