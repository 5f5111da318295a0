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
        on!(self.unpublished(limit))
    }

    /// The highest sequence number given so far (0 before the first).
    ///
    /// # Errors
    /// A database error.
    pub async fn last_seq(&self) -> Result<i64, InventoryError> {
        on!(self.last_seq())
    }

    /// The lowest sequence number still kept, if any event is.
    ///
    /// # Errors
    /// A database error.
    pub async fn first_seq(&self) -> Result<Option<i64>, InventoryError> {
        on!(self.first_seq())
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
        on!(self.publish_next(limit, after))
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
        on!(self.published_after(seq, limit))
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
        on!(self.prune(before, floor.unwrap_or(i64::MAX), limit))
    }

    /// The highest sequence number of the events published before `before`, if any.
    ///
    /// # Errors
    /// A database error.
    pub async fn seq_published_before(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Option<i64>, InventoryError> {
        on!(self.seq_published_before(before))
    }
}

macro_rules! backend {
    ($module:ident, $pool:ty, begin = $begin:literal, lock = $lock:literal, notify = $notify:literal, turn = $turn:path) => {
        mod $module {
            use super::*;
            use sqlx::Row;

            fn event_of<R: Row>(r: &R) -> Result<OutboxEvent, InventoryError>
            where
                for<'a> &'a str: sqlx::ColumnIndex<R>,
                for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
                for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
                for<'a> DateTime<Utc>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
                for<'a> Option<DateTime<Utc>>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
            {
                Ok(OutboxEvent {
                    id: r.try_get("id")?,
                    topic: r.try_get("topic")?,
                    payload: serde_json::from_str(&r.try_get::<String, _>("payload")?)?,
                    created_at: r.try_get("created_at")?,
                    published_at: r.try_get("published_at")?,
                })
            }


            pub(super) async fn unpublished(
                pool: &$pool,
                limit: u32,
            ) -> Result<Vec<OutboxEvent>, InventoryError> {
                let rows = sqlx::query(
                    "SELECT id, topic, payload, created_at, published_at FROM malaka_outbox \
                     WHERE published_at IS NULL ORDER BY id LIMIT $1",
                )
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
                rows.iter().map(event_of).collect()
            }

            pub(super) async fn last_seq(pool: &$pool) -> Result<i64, InventoryError> {
                let seq: Option<i64> = sqlx::query_scalar(
                    "SELECT MAX(seq) FROM malaka_outbox WHERE seq IS NOT NULL",
                )
                .fetch_one(pool)
                .await?;
                Ok(seq.unwrap_or(0))
            }

            pub(super) async fn first_seq(pool: &$pool) -> Result<Option<i64>, InventoryError> {
                Ok(sqlx::query_scalar(
                    "SELECT MIN(seq) FROM malaka_outbox WHERE seq IS NOT NULL",
                )
                .fetch_one(pool)
                .await?)
            }

            pub(super) async fn publish_next(
                pool: &$pool,
                limit: u32,
                after: i64,
            ) -> Result<Vec<(i64, i64)>, InventoryError> {
                let _turn = $turn(pool).await;
                let mut tx = pool.begin_with($begin).await?;
                // One statement: the oldest unpublished events numbered `after + 1, ...` in id
                // order.
                let mut marks: Vec<(i64, i64)> = sqlx::query_as(
                    "UPDATE malaka_outbox SET published_at = $1, seq = $2 + m.n \
                     FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM malaka_outbox \
                           WHERE published_at IS NULL ORDER BY id LIMIT $3) AS m \
                     WHERE malaka_outbox.id = m.id \
                     RETURNING malaka_outbox.id, malaka_outbox.seq",
                )
                .bind(Utc::now())
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
                if marks.is_empty() {
                    return Ok(Vec::new());
                }
                marks.sort_unstable();
                if $notify {
                    let last = marks.last().map_or(after, |m| m.1);
                    sqlx::query("SELECT pg_notify('malaka_live', $1)")
                        .bind(last.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(marks)
            }

            pub(super) async fn published_after(
                pool: &$pool,
                seq: i64,
                limit: u32,
            ) -> Result<Vec<Published>, InventoryError> {
                let rows = sqlx::query(
                    "SELECT id, seq, topic, payload, created_at, published_at FROM malaka_outbox \
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                )
                .bind(seq)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(Published {
                            seq: r.try_get("seq")?,
                            event: event_of(r)?,
                        })
                    })
                    .collect()
            }

            pub(super) async fn prune(
                pool: &$pool,
                before: DateTime<Utc>,
                floor: i64,
                limit: u32,
            ) -> Result<u64, InventoryError> {
                let _turn = $turn(pool).await;
                Ok(sqlx::query(
                    "DELETE FROM malaka_outbox WHERE id IN (SELECT id FROM malaka_outbox \
                     WHERE published_at IS NOT NULL AND published_at < $1 AND seq <= $2 \
                     ORDER BY id LIMIT $3)",
                )
                .bind(before)
                .bind(floor)
                .bind(i64::from(limit))
                .execute(pool)
                .await?
                .rows_affected())
            }

            pub(super) async fn seq_published_before(
                pool: &$pool,
                before: DateTime<Utc>,
            ) -> Result<Option<i64>, InventoryError> {
                Ok(sqlx::query_scalar(
                    "SELECT MAX(seq) FROM malaka_outbox WHERE published_at IS NOT NULL \
                     AND published_at < $1",
                )
                .bind(before)
                .fetch_one(pool)
                .await?)
            }

        }
    };
}

/// This process's turn to write to an SQLite file (see [`crate::WriteGate`]).
pub(crate) async fn sqlite_write_turn(pool: &SqlitePool) -> Option<WriteTurn> {
    Some(crate::gate::sqlite_turn(pool).await)
}

/// PostgreSQL writers need no turn.
pub(crate) async fn no_write_turn(_: &PgPool) -> Option<WriteTurn> {
    None
}

/// The sqlx database behind a pool type (for the transaction type in `backend!`).
pub(crate) trait PoolDb {
    type Db: sqlx::Database;
}
impl PoolDb for SqlitePool {
    type Db = sqlx::Sqlite;
}
impl PoolDb for PgPool {
    type Db = sqlx::Postgres;
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
