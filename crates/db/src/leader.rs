//! Leadership among nodes sharing one PostgreSQL: the node whose connection holds an advisory
//! lock leads (the outbox relay, the listener deliverer, the SQS publisher); on SQLite there is
//! one node, always leader.

use std::time::Duration;

use sqlx::{Connection as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// Leadership: on PostgreSQL, the connection that holds an advisory lock (dropping it lets the
/// lock go); on SQLite, nothing to hold.
#[derive(Debug)]
pub struct Leader(Option<PgConnection>);

/// Waits until this node holds advisory lock `key` on the PostgreSQL of `pool` (trying every
/// `every`), at once when `pool` is `None` (SQLite). `None` when `stop` fires first.
pub async fn leader_lock(
    pool: Option<&PgPool>,
    key: i64,
    every: Duration,
    stop: &CancellationToken,
) -> Option<Leader> {
    let Some(pool) = pool else {
        return Some(Leader(None));
    };
    loop {
        let attempt = async {
            let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await?;
            Ok::<_, sqlx::Error>(got.then_some(conn))
        };
        match attempt.await {
            Ok(Some(conn)) => return Some(Leader(Some(conn))),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot reach the database for a leader lock"),
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(every) => {}
        }
    }
}

impl Leader {
    /// Still leader? On PostgreSQL, asks the lock's connection (a broken one lost the lock).
    pub async fn alive(&mut self) -> bool {
        let Some(conn) = &mut self.0 else {
            return true;
        };
        matches!(
            tokio::time::timeout(
                Duration::from_secs(5),
                sqlx::query("SELECT 1").execute(&mut *conn)
            )
            .await,
            Ok(Ok(_))
        )
    }
}
