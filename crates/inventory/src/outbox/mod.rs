//! The outbox after commit: its events published in order under consecutive numbers
//! (`Outbox`), read back by hubs, listeners and the SQS publisher, and pruned. It runs on a pool
//! the caller chooses (a `malaka_db::Database`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

use malaka_db::Database;

use crate::error::InventoryError;
use crate::gate::WriteTurn;
use crate::inventory::OutboxEvent;

/// Calls `sqlite::$f` or `postgres::$f` of the calling module with the pool of `self.pool` (a
/// [`Database`]).
macro_rules! on {
    ($self:ident . $f:ident ( $($arg:expr),* )) => {
        match &$self.pool {
            Database::Sqlite(p) => sqlite::$f(p, $($arg),*).await,
            Database::Postgres(p) => postgres::$f(p, $($arg),*).await,
        }
    };
}
pub(crate) use on;

/// A published event, with the sequence number it was published under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Published {
    /// Publication order (gapless per relay, what clients resume from).
    pub seq: i64,
    /// The event.
    pub event: OutboxEvent,
}

/// The outbox as the relay sees it.
#[derive(Debug, Clone)]
pub struct Outbox {
    pool: Database,
}

impl Outbox {
    /// The outbox on `pool`.
    pub fn new(pool: Database) -> Self {
        Self { pool }
    }

    /// Events not yet published, oldest first (by id: per article and warehouse that is the
    /// order they were committed in, which is what their consumers need).
    ///
    /// # Errors
    /// A database error.
    pub async fn unpublished(&self, limit: u32) -> Result<Vec<OutboxEvent>, InventoryError> {
        sql::unpublished(&self.pool, limit).await
    }

    /// The highest sequence number given so far (0 before the first).
    ///
    /// # Errors
    /// A database error.
    pub async fn last_seq(&self) -> Result<i64, InventoryError> {
        sql::last_seq(&self.pool).await
    }

    /// The lowest sequence number still kept, if any event is.
    ///
    /// # Errors
    /// A database error.
    pub async fn first_seq(&self) -> Result<Option<i64>, InventoryError> {
        sql::first_seq(&self.pool).await
    }

    /// Publishes the next unpublished events, oldest first and at most `limit`, under sequence
    /// numbers `after + 1`, `after + 2`, ...: reads and marks them in one transaction, so that
    /// on SQLite the batch is read once this process's turn to write has come and holds what
    /// was committed until then. Returns the (id, seq) given, none when all is published; on
    /// PostgreSQL the same transaction notifies channel `malaka_live` with the last seq.
    ///
    /// # Errors
    /// A database error (a sequence number already given, by another relay, included: the
    /// caller then reads [`Self::last_seq`] again).
    pub async fn publish_next(
        &self,
        limit: u32,
        after: i64,
    ) -> Result<Vec<(i64, i64)>, InventoryError> {
        sql::publish_next(&self.pool, limit, after).await
    }

    /// Published events after `seq`, in publication order, at most `limit`.
    ///
    /// # Errors
    /// A database error.
    pub async fn published_after(
        &self,
        seq: i64,
        limit: u32,
    ) -> Result<Vec<Published>, InventoryError> {
        sql::published_after(&self.pool, seq, limit).await
    }

    /// Deletes events published before `before` and at or below sequence `floor` (when given:
    /// what every durable reader has passed), at most `limit`; returns how many.
    ///
    /// # Errors
    /// A database error.
    pub async fn prune(
        &self,
        before: DateTime<Utc>,
        floor: Option<i64>,
        limit: u32,
    ) -> Result<u64, InventoryError> {
        sql::prune(&self.pool, before, floor.unwrap_or(i64::MAX), limit).await
    }

    /// The highest sequence number of the events published before `before`, if any.
    ///
    /// # Errors
    /// A database error.
    pub async fn seq_published_before(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Option<i64>, InventoryError> {
        sql::seq_published_before(&self.pool, before).await
    }
}

/// This process's turn to write to an SQLite file (see [`crate::WriteGate`]).
pub(crate) async fn sqlite_write_turn(pool: &SqlitePool) -> Option<WriteTurn> {
    Some(crate::gate::sqlite_turn(pool).await)
}

/// PostgreSQL writers need no turn.
pub(crate) async fn no_write_turn(_: &PgPool) -> Option<WriteTurn> {
    None
}

mod sql;
