//! `Inventory`: the store of articles, warehouses, the ledger, balances and the outbox, on SQLite
//! or PostgreSQL. One body of SQL serves both (written once in `backend!` and expanded per
//! database); postings serialize per (article, warehouse) and commit ledger rows, balances and
//! outbox events together.

use std::collections::{BTreeMap, VecDeque};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

use crate::error::InventoryError;
use crate::inbox::{
    Disposition, InboxAttempt, InboxEntry, InboxFilter, InboxRecord, InboxState, Recorded,
    next_state,
};
use crate::types::Layer;
use crate::types::{
    AlertLevel, Article, ArticlePatch, Balance, BalanceFilter, LedgerFilter, LedgerRow, Movement,
    MovementKind, NewArticle, NewMovement, Sku, ValuationMethod, Warehouse, WarehouseCode,
    parse_text,
};
use crate::types::{MAX_QTY, MAX_UNIT_COST, MAX_VALUE};
use crate::valuation::{Change, Stock, ValuationError};

/// Most movements in one batch.
pub const MAX_BATCH: usize = 1000;

pub use crate::topics::{TOPIC_LEVEL_CHANGED, TOPIC_MOVEMENT_POSTED};

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
    pub next: Option<i64>,
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
    db: Db,
    /// SQLite postings go through one group committer (see [`crate::group`]).
    committer: Option<crate::group::Committer>,
    /// Told after every commit that wrote outbox events (see [`Self::outbox_written`]).
    written: std::sync::Arc<tokio::sync::Notify>,
}

#[derive(Debug, Clone)]
enum Db {
    /// SQLite: writers serialize on the database's write lock (`BEGIN IMMEDIATE`).
    Sqlite(SqlitePool),
    /// PostgreSQL: postings lock their balance rows (`FOR UPDATE`) in a fixed order.
    Postgres(PgPool),
}

macro_rules! dispatch {
    ($self:ident . $f:ident ( $($arg:expr),* )) => {
        match &$self.db {
            Db::Sqlite(p) => sqlite::$f(p, $($arg),*).await,
            Db::Postgres(p) => postgres::$f(p, $($arg),*).await,
        }
    };
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
            db: Db::Sqlite(pool),
            written: std::sync::Arc::default(),
        }
    }

    /// The inventory in a PostgreSQL database; concurrent postings lock only the balances they
    /// touch.
    pub fn postgres(pool: PgPool) -> Self {
        Self {
            db: Db::Postgres(pool),
            committer: None,
            written: std::sync::Arc::default(),
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
        match &self.db {
            Db::Sqlite(p) => {
                let mut m = sqlx::migrate!("./migrations/sqlite");
                m.set_ignore_missing(true);
                m.run(p).await?;
            }
            Db::Postgres(p) => {
                let mut m = sqlx::migrate!("./migrations/postgres");
                m.set_ignore_missing(true);
                m.run(p).await?;
            }
        }
        Ok(())
    }

    /// Creates an article.
    ///
    /// # Errors
    /// `Conflict` (`duplicate_sku`) or a database error.
    pub async fn create_article(&self, a: &NewArticle) -> Result<Article, InventoryError> {
        dispatch!(self.create_article(a))
    }

    /// One article.
    ///
    /// # Errors
    /// `NotFound` or a database error.
    pub async fn article(&self, sku: &Sku) -> Result<Article, InventoryError> {
        dispatch!(self.article(sku))
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
    ) -> Result<Vec<Article>, InventoryError> {
        dispatch!(self.articles(after, limit, include_archived))
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
        let out = dispatch!(self.update_article(sku, patch, by))?;
        if patch.min_qty.is_some() {
            self.written.notify_one();
        }
        Ok(out)
    }

    /// The pool: SQLite or PostgreSQL.
    pub(crate) fn pools(&self) -> (Option<&SqlitePool>, Option<&PgPool>) {
        match &self.db {
            Db::Sqlite(p) => (Some(p), None),
            Db::Postgres(p) => (None, Some(p)),
        }
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
        dispatch!(self.delete_article(sku))
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
        dispatch!(self.create_warehouse(code, &name))
    }

    /// One warehouse.
    ///
    /// # Errors
    /// `NotFound` or a database error.
    pub async fn warehouse(&self, code: &WarehouseCode) -> Result<Warehouse, InventoryError> {
        dispatch!(self.warehouse(code))
    }

    /// Every warehouse, by code.
    ///
    /// # Errors
    /// A database error.
    pub async fn warehouses(
        &self,
        include_archived: bool,
    ) -> Result<Vec<Warehouse>, InventoryError> {
        dispatch!(self.warehouses(include_archived))
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
        dispatch!(self.update_warehouse(code, name.as_deref(), archived))
    }

    /// Posts one movement.
    ///
    /// # Errors
    /// `NotFound`, `InsufficientStock`, `Conflict` (archived) or a database error; nothing is
    /// written then.
    pub async fn post(&self, m: &NewMovement, by: &str) -> Result<Movement, InventoryError> {
        let mut out = self.post_batch(std::slice::from_ref(m), by).await?;
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
        let mut out = dispatch!(self.post_batch(ms, by, None, None))?;
        out.pop()
            .ok_or_else(|| InventoryError::Corrupt("a posting returned no movement".into()))
    }

    /// Posts up to [`MAX_BATCH`] movements in one transaction: all or nothing.
    ///
    /// # Errors
    /// As [`Self::post`]; an `Invalid` error's field is prefixed with the movement's index.
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
        if ms.is_empty() || ms.len() > MAX_BATCH {
            return Err(InventoryError::invalid(
                "movements",
                format!("a batch holds 1 to {MAX_BATCH} movements"),
            ));
        }
        let out = match &self.committer {
            Some(c) => {
                c.post(ms.to_vec(), by.to_owned(), inbox.cloned(), hook)
                    .await
            }
            None => {
                let hook = hook.as_deref();
                dispatch!(self.post_batch(ms, by, inbox, hook))
            }
        }?;
        self.written.notify_one();
        Ok(out)
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
        let out = dispatch!(self.record_inbox(entry, disposition, error))?;
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
        dispatch!(self.inbox_find(source, message_id))
    }

    /// The record with this id.
    ///
    /// # Errors
    /// `NotFound` or a database error.
    pub async fn inbox_record(&self, id: i64) -> Result<InboxRecord, InventoryError> {
        dispatch!(self.inbox_get(id))?.ok_or_else(|| InventoryError::NotFound {
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
        dispatch!(self.inbox_list(filter))
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
        dispatch!(self.inbox_reopen(id, r.state))?;
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
        dispatch!(self.inbox_prune(before, limit))
    }

    /// The balances' generation: bumped by every commit that changed balances or articles, by
    /// any process (SQLite). Always 0 on PostgreSQL, whose nodes learn of changes from the
    /// outbox's `NOTIFY`.
    ///
    /// # Errors
    /// A database error.
    pub async fn generation(&self) -> Result<i64, InventoryError> {
        dispatch!(self.generation())
    }

    /// Balances matching `filter`, by article and warehouse.
    ///
    /// # Errors
    /// A database error.
    pub async fn balances(&self, filter: &BalanceFilter) -> Result<Vec<Balance>, InventoryError> {
        dispatch!(self.balances(filter))
    }

    /// Ledger rows matching `filter`, oldest first, one page.
    ///
    /// # Errors
    /// A database error.
    pub async fn ledger(&self, filter: &LedgerFilter) -> Result<LedgerPage, InventoryError> {
        dispatch!(self.ledger(filter))
    }

    /// The newest ledger rows, newest first (1 to 1000).
    ///
    /// # Errors
    /// A database error.
    pub async fn recent_ledger(&self, limit: u32) -> Result<Vec<LedgerRow>, InventoryError> {
        dispatch!(self.recent_ledger(limit))
    }

    /// Outbox events after `after`, at most `limit`, oldest first.
    ///
    /// # Errors
    /// A database error.
    pub async fn outbox(&self, after: i64, limit: u32) -> Result<Vec<OutboxEvent>, InventoryError> {
        dispatch!(self.outbox(after, limit))
    }

    /// Recomputes every balance from the ledger and reports differences.
    ///
    /// # Errors
    /// A database error.
    pub async fn verify(&self) -> Result<VerifyReport, InventoryError> {
        dispatch!(self.verify())
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

fn stored<T: FromStr<Err = InventoryError>>(s: &str) -> Result<T, InventoryError> {
    s.parse()
        .map_err(|e: InventoryError| InventoryError::Corrupt(e.to_string()))
}

/// A balance being changed inside a posting transaction.
///
/// Its FIFO layers are stored as rows (`inv_layers`, numbered by `seq` in FIFO order), and only
/// a window of them is in memory: `stock.layers` holds the oldest open layers loaded so far
/// (enough for what the postings consume, see [`Working::demand_window`]), then the layers
/// received in this transaction. A receipt loads none.
#[derive(Debug, Clone)]
pub(crate) struct Working {
    stock: Stock,
    level: AlertLevel,
    min_qty: Decimal,
    changed: bool,
    layers: LayerWindow,
}

/// Which of a balance's stored layers are in memory, and what this transaction did to them.
#[derive(Debug, Clone, Default)]
pub(crate) struct LayerWindow {
    /// Stored open layers may follow the ones loaded.
    more: bool,
    /// The last stored layer loaded (-1: none yet).
    last_loaded: i64,
    /// The balance's next `seq` when it was loaded: stored layers are below it.
    stored_end: i64,
    /// The next `seq` to give a new layer.
    next_seq: i64,
    /// Stored layers loaded, by `seq`, with the quantity they had then.
    loaded: BTreeMap<i64, Decimal>,
    /// Layers received in this transaction, by `seq`, with the ledger row that brought each.
    created: BTreeMap<i64, (Layer, Option<i64>)>,
    /// The stock went to zero or below: every stored layer is consumed.
    cleared: bool,
}

impl LayerWindow {
    /// The window of a balance loaded with `next_seq` stored layers numbered, `qty` in stock.
    fn at_load(fifo: bool, qty: Decimal, next_seq: i64) -> Self {
        Self {
            more: fifo && qty > Decimal::ZERO && next_seq > 0,
            last_loaded: -1,
            stored_end: next_seq,
            next_seq,
            ..Self::default()
        }
    }
}

impl Working {
    /// A balance as loaded: its figures (no layers yet), level, the article's minimum and the
    /// balance's next layer number.
    fn loaded(stock: Stock, level: AlertLevel, facts: &ArticleFacts, next_seq: i64) -> Self {
        let fifo = facts.valuation == ValuationMethod::Fifo;
        Self {
            layers: LayerWindow::at_load(fifo, stock.qty, next_seq),
            stock,
            level,
            min_qty: facts.min_qty,
            changed: false,
        }
    }

    /// The quantity of the stored layers in memory (what postings may consume without loading
    /// more).
    fn window_qty(&self) -> Decimal {
        self.stock
            .layers
            .iter()
            .take_while(|l| l.seq.is_some_and(|s| s < self.layers.stored_end))
            .fold(Decimal::ZERO, |a, l| a.saturating_add(l.qty))
    }

    /// Whether more stored layers must be loaded before postings consume `demand`.
    fn demand_window(&self, demand: Decimal) -> bool {
        self.layers.more && self.window_qty() < demand
    }

    /// Adds stored layers read after the ones loaded (oldest first); `complete` when there are
    /// no more.
    fn extend_window(&mut self, read: Vec<Layer>, complete: bool) {
        let at = self
            .stock
            .layers
            .iter()
            .position(|l| l.seq.is_none_or(|s| s >= self.layers.stored_end))
            .unwrap_or(self.stock.layers.len());
        for (i, l) in read.into_iter().enumerate() {
            if let Some(seq) = l.seq {
                self.layers.last_loaded = self.layers.last_loaded.max(seq);
                self.layers.loaded.insert(seq, l.qty);
            }
            self.stock.layers.insert(at + i, l);
        }
        if complete {
            self.layers.more = false;
        }
    }

    /// After a posting changed `stock`: numbers its new layers (returned), and notes a stock
    /// that went to zero or below (every stored layer consumed).
    fn settle_layers(&mut self) -> Vec<i64> {
        let mut new = Vec::new();
        for l in &mut self.stock.layers {
            if l.seq.is_none() {
                let seq = self.layers.next_seq;
                self.layers.next_seq = seq.saturating_add(1);
                l.seq = Some(seq);
                self.layers.created.insert(seq, (*l, None));
                new.push(seq);
            }
        }
        if self.stock.qty <= Decimal::ZERO && self.layers.more {
            // The layers not loaded went with the rest (the ones loaded are written one by one).
            self.layers.cleared = true;
            self.layers.more = false;
        }
        new
    }
}

/// A balance's open layers as a JSON array (oldest first) in a query over `inv_balances b`
/// (SQLite).
pub(crate) const LAYERS_JSON_SQLITE: &str = "(SELECT json_group_array(json_object('qty', l.qty, \
     'rate', l.rate, 'received_at', l.received_at) ORDER BY l.seq) FROM inv_layers l \
     WHERE l.sku = b.sku AND l.warehouse = b.warehouse AND l.qty <> '0')";

/// As [`LAYERS_JSON_SQLITE`], on PostgreSQL.
pub(crate) const LAYERS_JSON_POSTGRES: &str = "(SELECT COALESCE(json_agg(json_build_object('qty', \
     l.qty, 'rate', l.rate, 'received_at', l.received_at) ORDER BY l.seq), '[]')::text \
     FROM inv_layers l WHERE l.sku = b.sku AND l.warehouse = b.warehouse AND l.qty <> '0')";

/// Stored layers read at a time when a posting needs more of them.
const LAYERS_PER_READ: usize = 16;

/// What the movements of one request may consume from each balance they take goods from: the
/// quantity issued or transferred out; a count may consume everything (`Decimal::MAX`).
fn demands(ms: &[NewMovement]) -> BTreeMap<(Sku, WarehouseCode), Decimal> {
    let mut out: BTreeMap<(Sku, WarehouseCode), Decimal> = BTreeMap::new();
    for m in ms {
        let want = match m.kind {
            MovementKind::Receipt => continue,
            MovementKind::Issue | MovementKind::Transfer => m.qty.get(),
            MovementKind::Count => Decimal::MAX,
        };
        let e = out.entry((m.sku.clone(), m.warehouse.clone())).or_default();
        *e = e.saturating_add(want);
    }
    out
}

/// A consumption of a stored layer, recorded against the ledger row that consumed it.
#[derive(Debug, Clone)]
pub(crate) struct LayerUse {
    ledger_id: i64,
    sku: Sku,
    warehouse: WarehouseCode,
    seq: i64,
    qty: Decimal,
    rate: Decimal,
}

/// An article's facts a posting needs.
#[derive(Debug, Clone)]
struct ArticleFacts {
    valuation: ValuationMethod,
    min_qty: Decimal,
    allow_negative: bool,
}

/// One ledger row about to be written.
#[derive(Debug, Clone)]
struct PendingRow {
    warehouse: WarehouseCode,
    change: Change,
    after: After,
    /// The layers it brought in (their `seq`).
    new_layers: Vec<i64>,
}

/// A balance's figures after a posting (what its ledger row records).
#[derive(Debug, Clone, Copy)]
struct After {
    qty: Decimal,
    value: Decimal,
    rate: Decimal,
}

impl After {
    fn of(s: &Stock) -> Self {
        Self {
            qty: s.qty,
            value: s.value,
            rate: s.rate,
        }
    }
}

/// What a write transaction has loaded and computed so far: article facts, checked warehouses and
/// the balances as postings left them. A group of SQLite postings shares one.
#[derive(Debug, Default)]
pub(crate) struct Session {
    facts: BTreeMap<Sku, ArticleFacts>,
    warehouses: std::collections::BTreeSet<WarehouseCode>,
    work: BTreeMap<(Sku, WarehouseCode), Working>,
    /// Layer consumptions written since the balances were last written.
    uses: Vec<LayerUse>,
    /// Set while a posting writes (after it was planned, until it returned): a posting that
    /// fails with this set has left writes in the transaction.
    pub(crate) writing: bool,
}

/// Loads, in three statements, what the postings of one SQLite group would otherwise read one
/// statement at a time as each first touches it: the facts of their articles, their
/// warehouses, and their balances (inside the committer's transaction, so what is loaded is
/// what the postings would have read). Best effort: a missing or archived article or
/// warehouse, or a row that cannot be read, is left out, and the posting that needs it meets it
/// as before (and fails alone); an error of the query itself leaves the rest to the postings.
pub(crate) async fn prefetch_sqlite(
    conn: &mut sqlx::SqliteConnection,
    session: &mut Session,
    ms: &[&NewMovement],
) {
    use sqlx::Row;
    let mut skus: BTreeMap<&str, &Sku> = BTreeMap::new();
    let mut codes: BTreeMap<&str, &WarehouseCode> = BTreeMap::new();
    let mut keys: std::collections::BTreeSet<(&str, &str)> = std::collections::BTreeSet::new();
    for m in ms {
        skus.insert(m.sku.as_str(), &m.sku);
        codes.insert(m.warehouse.as_str(), &m.warehouse);
        keys.insert((m.sku.as_str(), m.warehouse.as_str()));
        if let Some(to) = &m.to_warehouse {
            codes.insert(to.as_str(), to);
            keys.insert((m.sku.as_str(), to.as_str()));
        }
    }
    let all_skus = skus.clone();
    let all_codes = codes.clone();
    skus.retain(|_, v| !session.facts.contains_key(*v));
    codes.retain(|_, v| !session.warehouses.contains(*v));
    let marks = |n: usize| vec!["?"; n].join(", ");
    if !skus.is_empty() {
        let sql = format!(
            "SELECT sku, valuation, min_qty, allow_negative FROM inv_articles \
             WHERE NOT archived AND sku IN ({})",
            marks(skus.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for k in skus.keys() {
            q = q.bind(*k);
        }
        if let Ok(rows) = q.fetch_all(&mut *conn).await {
            for row in rows {
                let facts = (|| -> Result<(Sku, ArticleFacts), InventoryError> {
                    let sku: String = row.try_get("sku")?;
                    let sku = (*skus
                        .get(sku.as_str())
                        .ok_or(InventoryError::Corrupt("an article not asked for".into()))?)
                    .clone();
                    Ok((
                        sku,
                        ArticleFacts {
                            valuation: stored(&row.try_get::<String, _>("valuation")?)?,
                            min_qty: dec("min_qty", &row.try_get::<String, _>("min_qty")?)?,
                            allow_negative: row.try_get("allow_negative")?,
                        },
                    ))
                })();
                if let Ok((sku, f)) = facts {
                    session.facts.insert(sku, f);
                }
            }
        }
    }
    if !codes.is_empty() {
        let sql = format!(
            "SELECT code FROM inv_warehouses WHERE NOT archived AND code IN ({})",
            marks(codes.len())
        );
        let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
        for k in codes.keys() {
            q = q.bind(*k);
        }
        if let Ok(found) = q.fetch_all(&mut *conn).await {
            for code in found {
                if let Some(c) = codes.get(code.as_str()) {
                    session.warehouses.insert((*c).clone());
                }
            }
        }
    }
    let wanted: Vec<&str> = {
        let mut v: Vec<&str> = keys
            .iter()
            .filter(|(sku, wh)| {
                all_skus
                    .get(sku)
                    .is_some_and(|s| session.facts.contains_key(*s))
                    && !session
                        .work
                        .keys()
                        .any(|(s, w)| s.as_str() == *sku && w.as_str() == *wh)
            })
            .map(|(sku, _)| *sku)
            .collect();
        v.dedup();
        v
    };
    if wanted.is_empty() {
        return;
    }
    let sql = format!(
        "SELECT sku, warehouse, qty, value, rate, layer_seq, level FROM inv_balances \
         WHERE sku IN ({})",
        marks(wanted.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for k in &wanted {
        q = q.bind(*k);
    }
    let Ok(rows) = q.fetch_all(&mut *conn).await else {
        return;
    };
    for row in rows {
        type Loaded = Option<((Sku, WarehouseCode), Working)>;
        let loaded = (|| -> Result<Loaded, InventoryError> {
            let sku: String = row.try_get("sku")?;
            let wh: String = row.try_get("warehouse")?;
            if !keys.contains(&(sku.as_str(), wh.as_str())) {
                return Ok(None);
            }
            let (Some((sku, facts)), Some(code)) = (
                all_skus
                    .get(sku.as_str())
                    .and_then(|s| session.facts.get_key_value(*s)),
                all_codes.get(wh.as_str()).copied().cloned(),
            ) else {
                return Ok(None);
            };
            Ok(Some((
                (sku.clone(), code),
                Working::loaded(
                    Stock {
                        qty: dec("qty", &row.try_get::<String, _>("qty")?)?,
                        value: dec("value", &row.try_get::<String, _>("value")?)?,
                        rate: dec("rate", &row.try_get::<String, _>("rate")?)?,
                        layers: VecDeque::new(),
                    },
                    stored(&row.try_get::<String, _>("level")?)?,
                    facts,
                    row.try_get("layer_seq")?,
                ),
            )))
        })();
        if let Ok(Some((key, w))) = loaded {
            session.work.entry(key).or_insert(w);
        }
    }
}

/// Writes that must commit with a posting, inside its transaction: an idempotency record, an
/// order's or an import's own rows. It runs after the posting's movements, ledger rows and inbox
/// record are written (balances and events may follow); an error rolls the posting back and is
/// its caller's answer. On SQLite it runs inside the group committer (see `BatchedHook` for
/// hooks that write for the whole group at once).
#[async_trait::async_trait]
pub trait PostingHook: Send + Sync + 'static {
    /// On SQLite.
    ///
    /// # Errors
    /// Any error rolls the posting back.
    async fn sqlite(
        &self,
        conn: &mut sqlx::SqliteConnection,
        posted: &[Movement],
    ) -> Result<(), InventoryError>;
    /// On PostgreSQL.
    ///
    /// # Errors
    /// Any error rolls the posting back.
    async fn postgres(
        &self,
        conn: &mut sqlx::PgConnection,
        posted: &[Movement],
    ) -> Result<(), InventoryError>;

    /// SQLite's group committer may, instead of calling [`Self::sqlite`] for each posting, have
    /// the hooks of one group write together at its end, in one statement (a statement is most
    /// of what a posting costs there). `None` (the default): one call per posting.
    fn batched(&self) -> Option<&dyn BatchedHook> {
        None
    }
}

/// A row a [`BatchedHook`] prepared for its posting, written with the group's others.
pub type BatchRow = Box<dyn std::any::Any + Send>;

/// The group-at-once form of a [`PostingHook`] on SQLite.
#[async_trait::async_trait]
pub trait BatchedHook: Send + Sync {
    /// What rows of one kind are written together by one [`Self::write_batch`].
    fn kind(&self) -> &'static str;
    /// This posting's row, computed from what it posted (nothing written yet).
    ///
    /// # Errors
    /// Any error rolls the posting back.
    fn prepare(&self, posted: &[Movement]) -> Result<BatchRow, InventoryError>;
    /// Writes the rows of one group in one go, inside its transaction, and returns the rows
    /// refused (by index, with why): their postings are rolled back and answered with that
    /// error, and the group runs again without them.
    ///
    /// # Errors
    /// A failure of the whole write (the group fails).
    async fn write_batch(
        &self,
        conn: &mut sqlx::SqliteConnection,
        rows: Vec<BatchRow>,
    ) -> Result<Vec<(usize, InventoryError)>, InventoryError>;
}

/// A movement computed but not written: its id, ledger rows to write and level events.
type Planned<'a> = (
    &'a NewMovement,
    String,
    Vec<PendingRow>,
    Vec<(&'static str, serde_json::Value)>,
);

/// Computes every movement of one request against `session`; a refusal puts `session` back as
/// it was.
fn plan_all<'a>(
    ms: &'a [NewMovement],
    by: &str,
    now: DateTime<Utc>,
    session: &mut Session,
    keys: &[(Sku, WarehouseCode)],
) -> Result<Vec<Planned<'a>>, InventoryError> {
    let snapshot: Vec<((Sku, WarehouseCode), Working)> = keys
        .iter()
        .filter_map(|k| session.work.get(k).map(|w| (k.clone(), w.clone())))
        .collect();
    let mut planned = Vec::with_capacity(ms.len());
    for m in ms {
        let step = (|| {
            let f = session
                .facts
                .get(&m.sku)
                .ok_or_else(|| InventoryError::Corrupt("article facts missing".into()))?;
            let before: Vec<(WarehouseCode, AlertLevel)> = std::iter::once(&m.warehouse)
                .chain(m.to_warehouse.as_ref())
                .filter_map(|w| {
                    session
                        .work
                        .get(&(m.sku.clone(), w.clone()))
                        .map(|x| (w.clone(), x.level))
                })
                .collect();
            let pending = plan_movement(m, f, &mut session.work, now)?;
            let id = uuid::Uuid::now_v7().to_string();
            let mut levels = Vec::new();
            for (wh, from) in before {
                let Some(w) = session.work.get_mut(&(m.sku.clone(), wh.clone())) else {
                    continue;
                };
                let to = AlertLevel::of(w.stock.qty, w.min_qty);
                w.level = to;
                if to != from {
                    levels.push((
                        TOPIC_LEVEL_CHANGED,
                        json!({
                            "sku": m.sku, "warehouse": wh, "from": from, "to": to,
                            "qty": text(w.stock.qty), "min_qty": text(w.min_qty),
                            "movement_id": id, "cause": "movement", "by": by, "at": now,
                        }),
                    ));
                }
            }
            Ok::<_, InventoryError>((m, id, pending, levels))
        })();
        match step {
            Ok(p) => planned.push(p),
            Err(e) => {
                for (k, w) in snapshot {
                    session.work.insert(k, w);
                }
                return Err(e);
            }
        }
    }
    Ok(planned)
}

/// The error for a posting whose figures would leave the limits.
fn beyond(field: &str, m: &NewMovement, wh: &WarehouseCode, what: String) -> InventoryError {
    InventoryError::OutOfRange {
        field: field.to_owned(),
        message: format!(
            "this {} of {} in {wh} would take {what}",
            m.kind.as_str(),
            m.sku
        ),
    }
}

/// Refuses a result that leaves the documented limits: quantities below [`MAX_QTY`], values
/// (of the balance and of the change) below [`MAX_VALUE`], rates below [`MAX_UNIT_COST`], in
/// magnitude. The field named is the input that carried it there: `qty`, or `unit_cost` for a
/// value reached at a given cost.
fn check_limits(
    m: &NewMovement,
    wh: &WarehouseCode,
    s: &Stock,
    change: &Change,
) -> Result<(), InventoryError> {
    let value_field = if m.unit_cost.is_some() {
        "unit_cost"
    } else {
        "qty"
    };
    if s.qty.abs() >= MAX_QTY {
        return Err(beyond(
            "qty",
            m,
            wh,
            format!(
                "the balance to {} units; a balance stays below 10^12",
                s.qty
            ),
        ));
    }
    if s.value.abs() >= MAX_VALUE || change.value.abs() >= MAX_VALUE {
        return Err(beyond(
            value_field,
            m,
            wh,
            format!(
                "the value to {} (a change of {}); values stay below 10^16",
                s.value, change.value
            ),
        ));
    }
    if s.rate.abs() >= MAX_UNIT_COST {
        return Err(beyond(
            value_field,
            m,
            wh,
            format!("the rate to {}; rates stay below 10^12", s.rate),
        ));
    }
    Ok(())
}

/// A valuation refusal as the store reports it.
fn refused(m: &NewMovement, wh: &WarehouseCode, e: ValuationError) -> InventoryError {
    match e {
        ValuationError::Insufficient { available } => InventoryError::InsufficientStock {
            sku: m.sku.to_string(),
            warehouse: wh.to_string(),
            available,
            requested: m.qty.get(),
        },
        ValuationError::OutOfRange => beyond(
            "qty",
            m,
            wh,
            "a figure beyond what can be computed; the balance is past the limits".to_owned(),
        ),
    }
}

/// Computes one movement posted `now` (the date of the layers it receives).
fn plan_movement(
    m: &NewMovement,
    facts: &ArticleFacts,
    work: &mut BTreeMap<(Sku, WarehouseCode), Working>,
    now: DateTime<Utc>,
) -> Result<Vec<PendingRow>, InventoryError> {
    let method = facts.valuation;
    let key = (m.sku.clone(), m.warehouse.clone());
    let w = work
        .get(&key)
        .ok_or_else(|| InventoryError::Corrupt("balance not locked".into()))?;
    let qty = m.qty.get();
    // Computed on a copy, kept only once every figure is within the limits.
    let mut next = w.stock.clone();
    let change = match m.kind {
        MovementKind::Receipt => {
            let cost = m
                .unit_cost
                .map(crate::types::Money::get)
                .unwrap_or_default();
            next.receive_at_into(method, qty, cost, now)
        }
        MovementKind::Issue | MovementKind::Transfer => {
            if qty > next.qty && !facts.allow_negative {
                Err(ValuationError::Insufficient {
                    available: next.qty.max(Decimal::ZERO),
                })
            } else {
                next.issue_into(method, qty)
            }
        }
        MovementKind::Count => {
            next.count_into(method, qty, m.unit_cost.map(crate::types::Money::get), now)
        }
    }
    .map_err(|e| refused(m, &m.warehouse, e))?;
    check_limits(m, &m.warehouse, &next, &change)?;
    let mut rows = Vec::with_capacity(2);
    let dest = match (m.kind, &m.to_warehouse) {
        (MovementKind::Transfer, Some(to)) => {
            let d = work
                .get(&(m.sku.clone(), to.clone()))
                .ok_or_else(|| InventoryError::Corrupt("balance not locked".into()))?;
            let mut d_next = d.stock.clone();
            // Exactly the value the source gave up: rounding must not make or lose value.
            let inn = d_next
                .receive_into(method, &change.consumed, -change.value, now)
                .map_err(|e| refused(m, to, e))?;
            check_limits(m, to, &d_next, &inn)?;
            Some((to.clone(), d_next, inn))
        }
        _ => None,
    };
    let after = After::of(&next);
    let mut new_layers = Vec::new();
    if let Some(w) = work.get_mut(&key) {
        w.stock = next;
        w.changed = true;
        new_layers = w.settle_layers();
    }
    rows.push(PendingRow {
        warehouse: m.warehouse.clone(),
        change,
        after,
        new_layers,
    });
    if let Some((to, d_next, inn)) = dest {
        let after = After::of(&d_next);
        let mut new_layers = Vec::new();
        if let Some(d) = work.get_mut(&(m.sku.clone(), to.clone())) {
            d.stock = d_next;
            d.changed = true;
            new_layers = d.settle_layers();
        }
        rows.push(PendingRow {
            warehouse: to,
            change: inn,
            after,
            new_layers,
        });
    }
    Ok(rows)
}

macro_rules! backend {
    ($module:ident, $pool:ty, $conn:ty, begin = $begin:literal, lock = $lock:literal, share = $share:literal, create_first = $create_first:literal, hook = $hook:ident, generation = $generation:literal, layers_json = $layers_json:expr) => {
        pub(crate) mod $module {
            use super::*;
            use sqlx::Row;

            fn article_of<R: Row>(r: &R) -> Result<Article, InventoryError>
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

            fn warehouse_of<R: Row>(r: &R) -> Result<Warehouse, InventoryError>
            where
                for<'a> &'a str: sqlx::ColumnIndex<R>,
                for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
                for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
                for<'a> DateTime<Utc>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
            {
                let code: String = r.try_get("code")?;
                Ok(Warehouse {
                    code: WarehouseCode::parse(&code)
                        .map_err(|e| InventoryError::Corrupt(e.to_string()))?,
                    name: r.try_get("name")?,
                    archived: r.try_get("archived")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                })
            }

            fn ledger_of<R: Row>(r: &R) -> Result<LedgerRow, InventoryError>
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

            const ARTICLE_COLS: &str = "sku, name, unit, valuation, min_qty, reorder_qty, \
                allow_negative, archived, created_at, updated_at";

            pub(crate) async fn create_article(
                pool: &$pool,
                a: &NewArticle,
            ) -> Result<Article, InventoryError> {
                let now = Utc::now();
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO inv_articles ({ARTICLE_COLS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, FALSE, $8, $8) \
                     ON CONFLICT (sku) DO NOTHING RETURNING {ARTICLE_COLS}"
                )))
                .bind(a.sku.as_str())
                .bind(&a.name)
                .bind(&a.unit)
                .bind(a.valuation.as_str())
                .bind(text(a.min_qty.get()))
                .bind(text(a.reorder_qty.get()))
                .bind(a.allow_negative)
                .bind(now)
                .fetch_optional(pool)
                .await?;
                match row {
                    Some(r) => article_of(&r),
                    None => Err(InventoryError::Conflict {
                        code: "duplicate_sku",
                        message: format!("an article with sku {:?} already exists", a.sku.as_str()),
                    }),
                }
            }

            pub(crate) async fn article(pool: &$pool, sku: &Sku) -> Result<Article, InventoryError> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {ARTICLE_COLS} FROM inv_articles WHERE sku = $1"
                )))
                .bind(sku.as_str())
                .fetch_optional(pool)
                .await?;
                match row {
                    Some(r) => article_of(&r),
                    None => Err(InventoryError::NotFound {
                        what: "article",
                        key: sku.to_string(),
                    }),
                }
            }

            pub(crate) async fn articles(
                pool: &$pool,
                after: Option<&Sku>,
                limit: u32,
                include_archived: bool,
            ) -> Result<Vec<Article>, InventoryError> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {ARTICLE_COLS} FROM inv_articles \
                     WHERE ($1 IS NULL OR sku > $1) AND ($2 OR NOT archived) \
                     ORDER BY sku LIMIT $3"
                )))
                .bind(after.map(Sku::as_str))
                .bind(include_archived)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
                rows.iter().map(article_of).collect()
            }

            pub(crate) async fn update_article(
                pool: &$pool,
                sku: &Sku,
                p: &ArticlePatch,
                by: &str,
            ) -> Result<Article, InventoryError> {
                let mut tx = pool.begin_with($begin).await?;
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {ARTICLE_COLS} FROM inv_articles WHERE sku = $1{}",
                    $lock
                )))
                .bind(sku.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    return Err(InventoryError::NotFound {
                        what: "article",
                        key: sku.to_string(),
                    });
                };
                let old = article_of(&row)?;
                if let Some(v) = p.valuation
                    && v != old.valuation
                {
                    let used: Option<i64> =
                        sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM inv_ledger WHERE sku = $1 LIMIT 1")
                            .bind(sku.as_str())
                            .fetch_optional(&mut *tx)
                            .await?;
                    if used.is_some() {
                        return Err(InventoryError::Conflict {
                            code: "valuation_locked",
                            message: format!(
                                "article {sku} has ledger rows; its valuation method stays {}",
                                old.valuation.as_str()
                            ),
                        });
                    }
                }
                let now = Utc::now();
                let min_qty = p.min_qty.map_or(old.min_qty, |q| q.get());
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE inv_articles SET name = $2, unit = $3, valuation = $4, min_qty = $5, \
                            reorder_qty = $6, allow_negative = $7, archived = $8, updated_at = $9 \
                     WHERE sku = $1 RETURNING {ARTICLE_COLS}"
                )))
                .bind(sku.as_str())
                .bind(p.name.as_deref().unwrap_or(&old.name))
                .bind(p.unit.as_deref().unwrap_or(&old.unit))
                .bind(p.valuation.unwrap_or(old.valuation).as_str())
                .bind(text(min_qty))
                .bind(text(p.reorder_qty.map_or(old.reorder_qty, |q| q.get())))
                .bind(p.allow_negative.unwrap_or(old.allow_negative))
                .bind(p.archived.unwrap_or(old.archived))
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                let new = article_of(&row)?;
                if min_qty != old.min_qty {
                    // The thresholds moved: levels may change without a posting.
                    let rows = sqlx::query(
                        "SELECT warehouse, qty, level FROM inv_balances WHERE sku = $1 ORDER BY warehouse",
                    )
                    .bind(sku.as_str())
                    .fetch_all(&mut *tx)
                    .await?;
                    for r in rows {
                        let warehouse: String = r.try_get("warehouse")?;
                        let qty = dec("qty", &r.try_get::<String, _>("qty")?)?;
                        let from: AlertLevel = stored(&r.try_get::<String, _>("level")?)?;
                        let to = AlertLevel::of(qty, min_qty);
                        if from == to {
                            continue;
                        }
                        sqlx::query("UPDATE inv_balances SET level = $3 WHERE sku = $1 AND warehouse = $2")
                            .bind(sku.as_str())
                            .bind(&warehouse)
                            .bind(to.as_str())
                            .execute(&mut *tx)
                            .await?;
                        let payload = json!({
                            "sku": sku.as_str(), "warehouse": warehouse, "from": from, "to": to,
                            "qty": text(qty), "min_qty": text(min_qty), "movement_id": null,
                            "cause": "min_qty_changed", "by": by, "at": now,
                        });
                        sqlx::query("INSERT INTO malaka_outbox (topic, payload, created_at) VALUES ($1, $2, $3)")
                            .bind(TOPIC_LEVEL_CHANGED)
                            .bind(payload.to_string())
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                bump_generation(&mut tx).await?;
                tx.commit().await?;
                Ok(new)
            }

            pub(crate) async fn delete_article(
                pool: &$pool,
                sku: &Sku,
            ) -> Result<Option<Article>, InventoryError> {
                let mut tx = pool.begin_with($begin).await?;
                let used: Option<i64> =
                    sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM inv_ledger WHERE sku = $1 LIMIT 1")
                        .bind(sku.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                let out = if used.is_some() {
                    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "UPDATE inv_articles SET archived = TRUE, updated_at = $2 WHERE sku = $1 \
                         RETURNING {ARTICLE_COLS}"
                    )))
                    .bind(sku.as_str())
                    .bind(Utc::now())
                    .fetch_optional(&mut *tx)
                    .await?;
                    match row {
                        Some(r) => Some(article_of(&r)?),
                        None => {
                            return Err(InventoryError::NotFound {
                                what: "article",
                                key: sku.to_string(),
                            });
                        }
                    }
                } else {
                    sqlx::query("DELETE FROM inv_balances WHERE sku = $1")
                        .bind(sku.as_str())
                        .execute(&mut *tx)
                        .await?;
                    let n = sqlx::query("DELETE FROM inv_articles WHERE sku = $1")
                        .bind(sku.as_str())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if n == 0 {
                        return Err(InventoryError::NotFound {
                            what: "article",
                            key: sku.to_string(),
                        });
                    }
                    None
                };
                bump_generation(&mut tx).await?;
                tx.commit().await?;
                Ok(out)
            }

            pub(crate) async fn create_warehouse(
                pool: &$pool,
                code: &WarehouseCode,
                name: &str,
            ) -> Result<Warehouse, InventoryError> {
                let row = sqlx::query(
                    "INSERT INTO inv_warehouses (code, name, archived, created_at, updated_at) \
                     VALUES ($1, $2, FALSE, $3, $3) ON CONFLICT (code) DO NOTHING \
                     RETURNING code, name, archived, created_at, updated_at",
                )
                .bind(code.as_str())
                .bind(name)
                .bind(Utc::now())
                .fetch_optional(pool)
                .await?;
                match row {
                    Some(r) => warehouse_of(&r),
                    None => Err(InventoryError::Conflict {
                        code: "duplicate_warehouse",
                        message: format!("a warehouse with code {:?} already exists", code.as_str()),
                    }),
                }
            }

            pub(crate) async fn warehouse(
                pool: &$pool,
                code: &WarehouseCode,
            ) -> Result<Warehouse, InventoryError> {
                let row = sqlx::query(
                    "SELECT code, name, archived, created_at, updated_at FROM inv_warehouses WHERE code = $1",
                )
                .bind(code.as_str())
                .fetch_optional(pool)
                .await?;
                match row {
                    Some(r) => warehouse_of(&r),
                    None => Err(InventoryError::NotFound {
                        what: "warehouse",
                        key: code.to_string(),
                    }),
                }
            }

            pub(crate) async fn warehouses(
                pool: &$pool,
                include_archived: bool,
            ) -> Result<Vec<Warehouse>, InventoryError> {
                let rows = sqlx::query(
                    "SELECT code, name, archived, created_at, updated_at FROM inv_warehouses \
                     WHERE $1 OR NOT archived ORDER BY code",
                )
                .bind(include_archived)
                .fetch_all(pool)
                .await?;
                rows.iter().map(warehouse_of).collect()
            }

            pub(crate) async fn update_warehouse(
                pool: &$pool,
                code: &WarehouseCode,
                name: Option<&str>,
                archived: Option<bool>,
            ) -> Result<Warehouse, InventoryError> {
                let row = sqlx::query(
                    "UPDATE inv_warehouses SET name = COALESCE($2, name), \
                            archived = COALESCE($3, archived), updated_at = $4 \
                     WHERE code = $1 RETURNING code, name, archived, created_at, updated_at",
                )
                .bind(code.as_str())
                .bind(name)
                .bind(archived)
                .bind(Utc::now())
                .fetch_optional(pool)
                .await?;
                match row {
                    Some(r) => warehouse_of(&r),
                    None => Err(InventoryError::NotFound {
                        what: "warehouse",
                        key: code.to_string(),
                    }),
                }
            }

            pub(crate) async fn post_batch(
                pool: &$pool,
                ms: &[NewMovement],
                by: &str,
                inbox: Option<&InboxEntry>,
                hook: Option<&dyn PostingHook>,
            ) -> Result<Vec<Movement>, InventoryError> {
                let mut tx = pool.begin_with($begin).await?;
                let mut session = Session::default();
                let out = post_in(&mut tx, ms, by, &mut session, false, inbox, hook).await?;
                tx.commit().await?;
                Ok(out)
            }

            const INBOX_COLS: &str = "id, source, message_id, kind, payload, state, attempts, \
                errors, movements, received_at, updated_at";

            fn inbox_of<R: Row>(r: &R) -> Result<InboxRecord, InventoryError>
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

            /// The message's record, read inside a write transaction (locked on PostgreSQL).
            async fn inbox_locked(
                conn: &mut $conn,
                e: &InboxEntry,
            ) -> Result<Option<InboxRecord>, InventoryError> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {INBOX_COLS} FROM malaka_inbox WHERE source = $1 AND message_id = $2{}",
                    $lock
                )))
                .bind(&e.source)
                .bind(&e.id)
                .fetch_optional(&mut *conn)
                .await?;
                row.as_ref().map(inbox_of).transpose()
            }

            /// Writes the message's record as `state` (a new row, or the `retrying` one
            /// updated), with this attempt's error and the movements it posted; a `processed`
            /// record also writes the entry's event to the outbox.
            async fn inbox_write(
                conn: &mut $conn,
                e: &InboxEntry,
                had: Option<&InboxRecord>,
                state: InboxState,
                error: Option<&str>,
                movements: &[&str],
                now: DateTime<Utc>,
            ) -> Result<(), InventoryError> {
                let mut errors = had.map(|r| r.errors.clone()).unwrap_or_default();
                if let Some(why) = error {
                    errors.push(InboxAttempt { at: now, error: why.to_owned() });
                }
                let errors = serde_json::to_string(&errors)?;
                let movements = serde_json::to_string(movements)?;
                match had {
                    Some(r) => {
                        sqlx::query(
                            "UPDATE malaka_inbox SET state = $2, attempts = attempts + 1, \
                                    errors = $3, movements = $4, payload = $5, updated_at = $6 \
                             WHERE id = $1",
                        )
                        .bind(r.id)
                        .bind(state.as_str())
                        .bind(&errors)
                        .bind(&movements)
                        .bind(&e.payload)
                        .bind(now)
                        .execute(&mut *conn)
                        .await?;
                    }
                    None => {
                        sqlx::query(
                            "INSERT INTO malaka_inbox (source, message_id, kind, payload, state, \
                                    attempts, errors, movements, received_at, updated_at) \
                             VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, $8)",
                        )
                        .bind(&e.source)
                        .bind(&e.id)
                        .bind(&e.kind)
                        .bind(&e.payload)
                        .bind(state.as_str())
                        .bind(&errors)
                        .bind(&movements)
                        .bind(now)
                        .execute(&mut *conn)
                        .await?;
                    }
                }
                if state == InboxState::Processed
                    && let Some(event) = &e.event
                {
                    let payload = json!({
                        "source": e.source, "message_id": e.id, "data": event,
                    });
                    sqlx::query("INSERT INTO malaka_outbox (topic, payload, created_at) VALUES ($1, $2, $3)")
                        .bind(&e.kind)
                        .bind(payload.to_string())
                        .bind(now)
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            }

            pub(crate) async fn record_inbox(
                pool: &$pool,
                e: &InboxEntry,
                disposition: Disposition,
                error: Option<&str>,
            ) -> Result<Recorded, InventoryError> {
                let now = Utc::now();
                let mut tx = pool.begin_with($begin).await?;
                let had = inbox_locked(&mut tx, e).await?;
                if let Some(r) = had.as_ref().filter(|r| r.state.is_final()) {
                    return Ok(Recorded::Duplicate(r.clone()));
                }
                let attempts = had.as_ref().map_or(1, |r| r.attempts + 1);
                let state = next_state(disposition, attempts);
                inbox_write(&mut tx, e, had.as_ref(), state, error, &[], now).await?;
                let r = inbox_locked(&mut tx, e).await?.ok_or_else(|| {
                    InventoryError::Corrupt("an inbox record vanished in its transaction".into())
                })?;
                tx.commit().await?;
                Ok(Recorded::Now(r))
            }

            pub(crate) async fn inbox_find(
                pool: &$pool,
                source: &str,
                message_id: &str,
            ) -> Result<Option<InboxRecord>, InventoryError> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {INBOX_COLS} FROM malaka_inbox WHERE source = $1 AND message_id = $2"
                )))
                .bind(source)
                .bind(message_id)
                .fetch_optional(pool)
                .await?;
                row.as_ref().map(inbox_of).transpose()
            }

            pub(crate) async fn inbox_get(
                pool: &$pool,
                id: i64,
            ) -> Result<Option<InboxRecord>, InventoryError> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {INBOX_COLS} FROM malaka_inbox WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(pool)
                .await?;
                row.as_ref().map(inbox_of).transpose()
            }

            pub(crate) async fn inbox_list(
                pool: &$pool,
                f: &InboxFilter,
            ) -> Result<Vec<InboxRecord>, InventoryError> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {INBOX_COLS} FROM malaka_inbox \
                     WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR source = $2) AND id < $3 \
                     ORDER BY id DESC LIMIT $4"
                )))
                .bind(f.state.map(InboxState::as_str))
                .bind(f.source.as_deref())
                .bind(f.before.unwrap_or(i64::MAX))
                .bind(i64::from(f.limit.unwrap_or(100).clamp(1, 1000)))
                .fetch_all(pool)
                .await?;
                rows.iter().map(inbox_of).collect()
            }

            pub(crate) async fn inbox_reopen(
                pool: &$pool,
                id: i64,
                was: InboxState,
            ) -> Result<(), InventoryError> {
                let n = sqlx::query(
                    "UPDATE malaka_inbox SET state = 'retrying', updated_at = $3 \
                     WHERE id = $1 AND state = $2",
                )
                .bind(id)
                .bind(was.as_str())
                .bind(Utc::now())
                .execute(pool)
                .await?
                .rows_affected();
                if n == 0 {
                    return Err(InventoryError::Conflict {
                        code: "not_replayable",
                        message: format!("inbox record {id} changed meanwhile; look again"),
                    });
                }
                Ok(())
            }

            pub(crate) async fn inbox_prune(
                pool: &$pool,
                before: DateTime<Utc>,
                limit: u32,
            ) -> Result<u64, InventoryError> {
                Ok(sqlx::query(
                    "DELETE FROM malaka_inbox WHERE id IN (SELECT id FROM malaka_inbox \
                     WHERE received_at < $1 AND state <> 'retrying' ORDER BY id LIMIT $2)",
                )
                .bind(before)
                .bind(i64::from(limit))
                .execute(pool)
                .await?
                .rows_affected())
            }

            /// Posts `ms` through `conn`, which is inside a write transaction, in two phases:
            /// load and compute (a refusal returns here, having written nothing and left
            /// `session` as it was), then write the movements, ledger rows and events. Balances
            /// are written now, or, with `defer_balances`, left changed in `session` for
            /// [`write_balances`].
            pub(crate) async fn post_in(
                conn: &mut $conn,
                ms: &[NewMovement],
                by: &str,
                session: &mut Session,
                defer_balances: bool,
                inbox: Option<&InboxEntry>,
                hook: Option<&dyn PostingHook>,
            ) -> Result<Vec<Movement>, InventoryError> {
                let now = Utc::now();
                let mut inbox_had = None;
                if let Some(e) = inbox {
                    inbox_had = inbox_locked(&mut *conn, e).await?;
                    if let Some(r) = inbox_had.as_ref().filter(|r| r.state.is_final()) {
                        return Err(InventoryError::Conflict {
                            code: "duplicate_message",
                            message: format!(
                                "message {} from {} was already received ({})",
                                e.id,
                                e.source,
                                r.state.as_str()
                            ),
                        });
                    }
                }
                // Articles and warehouses: they exist and take movements.
                let mut keys: Vec<(Sku, WarehouseCode)> = Vec::new();
                let mut codes: Vec<WarehouseCode> = Vec::new();
                for m in ms {
                    keys.push((m.sku.clone(), m.warehouse.clone()));
                    codes.push(m.warehouse.clone());
                    if let Some(to) = &m.to_warehouse {
                        keys.push((m.sku.clone(), to.clone()));
                        codes.push(to.clone());
                    }
                    if session.facts.contains_key(&m.sku) {
                        continue;
                    }
                    // Shared lock on PostgreSQL: an article change (valuation, min_qty) waits
                    // for the postings under way, and they for it.
                    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT valuation, min_qty, allow_negative, archived FROM inv_articles \
                         WHERE sku = $1{}",
                        $share
                    )))
                    .bind(m.sku.as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
                    let Some(row) = row else {
                        return Err(InventoryError::NotFound {
                            what: "article",
                            key: m.sku.to_string(),
                        });
                    };
                    if row.try_get::<bool, _>("archived")? {
                        return Err(InventoryError::Conflict {
                            code: "article_archived",
                            message: format!("article {} is archived and takes no movements", m.sku),
                        });
                    }
                    session.facts.insert(
                        m.sku.clone(),
                        ArticleFacts {
                            valuation: stored(&row.try_get::<String, _>("valuation")?)?,
                            min_qty: dec("min_qty", &row.try_get::<String, _>("min_qty")?)?,
                            allow_negative: row.try_get("allow_negative")?,
                        },
                    );
                }
                codes.sort();
                codes.dedup();
                for code in &codes {
                    if session.warehouses.contains(code) {
                        continue;
                    }
                    let archived: Option<bool> =
                        sqlx::query_scalar("SELECT archived FROM inv_warehouses WHERE code = $1")
                            .bind(code.as_str())
                            .fetch_optional(&mut *conn)
                            .await?;
                    match archived {
                        None => {
                            return Err(InventoryError::NotFound {
                                what: "warehouse",
                                key: code.to_string(),
                            });
                        }
                        Some(true) => {
                            return Err(InventoryError::Conflict {
                                code: "warehouse_archived",
                                message: format!("warehouse {code} is archived and takes no movements"),
                            });
                        }
                        Some(false) => {
                            session.warehouses.insert(code.clone());
                        }
                    }
                }
                // Lock every balance the batch touches, in one order: no deadlock.
                keys.sort();
                keys.dedup();
                for key in &keys {
                    if session.work.contains_key(key) {
                        continue;
                    }
                    let (sku, wh) = key;
                    let f = session
                        .facts
                        .get(sku)
                        .ok_or_else(|| InventoryError::Corrupt("article facts missing".into()))?;
                    if $create_first {
                        // A row to lock, even for a first posting (rolled back with a refusal).
                        sqlx::query(
                            "INSERT INTO inv_balances (sku, warehouse, qty, value, rate, layer_seq, level, updated_at) \
                             VALUES ($1, $2, '0', '0', '0', 0, $3, $4) ON CONFLICT (sku, warehouse) DO NOTHING",
                        )
                        .bind(sku.as_str())
                        .bind(wh.as_str())
                        .bind(AlertLevel::OutOfStock.as_str())
                        .bind(now)
                        .execute(&mut *conn)
                        .await?;
                    }
                    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT qty, value, rate, layer_seq, level FROM inv_balances \
                         WHERE sku = $1 AND warehouse = $2{}",
                        $lock
                    )))
                    .bind(sku.as_str())
                    .bind(wh.as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
                    let working = match row {
                        Some(row) => Working::loaded(
                            Stock {
                                qty: dec("qty", &row.try_get::<String, _>("qty")?)?,
                                value: dec("value", &row.try_get::<String, _>("value")?)?,
                                rate: dec("rate", &row.try_get::<String, _>("rate")?)?,
                                layers: VecDeque::new(),
                            },
                            stored(&row.try_get::<String, _>("level")?)?,
                            f,
                            row.try_get("layer_seq")?,
                        ),
                        None => Working::loaded(Stock::default(), AlertLevel::OutOfStock, f, 0),
                    };
                    session.work.insert(key.clone(), working);
                }
                // FIFO: the oldest stored layers, as many as these postings may consume.
                for (key, demand) in demands(ms) {
                    let Some(w) = session.work.get_mut(&key) else {
                        continue;
                    };
                    while w.demand_window(demand) {
                        let read = load_layers(&mut *conn, &key, &w.layers).await?;
                        let complete = read.len() < LAYERS_PER_READ;
                        w.extend_window(read, complete);
                    }
                }
                let planned = match plan_all(ms, by, now, session, &keys) {
                    Ok(p) => p,
                    Err(e) => return Err(e),
                };
                // From here on a failure leaves writes behind (see `Session::writing`).
                session.writing = true;
                let mut out = Vec::with_capacity(planned.len());
                let mut events: Vec<(&str, serde_json::Value)> = Vec::new();
                for (m, id, pending, levels) in planned {
                    sqlx::query(
                        "INSERT INTO inv_movements (id, kind, sku, warehouse, to_warehouse, qty, \
                         unit_cost, reference, note, posted_by, posted_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .bind(&id)
                    .bind(m.kind.as_str())
                    .bind(m.sku.as_str())
                    .bind(m.warehouse.as_str())
                    .bind(m.to_warehouse.as_ref().map(WarehouseCode::as_str))
                    .bind(text(m.qty.get()))
                    .bind(m.unit_cost.map(|c| text(c.get())))
                    .bind(m.reference.as_deref())
                    .bind(m.note.as_deref())
                    .bind(by)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                    let mut rows = Vec::with_capacity(pending.len());
                    for p in pending {
                        let (consumed, new_layers) = (&p.change.consumed, &p.new_layers);
                        let ledger_id: i64 = sqlx::query_scalar(
                            "INSERT INTO inv_ledger (movement_id, kind, sku, warehouse, qty_change, \
                             unit_cost, value_change, qty_after, value_after, rate_after, reference, \
                             posted_by, posted_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
                        )
                        .bind(&id)
                        .bind(m.kind.as_str())
                        .bind(m.sku.as_str())
                        .bind(p.warehouse.as_str())
                        .bind(text(p.change.qty))
                        .bind(text(p.change.unit_cost))
                        .bind(text(p.change.value))
                        .bind(text(p.after.qty))
                        .bind(text(p.after.value))
                        .bind(text(p.after.rate))
                        .bind(m.reference.as_deref())
                        .bind(by)
                        .bind(now)
                        .fetch_one(&mut *conn)
                        .await?;
                        // The layers it consumed and brought in, written with the balances.
                        if p.change.qty < Decimal::ZERO {
                            session.uses.extend(consumed.iter().filter_map(|l| {
                                Some(LayerUse {
                                    ledger_id,
                                    sku: m.sku.clone(),
                                    warehouse: p.warehouse.clone(),
                                    seq: l.seq?,
                                    qty: l.qty,
                                    rate: l.rate,
                                })
                            }));
                        }
                        if !new_layers.is_empty()
                            && let Some(w) = session.work.get_mut(&(m.sku.clone(), p.warehouse.clone()))
                        {
                            for seq in new_layers {
                                if let Some(c) = w.layers.created.get_mut(seq) {
                                    c.1 = Some(ledger_id);
                                }
                            }
                        }
                        rows.push(LedgerRow {
                            id: ledger_id,
                            movement_id: id.clone(),
                            kind: m.kind,
                            sku: m.sku.clone(),
                            warehouse: p.warehouse,
                            qty_change: p.change.qty.normalize(),
                            unit_cost: p.change.unit_cost.normalize(),
                            value_change: p.change.value.normalize(),
                            qty_after: p.after.qty.normalize(),
                            value_after: p.after.value.normalize(),
                            rate_after: p.after.rate.normalize(),
                            reference: m.reference.clone(),
                            posted_by: by.to_owned(),
                            posted_at: now,
                        });
                    }
                    let movement = Movement {
                        id,
                        kind: m.kind,
                        sku: m.sku.clone(),
                        warehouse: m.warehouse.clone(),
                        to_warehouse: m.to_warehouse.clone(),
                        qty: m.qty.get(),
                        unit_cost: m.unit_cost.map(crate::types::Money::get),
                        reference: m.reference.clone(),
                        note: m.note.clone(),
                        posted_by: by.to_owned(),
                        posted_at: now,
                        rows,
                    };
                    // Level changes follow the posting that caused them.
                    events.push((TOPIC_MOVEMENT_POSTED, movement_event(&movement)));
                    events.extend(levels);
                    out.push(movement);
                }
                if let Some(e) = inbox {
                    let ids: Vec<&str> = out.iter().map(|m: &Movement| m.id.as_str()).collect();
                    inbox_write(
                        &mut *conn,
                        e,
                        inbox_had.as_ref(),
                        InboxState::Processed,
                        None,
                        &ids,
                        now,
                    )
                    .await?;
                }
                if let Some(h) = hook {
                    h.$hook(&mut *conn, &out).await?;
                }
                if !defer_balances {
                    write_balances(&mut *conn, session, now).await?;
                }
                for (topic, payload) in events {
                    sqlx::query("INSERT INTO malaka_outbox (topic, payload, created_at) VALUES ($1, $2, $3)")
                        .bind(topic)
                        .bind(payload.to_string())
                        .bind(now)
                        .execute(&mut *conn)
                        .await?;
                }
                session.writing = false;
                Ok(out)
            }

            /// Bumps the balances' generation (SQLite; see `inv_generation`).
            async fn bump_generation(conn: &mut $conn) -> Result<(), InventoryError> {
                if $generation {
                    sqlx::query("UPDATE inv_generation SET n = n + 1 WHERE id = 1")
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            }

            pub(crate) async fn generation(pool: &$pool) -> Result<i64, InventoryError> {
                Ok(sqlx::query_scalar("SELECT n FROM inv_generation WHERE id = 1")
                    .fetch_optional(pool)
                    .await?
                    .unwrap_or(0))
            }

            /// The next stored open layers of a balance after the ones `window` loaded, oldest
            /// first, at most [`LAYERS_PER_READ`].
            async fn load_layers(
                conn: &mut $conn,
                (sku, wh): &(Sku, WarehouseCode),
                window: &LayerWindow,
            ) -> Result<Vec<Layer>, InventoryError> {
                let rows = sqlx::query(
                    "SELECT seq, qty, rate, received_at FROM inv_layers \
                     WHERE sku = $1 AND warehouse = $2 AND qty <> '0' AND seq > $3 AND seq < $4 \
                     ORDER BY seq LIMIT $5",
                )
                .bind(sku.as_str())
                .bind(wh.as_str())
                .bind(window.last_loaded)
                .bind(window.stored_end)
                .bind(LAYERS_PER_READ as i64)
                .fetch_all(&mut *conn)
                .await?;
                rows.iter()
                    .map(|r| {
                        let mut l = Layer::new(
                            dec("qty", &r.try_get::<String, _>("qty")?)?,
                            dec("rate", &r.try_get::<String, _>("rate")?)?,
                            r.try_get("received_at")?,
                        );
                        l.seq = Some(r.try_get("seq")?);
                        Ok(l)
                    })
                    .collect()
            }

            /// Writes the balances `session` changed, their layers and the layer consumptions
            /// recorded (and marks them written).
            pub(crate) async fn write_balances(
                conn: &mut $conn,
                session: &mut Session,
                now: DateTime<Utc>,
            ) -> Result<(), InventoryError> {
                if session.work.values().any(|w| w.changed) {
                    bump_generation(&mut *conn).await?;
                }
                for ((sku, wh), w) in &mut session.work {
                    if !w.changed {
                        continue;
                    }
                    sqlx::query(
                        "INSERT INTO inv_balances (sku, warehouse, qty, value, rate, layer_seq, level, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                         ON CONFLICT (sku, warehouse) DO UPDATE SET qty = excluded.qty, \
                            value = excluded.value, rate = excluded.rate, layer_seq = excluded.layer_seq, \
                            level = excluded.level, updated_at = excluded.updated_at",
                    )
                    .bind(sku.as_str())
                    .bind(wh.as_str())
                    .bind(text(w.stock.qty))
                    .bind(text(w.stock.value))
                    .bind(text(w.stock.rate))
                    .bind(w.layers.next_seq)
                    .bind(w.level.as_str())
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                    write_layers(&mut *conn, sku, wh, w).await?;
                    w.changed = false;
                }
                for chunk in session.uses.chunks(100) {
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO inv_layer_uses (ledger_id, sku, warehouse, seq, qty, rate) ",
                    );
                    q.push_values(chunk, |mut b, u| {
                        b.push_bind(u.ledger_id)
                            .push_bind(u.sku.as_str())
                            .push_bind(u.warehouse.as_str())
                            .push_bind(u.seq)
                            .push_bind(text(u.qty))
                            .push_bind(text(u.rate));
                    });
                    q.build().execute(&mut *conn).await?;
                }
                session.uses.clear();
                Ok(())
            }

            /// Writes what a posting transaction did to a balance's stored layers: the stored
            /// ones it consumed (all of them when its stock went to zero or below), the new ones
            /// it received; then takes the window as stored.
            async fn write_layers(
                conn: &mut $conn,
                sku: &Sku,
                wh: &WarehouseCode,
                w: &mut Working,
            ) -> Result<(), InventoryError> {
                let now_qty = |stock: &Stock, seq: i64| {
                    stock
                        .layers
                        .iter()
                        .find(|l| l.seq == Some(seq))
                        .map_or(Decimal::ZERO, |l| l.qty)
                };
                if w.layers.cleared {
                    sqlx::query(
                        "UPDATE inv_layers SET qty = '0' WHERE sku = $1 AND warehouse = $2 AND qty <> '0'",
                    )
                    .bind(sku.as_str())
                    .bind(wh.as_str())
                    .execute(&mut *conn)
                    .await?;
                }
                for (&seq, &was) in &w.layers.loaded {
                    let qty = now_qty(&w.stock, seq);
                    if qty == was || (w.layers.cleared && qty.is_zero()) {
                        continue;
                    }
                    sqlx::query(
                        "UPDATE inv_layers SET qty = $4 WHERE sku = $1 AND warehouse = $2 AND seq = $3",
                    )
                    .bind(sku.as_str())
                    .bind(wh.as_str())
                    .bind(seq)
                    .bind(text(qty))
                    .execute(&mut *conn)
                    .await?;
                }
                if !w.layers.created.is_empty() {
                    let created: Vec<(i64, Layer, Option<i64>)> = w
                        .layers
                        .created
                        .iter()
                        .map(|(&seq, &(l, by))| (seq, l, by))
                        .collect();
                    for chunk in created.chunks(100) {
                        let mut q = sqlx::QueryBuilder::new(
                            "INSERT INTO inv_layers (sku, warehouse, seq, qty, rate, received_at, ledger_id) ",
                        );
                        q.push_values(chunk, |mut b, (seq, l, by)| {
                            b.push_bind(sku.as_str())
                                .push_bind(wh.as_str())
                                .push_bind(*seq)
                                .push_bind(text(now_qty(&w.stock, *seq)))
                                .push_bind(text(l.rate))
                                .push_bind(l.received_at)
                                .push_bind(*by);
                        });
                        q.build().execute(&mut *conn).await?;
                    }
                }
                // What is in memory is now what is stored.
                let end = w.layers.next_seq;
                w.layers.loaded = w
                    .stock
                    .layers
                    .iter()
                    .filter_map(|l| Some((l.seq?, l.qty)))
                    .collect();
                w.layers.created.clear();
                w.layers.cleared = false;
                if w.layers.more {
                    // Stored layers still follow the loaded ones; the new ones are stored after them.
                    w.layers.stored_end = w.layers.stored_end.min(end);
                } else {
                    w.layers.stored_end = end;
                    w.layers.last_loaded = end.saturating_sub(1);
                }
                Ok(())
            }

            pub(crate) async fn balances(
                pool: &$pool,
                f: &BalanceFilter,
            ) -> Result<Vec<Balance>, InventoryError> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT b.sku, b.warehouse, b.qty, b.value, b.rate, {} AS layers, b.level, \
                            b.updated_at, a.min_qty \
                     FROM inv_balances b JOIN inv_articles a ON a.sku = b.sku \
                     WHERE ($1 IS NULL OR b.sku = $1) AND ($2 IS NULL OR b.warehouse = $2) \
                       AND ($3 IS NULL OR b.level = $3) \
                     ORDER BY b.sku, b.warehouse",
                    $layers_json
                )))
                .bind(f.sku.as_ref().map(Sku::as_str))
                .bind(f.warehouse.as_ref().map(WarehouseCode::as_str))
                .bind(f.level.map(AlertLevel::as_str))
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(Balance {
                            sku: Sku::parse(&r.try_get::<String, _>("sku")?)
                                .map_err(|e| InventoryError::Corrupt(e.to_string()))?,
                            warehouse: WarehouseCode::parse(&r.try_get::<String, _>("warehouse")?)
                                .map_err(|e| InventoryError::Corrupt(e.to_string()))?,
                            qty: dec("qty", &r.try_get::<String, _>("qty")?)?,
                            value: dec("value", &r.try_get::<String, _>("value")?)?,
                            rate: dec("rate", &r.try_get::<String, _>("rate")?)?,
                            min_qty: dec("min_qty", &r.try_get::<String, _>("min_qty")?)?,
                            level: stored(&r.try_get::<String, _>("level")?)?,
                            layers: serde_json::from_str(&r.try_get::<String, _>("layers")?)?,
                            updated_at: r.try_get("updated_at")?,
                        })
                    })
                    .collect()
            }

            pub(crate) async fn ledger(
                pool: &$pool,
                f: &LedgerFilter,
            ) -> Result<LedgerPage, InventoryError> {
                let limit = f.limit.unwrap_or(100).clamp(1, 1000);
                let rows = sqlx::query(
                    "SELECT id, movement_id, kind, sku, warehouse, qty_change, unit_cost, value_change, \
                            qty_after, value_after, rate_after, reference, posted_by, posted_at \
                     FROM inv_ledger \
                     WHERE ($1 IS NULL OR sku = $1) AND ($2 IS NULL OR warehouse = $2) \
                       AND ($3 IS NULL OR posted_at >= $3) AND ($4 IS NULL OR posted_at < $4) \
                       AND id > $5 \
                     ORDER BY id LIMIT $6",
                )
                .bind(f.sku.as_ref().map(Sku::as_str))
                .bind(f.warehouse.as_ref().map(WarehouseCode::as_str))
                .bind(f.from)
                .bind(f.to)
                .bind(f.after.unwrap_or(0))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
                let rows = rows.iter().map(ledger_of).collect::<Result<Vec<_>, _>>()?;
                let next = if rows.len() == limit as usize {
                    rows.last().map(|r| r.id)
                } else {
                    None
                };
                Ok(LedgerPage { rows, next })
            }

            pub(crate) async fn recent_ledger(
                pool: &$pool,
                limit: u32,
            ) -> Result<Vec<LedgerRow>, InventoryError> {
                let rows = sqlx::query(
                    "SELECT id, movement_id, kind, sku, warehouse, qty_change, unit_cost, value_change, \
                            qty_after, value_after, rate_after, reference, posted_by, posted_at \
                     FROM inv_ledger ORDER BY id DESC LIMIT $1",
                )
                .bind(i64::from(limit.clamp(1, 1000)))
                .fetch_all(pool)
                .await?;
                rows.iter().map(ledger_of).collect()
            }

            pub(crate) async fn outbox(
                pool: &$pool,
                after: i64,
                limit: u32,
            ) -> Result<Vec<OutboxEvent>, InventoryError> {
                let rows = sqlx::query(
                    "SELECT id, topic, payload, created_at, published_at FROM malaka_outbox \
                     WHERE id > $1 ORDER BY id LIMIT $2",
                )
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(OutboxEvent {
                            id: r.try_get("id")?,
                            topic: r.try_get("topic")?,
                            payload: serde_json::from_str(&r.try_get::<String, _>("payload")?)?,
                            created_at: r.try_get("created_at")?,
                            published_at: r.try_get("published_at")?,
                        })
                    })
                    .collect()
            }

            pub(crate) async fn verify(pool: &$pool) -> Result<VerifyReport, InventoryError> {
                let mut report = VerifyReport::default();
                let mut sums: BTreeMap<(String, String), (Decimal, Decimal, Decimal, Decimal)> =
                    BTreeMap::new();
                let mut after = 0i64;
                loop {
                    let rows = sqlx::query(
                        "SELECT id, sku, warehouse, qty_change, value_change, qty_after, value_after \
                         FROM inv_ledger WHERE id > $1 ORDER BY id LIMIT 10000",
                    )
                    .bind(after)
                    .fetch_all(pool)
                    .await?;
                    if rows.is_empty() {
                        break;
                    }
                    for r in &rows {
                        after = r.try_get("id")?;
                        report.ledger_rows += 1;
                        let key = (r.try_get::<String, _>("sku")?, r.try_get::<String, _>("warehouse")?);
                        let e = sums.entry(key).or_default();
                        e.0 += dec("qty_change", &r.try_get::<String, _>("qty_change")?)?;
                        e.1 += dec("value_change", &r.try_get::<String, _>("value_change")?)?;
                        e.2 = dec("qty_after", &r.try_get::<String, _>("qty_after")?)?;
                        e.3 = dec("value_after", &r.try_get::<String, _>("value_after")?)?;
                    }
                }
                // The open FIFO layers of each balance hold its stock.
                let mut layered: BTreeMap<(String, String), Decimal> = BTreeMap::new();
                let mut after = (String::new(), String::new(), -1i64);
                loop {
                    let rows = sqlx::query(
                        "SELECT sku, warehouse, seq, qty FROM inv_layers \
                         WHERE qty <> '0' AND (sku, warehouse, seq) > ($1, $2, $3) \
                         ORDER BY sku, warehouse, seq LIMIT 10000",
                    )
                    .bind(&after.0)
                    .bind(&after.1)
                    .bind(after.2)
                    .fetch_all(pool)
                    .await?;
                    if rows.is_empty() {
                        break;
                    }
                    for r in &rows {
                        after = (r.try_get("sku")?, r.try_get("warehouse")?, r.try_get("seq")?);
                        let e = layered.entry((after.0.clone(), after.1.clone())).or_default();
                        *e += dec("qty", &r.try_get::<String, _>("qty")?)?;
                    }
                }
                let balances = sqlx::query(
                    "SELECT b.sku, b.warehouse, b.qty, b.value, a.valuation \
                     FROM inv_balances b JOIN inv_articles a ON a.sku = b.sku ORDER BY b.sku, b.warehouse",
                )
                .fetch_all(pool)
                .await?;
                for b in &balances {
                    report.balances += 1;
                    let key = (b.try_get::<String, _>("sku")?, b.try_get::<String, _>("warehouse")?);
                    let bal = (
                        dec("qty", &b.try_get::<String, _>("qty")?)?,
                        dec("value", &b.try_get::<String, _>("value")?)?,
                    );
                    let fifo = stored::<ValuationMethod>(&b.try_get::<String, _>("valuation")?)?
                        == ValuationMethod::Fifo;
                    let held = layered.remove(&key).unwrap_or_default();
                    let want = if fifo { bal.0.max(Decimal::ZERO) } else { Decimal::ZERO };
                    let layers = (held != want).then_some(held);
                    let (q, v, qa, va) = sums.remove(&key).unwrap_or_default();
                    if (q, v) != bal || (qa, va) != bal || layers.is_some() {
                        report.discrepancies.push(Discrepancy {
                            sku: key.0,
                            warehouse: key.1,
                            ledger: (q, v),
                            balance: bal,
                            layers,
                        });
                    }
                }
                for ((sku, warehouse), (q, v, _, _)) in sums {
                    let layers = layered.remove(&(sku.clone(), warehouse.clone()));
                    report.discrepancies.push(Discrepancy {
                        sku,
                        warehouse,
                        ledger: (q, v),
                        balance: (Decimal::ZERO, Decimal::ZERO),
                        layers,
                    });
                }
                for ((sku, warehouse), held) in layered {
                    report.discrepancies.push(Discrepancy {
                        sku,
                        warehouse,
                        ledger: (Decimal::ZERO, Decimal::ZERO),
                        balance: (Decimal::ZERO, Decimal::ZERO),
                        layers: Some(held),
                    });
                }
                Ok(report)
            }
        }
    };
}

backend!(
    sqlite,
    SqlitePool,
    sqlx::SqliteConnection,
    begin = "BEGIN IMMEDIATE",
    lock = "",
    share = "",
    create_first = false,
    hook = sqlite,
    generation = true,
    layers_json = LAYERS_JSON_SQLITE
);
backend!(
    postgres,
    PgPool,
    sqlx::PgConnection,
    begin = "BEGIN",
    lock = " FOR UPDATE",
    share = " FOR SHARE",
    create_first = true,
    hook = postgres,
    generation = false,
    layers_json = LAYERS_JSON_POSTGRES
);

/// The `movement.posted` payload.
fn movement_event(m: &Movement) -> serde_json::Value {
    json!({
        "movement_id": m.id,
        "type": m.kind,
        "sku": m.sku,
        "warehouse": m.warehouse,
        "to_warehouse": m.to_warehouse,
        "qty": text(m.qty),
        "reference": m.reference,
        "note": m.note,
        "by": m.posted_by,
        "at": m.posted_at,
        "rows": m.rows.iter().map(|r| json!({
            "ledger_id": r.id,
            "warehouse": r.warehouse,
            "qty_change": text(r.qty_change),
            "value_change": text(r.value_change),
            "qty_after": text(r.qty_after),
            "value_after": text(r.value_after),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::dec;

    fn work_for(m: &NewMovement) -> BTreeMap<(Sku, WarehouseCode), Working> {
        BTreeMap::from([(
            (m.sku.clone(), m.warehouse.clone()),
            Working {
                stock: Stock::default(),
                level: AlertLevel::OutOfStock,
                min_qty: Decimal::ZERO,
                changed: false,
                layers: LayerWindow::default(),
            },
        )])
    }

    fn facts() -> ArticleFacts {
        ArticleFacts {
            valuation: ValuationMethod::MovingAverage,
            min_qty: Decimal::ZERO,
            allow_negative: false,
        }
    }

    fn field_of(e: InventoryError) -> String {
        match e {
            InventoryError::OutOfRange { field, .. } => field,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn postings_that_would_leave_the_limits_are_refused_and_change_nothing() {
        let big = dec!(999999999999);
        let m = NewMovement::parse("receipt", "A", "W", None, big, Some(dec!(1000)), None, None)
            .unwrap();
        let key = (m.sku.clone(), m.warehouse.clone());
        let mut work = work_for(&m);
        // ~10^15 of value fits; a second receipt takes the quantity past 10^12.
        assert!(plan_movement(&m, &facts(), &mut work, Utc::now()).is_ok());
        let err = plan_movement(&m, &facts(), &mut work, Utc::now()).unwrap_err();
        assert_eq!(field_of(err), "qty");
        // Values stay below 10^16: a costly receipt names its unit cost.
        let mut fresh = work_for(&m);
        let dear = NewMovement::parse(
            "receipt",
            "A",
            "W",
            None,
            dec!(100000),
            Some(dec!(999999999999)),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            field_of(plan_movement(&dear, &facts(), &mut fresh, Utc::now()).unwrap_err()),
            "unit_cost"
        );
        assert_eq!(fresh[&key].stock, Stock::default());
    }

    #[test]
    fn a_balance_past_the_limits_refuses_issues_instead_of_panicking() {
        // What an older version accepted: 10^12 units worth 5 x 10^23.
        let m =
            NewMovement::parse("issue", "A", "W", None, dec!(200000), None, None, None).unwrap();
        let mut work = work_for(&m);
        let key = (m.sku.clone(), m.warehouse.clone());
        if let Some(w) = work.get_mut(&key) {
            w.stock = Stock {
                qty: dec!(999999999999),
                value: dec!(499999999999500000000000),
                rate: dec!(500000000000),
                layers: VecDeque::new(),
            };
        }
        let before = work[&key].stock.clone();
        let err = plan_movement(&m, &facts(), &mut work, Utc::now()).unwrap_err();
        assert_eq!(field_of(err), "qty");
        assert_eq!(work[&key].stock, before);
    }
}
