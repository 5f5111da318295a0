//! Group commit for SQLite postings: one task takes every posting that is waiting, runs them in
//! one `BEGIN IMMEDIATE` transaction, writes each touched balance once, commits once, then
//! answers each. A posting is computed before anything of it is written, so a refused one leaves
//! the others alone; a database failure fails the whole group, of which nothing is committed.
//! Nobody hears "posted" before the commit that made it durable.
//!
//! SQLite has one writer at a time, and each commit costs a disk flush. Postings that each open
//! their own transaction queue in SQLite's busy handler, which sleeps 1 to 100 ms between tries;
//! here they queue in order, in process, and share the flush.

use std::sync::{Arc, OnceLock};

use sqlx::sqlite::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use crate::error::InventoryError;
use crate::types::{Movement, NewMovement};

/// Most postings committed together.
const GROUP: usize = 64;

type Reply = oneshot::Sender<Result<Vec<Movement>, InventoryError>>;

struct Request {
    movements: Vec<NewMovement>,
    by: String,
    inbox: Option<crate::store::InboxEntry>,
    reply: Reply,
}

/// The handle to an SQLite database's group committer; clones share it. The task starts with
/// the first posting and ends when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct Committer {
    pool: SqlitePool,
    tx: Arc<OnceLock<mpsc::Sender<Request>>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

impl Committer {
    pub(crate) fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            tx: Arc::new(OnceLock::new()),
        }
    }

    /// Posts `movements` (all or nothing) in the next group; returns once it is committed.
    pub(crate) async fn post(
        &self,
        movements: Vec<NewMovement>,
        by: String,
        inbox: Option<crate::store::InboxEntry>,
    ) -> Result<Vec<Movement>, InventoryError> {
        let tx = self.tx.get_or_init(|| {
            // Bounded: when the disk cannot keep up, posters wait here for room.
            let (tx, rx) = mpsc::channel(4 * GROUP);
            tokio::spawn(run(self.pool.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        tx.send(Request {
            movements,
            by,
            inbox,
            reply,
        })
        .await
        .map_err(|_| InventoryError::Unavailable("the posting committer has stopped".into()))?;
        answer.await.map_err(|_| {
            InventoryError::Unavailable("the posting committer stopped before answering".into())
        })?
    }
}

async fn run(pool: SqlitePool, mut rx: mpsc::Receiver<Request>) {
    let mut group = Vec::with_capacity(GROUP);
    while rx.recv_many(&mut group, GROUP).await > 0 {
        commit_group(&pool, &mut group).await;
        group.clear();
    }
}

/// Commits `group`, answering every request in it.
async fn commit_group(pool: &SqlitePool, group: &mut Vec<Request>) {
    let mut conn = match pool.acquire().await {
        Ok(c) => c,
        Err(e) => return fail_all(group.drain(..), &e.to_string()),
    };
    if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
        return fail_all(group.drain(..), &e.to_string());
    }
    let mut done: Vec<(Reply, Vec<Movement>)> = Vec::with_capacity(group.len());
    // Loaded articles, warehouses and balances carry over from one posting to the next; each
    // balance is written once, at the end.
    let mut session = crate::store::Session::default();
    let mut requests = group.drain(..);
    while let Some(req) = requests.next() {
        match crate::store::sqlite::post_in(
            &mut conn,
            &req.movements,
            &req.by,
            &mut session,
            true,
            req.inbox.as_ref(),
        )
        .await
        {
            Ok(posted) => done.push((req.reply, posted)),
            // Refused while computing: nothing was written, the session is as it was.
            Err(refused) if refused.is_refusal() => {
                let _gone = req.reply.send(Err(refused));
            }
            Err(e) => {
                let why = e.to_string();
                let _gone = req.reply.send(Err(e));
                abort(&mut conn, done, requests, &why).await;
                return;
            }
        }
    }
    drop(requests);
    let committed =
        match crate::store::sqlite::write_balances(&mut conn, &mut session, chrono::Utc::now())
            .await
        {
            Ok(()) => sqlx::query("COMMIT")
                .execute(&mut *conn)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
    match committed {
        Ok(_) => {
            metrics_group(done.len());
            for (reply, posted) in done {
                let _gone = reply.send(Ok(posted));
            }
        }
        Err(e) => abort(&mut conn, done, std::iter::empty(), &e).await,
    }
}

fn metrics_group(n: usize) {
    tracing::trace!(postings = n, "group committed");
}

/// Rolls the whole group back and tells everyone it failed (nothing of it was committed).
async fn abort(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Sqlite>,
    done: Vec<(Reply, Vec<Movement>)>,
    rest: impl Iterator<Item = Request>,
    why: &str,
) {
    tracing::error!(error = why, "group commit failed; rolling the group back");
    if let Err(e) = sqlx::query("ROLLBACK").execute(&mut **conn).await {
        tracing::error!(error = %e, "rollback after a failed group commit failed");
    }
    for (reply, _) in done {
        let _gone = reply.send(Err(InventoryError::Unavailable(format!(
            "the posting was not committed: {why}"
        ))));
    }
    fail_all(rest, why);
}

fn fail_all(rest: impl Iterator<Item = Request>, why: &str) {
    for req in rest {
        let _gone = req.reply.send(Err(InventoryError::Unavailable(format!(
            "the posting was not committed: {why}"
        ))));
    }
}
