//! `Inventory`: the service over articles, warehouses, the ledger, balances and the inbox, on
//! a [`Storage`](crate::storage::Storage) backend. SQLite postings go through the group committer
//! (`crate::group`); every posting commits its ledger rows, balances, layers and outbox events
//! together.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use malaka_db::Database;
use rust_decimal::Decimal;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

use crate::error::InventoryError;
use crate::inbox::{Disposition, InboxEntry, InboxFilter, InboxRecord, InboxState, Recorded};
use crate::posting::PostingHook;
use crate::storage::Storage;
use crate::storage::postgres::PostgresStorage;
use crate::storage::sqlite::SqliteStorage;
use crate::types::{
    Article, ArticlePatch, Balance, BalanceFilter, LedgerFilter, LedgerRow, Movement, NewArticle,
    NewMovement, Sku, Warehouse, WarehouseCode, parse_text,
};

/// Most movements in one batch.
pub const MAX_BATCH: usize = 1000;

pub use crate::topics::{TOPIC_LEVEL_CHANGED, TOPIC_MOVEMENT_POSTED};

/// Refuses an empty batch or one over [`MAX_BATCH`].
pub(crate) fn check_batch(ms: &[NewMovement]) -> Result<(), InventoryError> {
    if ms.is_empty() || ms.len() > MAX_BATCH {
        return Err(InventoryError::invalid(
            "movements",
            format!("a batch holds 1 to {MAX_BATCH} movements"),
        ));
    }
    Ok(())
}

/// A difference `verify` found between the ledger and a balance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Discrepancy {
    /// Article.
    pub sku: String,
    /// Warehouse.
    pub warehouse: String,
    /// What the ledger says (quantity, value).
    pub ledger: (Decimal, Decimal),
    /// What the balance says (quantity, value).
    pub balance: (Decimal, Decimal),
    /// The quantity its open FIFO layers hold, when it is not the balance's (positive) stock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<Decimal>,
}

/// What `verify` checked.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Balances checked.
    pub balances: u64,
    /// Ledger rows read.
    pub ledger_rows: u64,
    /// Differences (empty when the ledger and the balances agree).
    pub discrepancies: Vec<Discrepancy>,
}

/// A page of ledger rows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LedgerPage {
    /// Rows, oldest first.
    pub rows: Vec<LedgerRow>,
    /// Cursor for the next page, if there may be one.
    pub next: Option<crate::types::LedgerCursor>,
}

/// An outbox event as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutboxEvent {
    /// Sequence number.
    pub id: i64,
    /// Topic (`movement.posted`, `stock.level_changed`).
    pub topic: String,
    /// JSON payload.
    pub payload: serde_json::Value,
    /// Written.
    pub created_at: DateTime<Utc>,
    /// Published by the relay, if it has been.
    pub published_at: Option<DateTime<Utc>>,
}

/// The inventory on one database. Cheap to clone (clones share the SQLite committer).
#[derive(Debug, Clone)]
pub struct Inventory {
    db: Database,
    storage: Arc<dyn Storage>,
    /// SQLite postings go through one group committer (see [`crate::group`]).
    committer: Option<crate::group::Committer>,
    /// Told after every commit that wrote outbox events (see [`Self::outbox_written`]).
    written: Arc<tokio::sync::Notify>,
}

impl Inventory {
    /// The inventory in an SQLite database. Postings are committed in groups by one task
    /// (started on first use, or by [`Self::start`]): one write transaction, one disk flush, for
    /// all the postings that arrived meanwhile; a posting that fails fails alone. The task runs
    /// under a supervisor of its own; see [`Self::sqlite_supervised`].
    pub fn sqlite(pool: SqlitePool) -> Self {
        Self::sqlite_supervised(pool, &malaka_runtime::Supervisor::default())
    }

    /// As [`Self::sqlite`], with the committer (task `inventory.committer`, critical) under
    /// `supervisor`, so a readiness check sees it.
    pub fn sqlite_supervised(pool: SqlitePool, supervisor: &malaka_runtime::Supervisor) -> Self {
        Self {
            committer: Some(crate::group::Committer::new(
                pool.clone(),
                supervisor.clone(),
            )),
            storage: Arc::new(SqliteStorage::new(pool.clone())),
            db: Database::Sqlite(pool),
            written: Arc::default(),
        }
    }

    /// The inventory in a PostgreSQL database; concurrent postings lock only the balances they
    /// touch.
    pub fn postgres(pool: PgPool) -> Self {
        Self {
            storage: Arc::new(PostgresStorage::new(pool.clone())),
            db: Database::Postgres(pool),
            committer: None,
            written: Arc::default(),
        }
    }

    /// The inventory on `db`, its SQLite committer (if any) under `supervisor`.
    pub fn on(db: &Database, supervisor: &malaka_runtime::Supervisor) -> Self {
        match db {
            Database::Sqlite(p) => Self::sqlite_supervised(p.clone(), supervisor),
            Database::Postgres(p) => Self::postgres(p.clone()),
        }
    }

    /// Starts the SQLite group committer now rather than with the first posting (nothing to do
    /// on PostgreSQL). Needs a tokio runtime.
    pub fn start(&self) {
        if let Some(c) = &self.committer {
            c.start();
        }
    }

    /// Applies this crate's migrations.
    ///
    /// # Errors
    /// A migration failed.
    pub async fn migrate(&self) -> Result<(), InventoryError> {
        self.storage.migrate().await
    }

    /// Creates an article.
    ///
    /// # Errors
    /// `Conflict` (`duplicate_sku`) or a database error.
    pub async fn create_article(&self, a: &NewArticle) -> Result<Article, InventoryError> {
        self.storage.create_article(a).await
    }

    /// One article.
    ///
    /// # Errors
    /// `NotFound` or a database error.
    pub async fn article(&self, sku: &Sku) -> Result<Article, InventoryError> {
        self.storage.article(sku).await
    }

    /// Articles in SKU order, after `after`, at most `limit`; archived ones only if asked.
    ///
    /// # Errors
    /// A database error.
    pub async fn articles(
        &self,
        after: Option<&Sku>,
        limit: u32,
        include_archived: bool,
        search: Option<&str>,
    ) -> Result<Vec<Article>, InventoryError> {
        self.storage
            .articles(after, limit, include_archived, search)
            .await
    }

    /// Changes an article; a new `min_qty` re-evaluates its levels (and writes their events).
    ///
    /// # Errors
    /// `NotFound`, `Conflict` (`valuation_locked`) or a database error.
    pub async fn update_article(
        &self,
        sku: &Sku,
        patch: &ArticlePatch,
        by: &str,
    ) -> Result<Article, InventoryError> {
        let out = self.storage.update_article(sku, patch, by).await?;
        if patch.min_qty.is_some() {
            self.written.notify_one();
        }
        Ok(out)
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Notified (one stored permit) after every commit of this process that wrote outbox
    /// events: postings and `min_qty` changes. The outbox relay waits on it.
    pub fn outbox_written(&self) -> std::sync::Arc<tokio::sync::Notify> {
        std::sync::Arc::clone(&self.written)
    }

    /// Deletes an article without ledger rows; archives one with ledger rows. Returns the
    /// archived article, or `None` when it was deleted.
    ///
    /// # Errors
    /// `NotFound` or a database error.
    pub async fn delete_article(&self, sku: &Sku) -> Result<Option<Article>, InventoryError> {
        self.storage.delete_article(sku).await
    }

    /// Creates a warehouse.
    ///
    /// # Errors
    /// `Conflict` (`duplicate_warehouse`) or a database error.
    pub async fn create_warehouse(
        &self,
        code: &WarehouseCode,
        name: &str,
    ) -> Result<Warehouse, InventoryError> {
        let name = parse_text("name", name, 200, true)?;
        self.storage.create_warehouse(code, &name).await
    }

    /// One warehouse.
    ///
    /// # Errors
    /// `NotFound` or a database error.
    pub async fn warehouse(&self, code: &WarehouseCode) -> Result<Warehouse, InventoryError> {
        self.storage.warehouse(code).await
    }

    /// A page of warehouses by code: up to `limit` after `after`; archived ones only if asked;
    /// with `search`, those whose code starts with it or whose name holds it (any case).
    ///
    /// # Errors
    /// A database error.
    pub async fn warehouses(
        &self,
        after: Option<&WarehouseCode>,
        limit: u32,
        include_archived: bool,
        search: Option<&str>,
    ) -> Result<Vec<Warehouse>, InventoryError> {
        self.storage
            .warehouses(after, limit.clamp(1, 1000), include_archived, search)
            .await
    }

    /// Renames, archives or restores a warehouse.
    ///
    /// # Errors
    /// `NotFound` or a database error.
    pub async fn update_warehouse(
        &self,
        code: &WarehouseCode,
        name: Option<&str>,
        archived: Option<bool>,
    ) -> Result<Warehouse, InventoryError> {
        let name = name.map(|n| parse_text("name", n, 200, true)).transpose()?;
        self.storage
            .update_warehouse(code, name.as_deref(), archived)
            .await
    }

    /// Posts one movement.
    ///
    /// # Errors
    /// `NotFound`, `InsufficientStock`, `Conflict` (archived) or a database error; nothing is
    /// written then.
    pub async fn post(&self, m: &NewMovement, by: &str) -> Result<Movement, InventoryError> {
        let mut out = self
            .post_batch(std::slice::from_ref(m), by)
            .await
            .map_err(InventoryError::into_root)?;
        out.pop()
            .ok_or_else(|| InventoryError::Corrupt("a posting returned no movement".into()))
    }

    /// Posts one movement in a transaction of its own, bypassing SQLite's group committer: the
    /// bare database work of one posting (what `malaka bench movements` compares against).
    ///
    /// # Errors
    /// As [`Self::post`].
    pub async fn post_alone(&self, m: &NewMovement, by: &str) -> Result<Movement, InventoryError> {
        let ms = std::slice::from_ref(m);
        let mut out = self
            .storage
            .post_batch(ms, by, None, None)
            .await
            .map_err(InventoryError::into_root)?;
        out.pop()
            .ok_or_else(|| InventoryError::Corrupt("a posting returned no movement".into()))
    }

    /// Posts up to [`MAX_BATCH`] movements in one transaction: all or nothing.
    ///
    /// # Errors
    /// As [`Self::post`]; a refusal names the refused movement: `InBatch { index, .. }`.
    pub async fn post_batch(
        &self,
        ms: &[NewMovement],
        by: &str,
    ) -> Result<Vec<Movement>, InventoryError> {
        self.post_batch_from(ms, by, None).await
    }

    /// Posts a batch on behalf of a message from another system: the message is recorded in
    /// the inbox in the same transaction, and a message already recorded posts nothing
    /// (`Conflict` with code `duplicate_message`).
    ///
    /// # Errors
    /// As [`Self::post_batch`], and `duplicate_message`.
    pub async fn post_batch_from(
        &self,
        ms: &[NewMovement],
        by: &str,
        inbox: Option<&InboxEntry>,
    ) -> Result<Vec<Movement>, InventoryError> {
        self.post_batch_with(ms, by, inbox, None).await
    }

    /// Posts a batch (all or nothing), with the inbox record of the message that asked for it
    /// and a `hook` whose writes commit with it (see [`PostingHook`]).
    ///
    /// # Errors
    /// As [`Self::post_batch_from`], and whatever the hook returns.
    pub async fn post_batch_with(
        &self,
        ms: &[NewMovement],
        by: &str,
        inbox: Option<&InboxEntry>,
        hook: Option<std::sync::Arc<dyn PostingHook>>,
    ) -> Result<Vec<Movement>, InventoryError> {
        check_batch(ms)?;
        let out = match &self.committer {
            Some(c) => {
                c.post(ms.to_vec(), by.to_owned(), inbox.cloned(), hook)
                    .await
            }
            None => {
                self.storage
                    .post_batch(ms, by, inbox, hook.as_deref())
                    .await
            }
        }?;
        self.written.notify_one();
        Ok(out)
    }

    /// Tells the outbox relay that a commit wrote events: call it after committing a
    /// transaction that posted through `storage::sqlite::post_in_tx` or
    /// `storage::postgres::post_in_tx`.
    pub fn posted(&self) {
        self.written.notify_one();
    }

    /// Records a message that posted nothing this time: a final state, or an attempt refused
    /// for a reason that can change (`retrying`, `parked` at the limit), with why. A message
    /// whose record is final is a duplicate: nothing changes. A `processed` record writes the
    /// entry's event to the outbox in the same transaction.
    ///
    /// # Errors
    /// A database error.
    pub async fn record_inbox(
        &self,
        entry: &InboxEntry,
        disposition: Disposition,
        error: Option<&str>,
    ) -> Result<Recorded, InventoryError> {
        let out = self.storage.record_inbox(entry, disposition, error).await?;
        if matches!(&out, Recorded::Now(r) if r.state == InboxState::Processed)
            && entry.event.is_some()
        {
            self.written.notify_one();
        }
        Ok(out)
    }

    /// The record of message `message_id` from `source`.
    ///
    /// # Errors
    /// A database error.
    pub async fn inbox(
        &self,
        source: &str,
        message_id: &str,
    ) -> Result<Option<InboxRecord>, InventoryError> {
        self.storage.inbox_find(source, message_id).await
    }

    /// The record with this id.
    ///
    /// # Errors
    /// `NotFound` or a database error.
    pub async fn inbox_record(&self, id: i64) -> Result<InboxRecord, InventoryError> {
        self.storage
            .inbox_get(id)
            .await?
            .ok_or_else(|| InventoryError::NotFound {
                what: "inbox record",
                key: id.to_string(),
            })
    }

    /// Records matching `filter`, newest first.
    ///
    /// # Errors
    /// A database error.
    pub async fn inbox_list(
        &self,
        filter: &InboxFilter,
    ) -> Result<Vec<InboxRecord>, InventoryError> {
        self.storage.inbox_list(filter).await
    }

    /// Makes a parked, refused or dead-lettered record `retrying` again, so that running its
    /// message once more is not a duplicate (a replay); returns it.
    ///
    /// # Errors
    /// `NotFound`, `Conflict` (`not_replayable`: its state does not allow it) or a database
    /// error.
    pub async fn inbox_reopen(&self, id: i64) -> Result<InboxRecord, InventoryError> {
        let r = self.inbox_record(id).await?;
        if !r.state.replayable() {
            return Err(InventoryError::Conflict {
                code: "not_replayable",
                message: format!(
                    "inbox record {id} is {}; only parked, refused or dead-lettered messages \
                     can be replayed",
                    r.state.as_str()
                ),
            });
        }
        self.storage.inbox_reopen(id, r.state).await?;
        self.inbox_record(id).await
    }

    /// Deletes final records received before `before`, at most `limit`; returns how many.
    /// Records still `retrying` are kept.
    ///
    /// # Errors
    /// A database error.
    pub async fn inbox_prune(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, InventoryError> {
        self.storage.inbox_prune(before, limit).await
    }

    /// The balances' generation: bumped by every commit that changed balances or articles, by
    /// any process (SQLite). Always 0 on PostgreSQL, whose nodes learn of changes from the
    /// outbox's `NOTIFY`.
    ///
    /// # Errors
    /// A database error.
    pub async fn generation(&self) -> Result<i64, InventoryError> {
        self.storage.generation().await
    }

    /// Balances matching `filter`, by article and warehouse.
    ///
    /// # Errors
    /// A database error.
    pub async fn balances(&self, filter: &BalanceFilter) -> Result<Vec<Balance>, InventoryError> {
        self.storage.balances(filter).await
    }

    /// Ledger rows matching `filter`, oldest first, one page.
    ///
    /// # Errors
    /// A database error.
    pub async fn ledger(&self, filter: &LedgerFilter) -> Result<LedgerPage, InventoryError> {
        self.storage.ledger(filter).await
    }

    /// The newest ledger rows (before id `before`, when given), newest first (1 to 1000).
    ///
    /// # Errors
    /// A database error.
    pub async fn recent_ledger(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<LedgerRow>, InventoryError> {
        self.storage.recent_ledger(before, limit).await
    }

    /// Outbox events after `after`, at most `limit`, oldest first.
    ///
    /// # Errors
    /// A database error.
    pub async fn outbox(&self, after: i64, limit: u32) -> Result<Vec<OutboxEvent>, InventoryError> {
        self.storage.outbox(after, limit).await
    }

    /// Recomputes every balance from the ledger and reports differences.
    ///
    /// # Errors
    /// A database error.
    pub async fn verify(&self) -> Result<VerifyReport, InventoryError> {
        self.storage.verify().await
    }
}
