//! Inventory storage: the `Storage` trait every backend implements, with one file per backend
//! and its SQL in view (`sqlite.rs`, `postgres.rs`), and the row readers they share. One
//! conformance suite (`tests/it/conformance.rs`) runs every behaviour on both.

pub mod postgres;
pub(crate) mod reads;
pub mod sqlite;

use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::Row;

use crate::error::InventoryError;
use crate::inbox::{Disposition, InboxEntry, InboxFilter, InboxRecord, InboxState, Recorded};
use crate::inventory::{LedgerPage, OutboxEvent, VerifyReport};
use crate::posting::PostingHook;
use crate::types::{
    Article, ArticlePatch, Balance, BalanceFilter, LedgerFilter, LedgerRow, Movement, NewArticle,
    NewMovement, Sku, Warehouse, WarehouseCode,
};

/// Everything `Inventory` needs from a database. Postings take their balances' locks in one
/// order (SQLite: the database's write lock; PostgreSQL: `FOR UPDATE` on balance rows) and
/// commit ledger rows, balances, layers and outbox events together.
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// The database, for the reads that are the same on both backends (`reads.rs`), which the
    /// provided methods below run.
    fn database(&self) -> malaka_db::Database;
    /// Applies the inventory's migrations.
    async fn migrate(&self) -> Result<(), InventoryError>;
    /// Creates an article (`duplicate_sku` when it exists).
    async fn create_article(&self, a: &NewArticle) -> Result<Article, InventoryError>;
    /// One article.
    async fn article(&self, sku: &Sku) -> Result<Article, InventoryError>;
    /// Articles in SKU order after `after`.
    async fn articles(
        &self,
        after: Option<&Sku>,
        limit: u32,
        include_archived: bool,
        search: Option<&str>,
    ) -> Result<Vec<Article>, InventoryError> {
        reads::articles(&self.database(), after, limit, include_archived, search).await
    }
    /// Changes an article; a new minimum re-evaluates its levels (with their events).
    async fn update_article(
        &self,
        sku: &Sku,
        patch: &ArticlePatch,
        by: &str,
    ) -> Result<Article, InventoryError>;
    /// Deletes an article without ledger rows, archives one with.
    async fn delete_article(&self, sku: &Sku) -> Result<Option<Article>, InventoryError>;
    /// Creates a warehouse.
    async fn create_warehouse(
        &self,
        code: &WarehouseCode,
        name: &str,
    ) -> Result<Warehouse, InventoryError>;
    /// One warehouse.
    async fn warehouse(&self, code: &WarehouseCode) -> Result<Warehouse, InventoryError>;
    /// Every warehouse, by code.
    async fn warehouses(
        &self,
        after: Option<&WarehouseCode>,
        limit: u32,
        include_archived: bool,
        search: Option<&str>,
    ) -> Result<Vec<Warehouse>, InventoryError> {
        reads::warehouses(&self.database(), after, limit, include_archived, search).await
    }
    /// Renames, archives or restores a warehouse.
    async fn update_warehouse(
        &self,
        code: &WarehouseCode,
        name: Option<&str>,
        archived: Option<bool>,
    ) -> Result<Warehouse, InventoryError>;
    /// Posts a batch in a transaction of its own (all or nothing).
    async fn post_batch(
        &self,
        ms: &[NewMovement],
        by: &str,
        inbox: Option<&InboxEntry>,
        hook: Option<&dyn PostingHook>,
    ) -> Result<Vec<Movement>, InventoryError>;
    /// Records a message that posted nothing this time.
    async fn record_inbox(
        &self,
        e: &InboxEntry,
        disposition: Disposition,
        error: Option<&str>,
    ) -> Result<Recorded, InventoryError>;
    /// The record of a message.
    async fn inbox_find(
        &self,
        source: &str,
        message_id: &str,
    ) -> Result<Option<InboxRecord>, InventoryError>;
    /// An inbox record by id.
    async fn inbox_get(&self, id: i64) -> Result<Option<InboxRecord>, InventoryError>;
    /// Inbox records, newest first.
    async fn inbox_list(&self, f: &InboxFilter) -> Result<Vec<InboxRecord>, InventoryError> {
        reads::inbox_list(&self.database(), f).await
    }
    /// Makes a record in state `was` `retrying` again.
    async fn inbox_reopen(&self, id: i64, was: InboxState) -> Result<(), InventoryError>;
    /// Deletes final records received before `before`.
    async fn inbox_prune(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, InventoryError>;
    /// The balances' generation (SQLite; 0 on PostgreSQL).
    async fn generation(&self) -> Result<i64, InventoryError>;
    /// Balances matching a filter, with their open layers.
    async fn balances(&self, f: &BalanceFilter) -> Result<Vec<Balance>, InventoryError> {
        reads::balances(&self.database(), f).await
    }
    /// One page of ledger rows.
    async fn ledger(&self, f: &LedgerFilter) -> Result<LedgerPage, InventoryError> {
        reads::ledger(&self.database(), f).await
    }
    /// The newest ledger rows.
    async fn recent_ledger(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<LedgerRow>, InventoryError> {
        reads::recent_ledger(&self.database(), before, limit).await
    }
    /// Outbox events after `after`.
    async fn outbox(&self, after: i64, limit: u32) -> Result<Vec<OutboxEvent>, InventoryError> {
        reads::outbox(&self.database(), after, limit).await
    }
    /// Recomputes every balance from the ledger (and its layers) and reports differences.
    async fn verify(&self) -> Result<VerifyReport, InventoryError> {
        reads::verify(&self.database()).await
    }
}

/// A stored decimal read back (a bad one is `Corrupt`, naming the field).
pub(crate) fn dec(field: &str, s: &str) -> Result<Decimal, InventoryError> {
    Decimal::from_str(s).map_err(|e| InventoryError::Corrupt(format!("{field} {s:?}: {e}")))
}

/// A decimal as stored: canonical text.
pub(crate) fn text(d: Decimal) -> String {
    d.normalize().to_string()
}

pub(crate) fn stored<T: FromStr<Err = InventoryError>>(s: &str) -> Result<T, InventoryError> {
    s.parse()
        .map_err(|e: InventoryError| InventoryError::Corrupt(e.to_string()))
}

pub(crate) fn article_of<R: Row>(r: &R) -> Result<Article, InventoryError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> DateTime<Utc>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let sku: String = r.try_get("sku")?;
    Ok(Article {
        sku: Sku::parse(&sku).map_err(|e| InventoryError::Corrupt(e.to_string()))?,
        name: r.try_get("name")?,
        unit: r.try_get("unit")?,
        valuation: stored(&r.try_get::<String, _>("valuation")?)?,
        min_qty: dec("min_qty", &r.try_get::<String, _>("min_qty")?)?,
        reorder_qty: dec("reorder_qty", &r.try_get::<String, _>("reorder_qty")?)?,
        allow_negative: r.try_get("allow_negative")?,
        archived: r.try_get("archived")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

pub(crate) fn warehouse_of<R: Row>(r: &R) -> Result<Warehouse, InventoryError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> DateTime<Utc>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let code: String = r.try_get("code")?;
    Ok(Warehouse {
        code: WarehouseCode::parse(&code).map_err(|e| InventoryError::Corrupt(e.to_string()))?,
        name: r.try_get("name")?,
        archived: r.try_get("archived")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

pub(crate) fn ledger_of<R: Row>(r: &R) -> Result<LedgerRow, InventoryError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> DateTime<Utc>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let s = |c: &str| -> Result<String, InventoryError> { Ok(r.try_get(c)?) };
    Ok(LedgerRow {
        id: r.try_get("id")?,
        movement_id: s("movement_id")?,
        kind: stored(&s("kind")?)?,
        sku: Sku::parse(&s("sku")?).map_err(|e| InventoryError::Corrupt(e.to_string()))?,
        warehouse: WarehouseCode::parse(&s("warehouse")?)
            .map_err(|e| InventoryError::Corrupt(e.to_string()))?,
        qty_change: dec("qty_change", &s("qty_change")?)?,
        unit_cost: dec("unit_cost", &s("unit_cost")?)?,
        value_change: dec("value_change", &s("value_change")?)?,
        qty_after: dec("qty_after", &s("qty_after")?)?,
        value_after: dec("value_after", &s("value_after")?)?,
        rate_after: dec("rate_after", &s("rate_after")?)?,
        reference: r.try_get("reference")?,
        posted_by: s("posted_by")?,
        posted_at: r.try_get("posted_at")?,
    })
}

pub(crate) fn inbox_of<R: Row>(r: &R) -> Result<InboxRecord, InventoryError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i32: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> DateTime<Utc>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(InboxRecord {
        id: r.try_get("id")?,
        source: r.try_get("source")?,
        message_id: r.try_get("message_id")?,
        kind: r.try_get("kind")?,
        payload: r.try_get("payload")?,
        state: stored(&r.try_get::<String, _>("state")?)?,
        attempts: r.try_get("attempts")?,
        errors: serde_json::from_str(&r.try_get::<String, _>("errors")?)?,
        movements: serde_json::from_str(&r.try_get::<String, _>("movements")?)?,
        received_at: r.try_get("received_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

pub(crate) const ARTICLE_COLS: &str = "sku, name, unit, valuation, min_qty, reorder_qty, \
    allow_negative, archived, created_at, updated_at";

pub(crate) const INBOX_COLS: &str = "id, source, message_id, kind, payload, state, attempts, \
    errors, movements, received_at, updated_at";
