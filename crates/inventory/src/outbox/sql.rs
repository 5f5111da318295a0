//! The outbox's SQL, the same on both backends (written once over a [`Database`]): SQLite
//! writers take this process's write turn (`crate::WriteGate`); PostgreSQL publishing tells
//! other nodes with `pg_notify('malaka_live')`.

use chrono::{DateTime, Utc};
use malaka_db::{Database, on_pool};
use sqlx::Row;

use super::Published;
use crate::error::InventoryError;
use crate::gate::WriteTurn;
use crate::inventory::OutboxEvent;

/// This process's turn to write, on SQLite (see [`crate::WriteGate`]); PostgreSQL writers need
/// none.
pub(crate) async fn write_turn(db: &Database) -> Option<WriteTurn> {
    match db {
        Database::Sqlite(pool) => Some(crate::gate::sqlite_turn(pool).await),
        Database::Postgres(_) => None,
    }
}

/// How a write transaction begins: SQLite takes the write lock at once.
pub(crate) fn begin(db: &Database) -> &'static str {
    match db {
        Database::Sqlite(_) => "BEGIN IMMEDIATE",
        Database::Postgres(_) => "BEGIN",
    }
}

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
    db: &Database,
    limit: u32,
) -> Result<Vec<OutboxEvent>, InventoryError> {
    on_pool!(db, pool => {
        let rows = sqlx::query(
            "SELECT id, topic, payload, created_at, published_at FROM malaka_outbox \
             WHERE published_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
        rows.iter().map(event_of).collect()
    })
}

pub(super) async fn last_seq(db: &Database) -> Result<i64, InventoryError> {
    on_pool!(db, pool => {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM malaka_outbox WHERE seq IS NOT NULL")
                .fetch_one(pool)
                .await?;
        Ok(seq.unwrap_or(0))
    })
}

pub(super) async fn first_seq(db: &Database) -> Result<Option<i64>, InventoryError> {
    on_pool!(db, pool => {
        Ok(
            sqlx::query_scalar("SELECT MIN(seq) FROM malaka_outbox WHERE seq IS NOT NULL")
                .fetch_one(pool)
                .await?,
        )
    })
}

pub(super) async fn publish_next(
    db: &Database,
    limit: u32,
    after: i64,
) -> Result<Vec<(i64, i64)>, InventoryError> {
    let _turn = write_turn(db).await;
    on_pool!(db, pool => {
        let mut tx = pool.begin_with(begin(db)).await?;
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
        if db.postgres().is_some() {
            // Other nodes' hubs learn of the new events at once.
            let last = marks.last().map_or(after, |m| m.1);
            sqlx::query("SELECT pg_notify('malaka_live', $1)")
                .bind(last.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(marks)
    })
}

pub(super) async fn published_after(
    db: &Database,
    seq: i64,
    limit: u32,
) -> Result<Vec<Published>, InventoryError> {
    on_pool!(db, pool => {
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
    })
}

pub(super) async fn prune(
    db: &Database,
    before: DateTime<Utc>,
    floor: i64,
    limit: u32,
) -> Result<u64, InventoryError> {
    let _turn = write_turn(db).await;
    on_pool!(db, pool => {
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
    })
}

pub(super) async fn seq_published_before(
    db: &Database,
    before: DateTime<Utc>,
) -> Result<Option<i64>, InventoryError> {
    on_pool!(db, pool => {
        Ok(sqlx::query_scalar(
            "SELECT MAX(seq) FROM malaka_outbox WHERE published_at IS NOT NULL \
             AND published_at < $1",
        )
        .bind(before)
        .fetch_one(pool)
        .await?)
    })
}
