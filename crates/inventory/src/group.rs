//! Group commit for SQLite postings: one task takes every posting that is waiting, runs them in
//! one `BEGIN IMMEDIATE` transaction, writes each touched balance once, commits once, then
//! answers each. Nobody hears "posted" before the commit that made it durable.
//!
//! Each posting runs in a savepoint of its own. A posting that is refused, fails or panics is
//! rolled back alone (its savepoint, and the balances it changed in memory), its caller gets the
//! error, and the group's other postings commit. A failure of the database itself (disk full,
//! I/O, a lost connection) fails the whole group, of which nothing is committed, with
//! `Unavailable` (retryable). The task runs under a `malaka_runtime::Supervisor`
//! (`inventory.committer`, critical): if it ever ends, it is restarted on the same queue.
//!
//! SQLite has one writer at a time, and each commit costs a disk flush. Postings that each open
//! their own transaction queue in SQLite's busy handler, which sleeps 1 to 100 ms between tries;
//! here they queue in order, in process, and share the flush.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};

use futures::FutureExt as _;
use malaka_runtime::{CancellationToken, Supervisor, TaskSpec};
use sqlx::sqlite::SqlitePool;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::error::InventoryError;
use crate::store::{InboxEntry, PostingHook, Session};
use crate::types::{Movement, NewMovement, Sku, WarehouseCode};

/// Most postings committed together.
const GROUP: usize = 64;

/// The supervised task's name.
pub(crate) const TASK: &str = "inventory.committer";

type Reply = oneshot::Sender<Result<Vec<Movement>, InventoryError>>;

struct Request {
    movements: Vec<NewMovement>,
    by: String,
    inbox: Option<InboxEntry>,
    hook: Option<Arc<dyn PostingHook>>,
    reply: Reply,
}

/// Cancels the committer's stop token when the last handle goes.
struct Stopper(CancellationToken);

impl Drop for Stopper {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The handle to an SQLite database's group committer; clones share it. The task starts with
/// the first posting (or [`Self::start`]) and stops when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct Committer {
    // Dropped before `tx`: the task sees its stop token cancelled when the queue closes.
    stopper: Arc<Stopper>,
    tx: mpsc::Sender<Request>,
    rx: Arc<Mutex<mpsc::Receiver<Request>>>,
    pool: SqlitePool,
    supervisor: Supervisor,
    started: Arc<OnceLock<()>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

impl Committer {
    pub(crate) fn new(pool: SqlitePool, supervisor: Supervisor) -> Self {
        // Bounded: when the disk cannot keep up, posters wait here for room.
        let (tx, rx) = mpsc::channel(4 * GROUP);
        Self {
            stopper: Arc::new(Stopper(CancellationToken::new())),
            tx,
            rx: Arc::new(Mutex::new(rx)),
            pool,
            supervisor,
            started: Arc::new(OnceLock::new()),
        }
    }

    /// Starts the task (once).
    pub(crate) fn start(&self) {
        self.started.get_or_init(|| {
            let (pool, rx) = (self.pool.clone(), Arc::clone(&self.rx));
            let spec = TaskSpec::new(TASK)
                .critical()
                .stop_on(self.stopper.0.clone());
            // The handle is not kept: the task stops with the last `Committer` (its stop token).
            let _task = self.supervisor.spawn(spec, move |_ctx| {
                let (pool, rx) = (pool.clone(), Arc::clone(&rx));
                async move {
                    // A restarted instance takes the same queue over.
                    let mut rx = rx.lock().await;
                    run(&pool, &mut rx).await;
                }
            });
        });
    }

    /// Posts `movements` (all or nothing) in the next group; returns once it is committed.
    pub(crate) async fn post(
        &self,
        movements: Vec<NewMovement>,
        by: String,
        inbox: Option<InboxEntry>,
        hook: Option<Arc<dyn PostingHook>>,
    ) -> Result<Vec<Movement>, InventoryError> {
        self.start();
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request {
                movements,
                by,
                inbox,
                hook,
                reply,
            })
            .await
            .map_err(|_| InventoryError::Unavailable("the posting committer has stopped".into()))?;
        answer.await.map_err(|_| {
            // The task was restarted while this posting's group was open: not committed.
            InventoryError::Unavailable(
                "the posting committer restarted before committing this posting; nothing was \
                 written, send it again"
                    .into(),
            )
        })?
    }
}

async fn run(pool: &SqlitePool, rx: &mut mpsc::Receiver<Request>) {
    let mut group = Vec::with_capacity(GROUP);
    while rx.recv_many(&mut group, GROUP).await > 0 {
        commit_group(pool, &mut group).await;
        group.clear();
    }
}

/// The balances a posting may touch.
fn keys_of(ms: &[NewMovement]) -> Vec<(Sku, WarehouseCode)> {
    let mut keys: Vec<(Sku, WarehouseCode)> = ms
        .iter()
        .flat_map(|m| {
            std::iter::once((m.sku.clone(), m.warehouse.clone()))
                .chain(m.to_warehouse.as_ref().map(|t| (m.sku.clone(), t.clone())))
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

type Conn = sqlx::pool::PoolConnection<sqlx::Sqlite>;

/// The group's connection. If the group is abandoned with its transaction open (the task was
/// stopped or panicked between `BEGIN` and `COMMIT`), the connection is closed rather than
/// handed back to the pool inside that transaction; closing it rolls the transaction back.
struct GroupConn {
    conn: Conn,
    open: bool,
}

impl Drop for GroupConn {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

/// Commits `group`, answering every request in it.
async fn commit_group(pool: &SqlitePool, group: &mut Vec<Request>) {
    let mut conn = match pool.acquire().await {
        Ok(conn) => GroupConn { conn, open: false },
        Err(e) => return fail_all(group.drain(..), &e.to_string()),
    };
    if let Err(e) = sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn.conn)
        .await
    {
        return fail_all(group.drain(..), &e.to_string());
    }
    conn.open = true;
    let mut done: Vec<(Reply, Vec<Movement>)> = Vec::with_capacity(group.len());
    // Answered after the group's commit (or rollback): a refusal about a record an earlier
    // posting of this group wrote (an idempotency key, an inbox id) must not be heard before
    // that record is visible.
    let mut refused: Vec<(Reply, InventoryError)> = Vec::new();
    // Loaded articles, warehouses and balances carry over from one posting to the next; each
    // balance is written once, at the end.
    let mut session = Session::default();
    let mut requests = group.drain(..);
    while let Some(req) = requests.next() {
        match post_one(&mut conn.conn, &req, &mut session).await {
            Ok(posted) => done.push((req.reply, posted)),
            Err(Outcome::Alone(e)) => refused.push((req.reply, e)),
            Err(Outcome::Group(e)) => {
                let why = e.to_string();
                let _gone = req.reply.send(Err(unavailable(&why)));
                abort(&mut conn, done, refused, requests, &why).await;
                return;
            }
        }
    }
    drop(requests);
    let committed = match crate::store::sqlite::write_balances(
        &mut conn.conn,
        &mut session,
        chrono::Utc::now(),
    )
    .await
    {
        Ok(()) => sqlx::query("COMMIT")
            .execute(&mut *conn.conn)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match committed {
        Ok(_) => {
            conn.open = false;
            tracing::trace!(postings = done.len(), "group committed");
            for (reply, posted) in done {
                let _gone = reply.send(Ok(posted));
            }
            for (reply, e) in refused {
                let _gone = reply.send(Err(e));
            }
        }
        Err(e) => abort(&mut conn, done, refused, std::iter::empty(), &e).await,
    }
}

/// How one posting of a group failed.
enum Outcome {
    /// The posting's own: rolled back alone.
    Alone(InventoryError),
    /// The database's: the group cannot go on.
    Group(InventoryError),
}

/// Runs one posting in its own savepoint, rolling it (and what it changed in `session`) back if
/// it is refused, fails or panics.
async fn post_one(
    conn: &mut Conn,
    req: &Request,
    session: &mut Session,
) -> Result<Vec<Movement>, Outcome> {
    let group = |e: sqlx::Error| Outcome::Group(InventoryError::Database(e));
    sqlx::query("SAVEPOINT posting")
        .execute(&mut **conn)
        .await
        .map_err(group)?;
    let keys = keys_of(&req.movements);
    let saved = session.save(&keys);
    let result = AssertUnwindSafe(crate::store::sqlite::post_in(
        conn,
        &req.movements,
        &req.by,
        session,
        true,
        req.inbox.as_ref(),
        req.hook.as_deref(),
    ))
    .catch_unwind()
    .await
    .unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned());
        tracing::error!(panic = %message, "a posting panicked; rolled back alone");
        Err(InventoryError::Failed(format!("panicked: {message}")))
    });
    match result {
        Ok(posted) => {
            sqlx::query("RELEASE posting")
                .execute(&mut **conn)
                .await
                .map_err(group)?;
            Ok(posted)
        }
        Err(e) if e.is_transient() => Err(Outcome::Group(e)),
        Err(e) => {
            session.restore(saved);
            sqlx::query("ROLLBACK TO posting")
                .execute(&mut **conn)
                .await
                .map_err(group)?;
            sqlx::query("RELEASE posting")
                .execute(&mut **conn)
                .await
                .map_err(group)?;
            if !e.is_refusal() {
                tracing::error!(error = %e, "a posting failed; rolled back alone");
            }
            Err(Outcome::Alone(e))
        }
    }
}

fn unavailable(why: &str) -> InventoryError {
    InventoryError::Unavailable(format!("the posting was not committed: {why}"))
}

/// Rolls the whole group back and tells everyone it failed (nothing of it was committed).
async fn abort(
    conn: &mut GroupConn,
    done: Vec<(Reply, Vec<Movement>)>,
    refused: Vec<(Reply, InventoryError)>,
    rest: impl Iterator<Item = Request>,
    why: &str,
) {
    tracing::error!(error = why, "group commit failed; rolling the group back");
    match sqlx::query("ROLLBACK").execute(&mut *conn.conn).await {
        Ok(_) => conn.open = false,
        // The connection's state is unknown: it is closed, not handed back (`GroupConn`).
        Err(e) => tracing::error!(error = %e, "rollback after a failed group commit failed"),
    }
    for (reply, _) in done {
        let _gone = reply.send(Err(unavailable(why)));
    }
    for (reply, e) in refused {
        // A refusal stands; a conflict with a record of this group may not (it is gone).
        let e = if matches!(e, InventoryError::Conflict { .. }) {
            unavailable(why)
        } else {
            e
        };
        let _gone = reply.send(Err(e));
    }
    fail_all(rest, why);
}

fn fail_all(rest: impl Iterator<Item = Request>, why: &str) {
    for req in rest {
        let _gone = req.reply.send(Err(unavailable(why)));
    }
}
