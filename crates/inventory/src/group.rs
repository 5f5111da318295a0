//! Group commit for SQLite postings: one task takes every posting that is waiting, runs them in
//! one `BEGIN IMMEDIATE` transaction, writes each touched balance once, commits once, then
//! answers each. Nobody hears "posted" before the commit that made it durable.
//!
//! A posting fails alone. One refused while it is computed (insufficient stock, an unknown
//! article, a figure out of range) has written nothing, and the group goes on. One that fails or
//! panics after it started writing (a hook's conflict, a stored value that cannot be read) is
//! answered with its error, the transaction is rolled back, and the group runs again without
//! it: no savepoints, so the common path pays nothing for the rare one. A failure of the
//! database itself (disk full, I/O, a lost connection) fails the whole group, of which nothing
//! is committed, with `Unavailable` (retryable). The task runs under a
//! `malaka_runtime::Supervisor` (`inventory.committer`, critical): if it ever ends, it is
//! restarted on the same queue.
//!
//! SQLite has one writer at a time, and each commit costs a disk flush. Postings that each open
//! their own transaction queue in SQLite's busy handler, which sleeps 1 to 100 ms between tries;
//! here they queue in order, in process, and share the flush. Each group takes its turn at the
//! file's [`WriteGate`](crate::WriteGate) like the process's other writers, so that they come
//! between two groups rather than wait in the busy handler.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};

use futures::FutureExt as _;
use malaka_runtime::{CancellationToken, Supervisor, TaskSpec};
use sqlx::sqlite::SqlitePool;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::error::InventoryError;
use crate::gate::WriteGate;
use crate::inbox::InboxEntry;
use crate::posting::{BatchRow, BatchedHook, PostingHook, Session};
use crate::types::{Movement, NewMovement};

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
    let gate = WriteGate::of(pool);
    let mut group = Vec::with_capacity(GROUP);
    while rx.recv_many(&mut group, GROUP).await > 0 {
        // In turn with the process's other writers of the file (the outbox relay, alerts),
        // taking in the postings that arrived meanwhile.
        let _turn = gate.turn().await;
        while group.len() < GROUP {
            let Ok(more) = rx.try_recv() else { break };
            group.push(more);
        }
        commit_group(pool, &mut group).await;
        group.clear();
    }
}

type Conn = sqlx::pool::PoolConnection<sqlx::Sqlite>;

/// The rows of one kind of batched hook in a group, with the postings (by index) they belong to.
type Batch<'a> = (&'a dyn BatchedHook, Vec<(usize, BatchRow)>);

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

impl GroupConn {
    async fn run(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        sqlx::query(sql).execute(&mut *self.conn).await.map(|_| ())
    }
}

/// How one posting of a group ended.
enum Outcome {
    Posted(Vec<Movement>),
    /// Refused or failed before writing anything: the group goes on.
    Refused(InventoryError),
    /// Failed (or panicked) after writing: the group's transaction holds its partial writes.
    Broke(InventoryError),
    /// The database failed: the group cannot go on.
    Failed(InventoryError),
}

/// Commits `group`, answering every request in it.
///
/// Optimistic: postings run one after another in one transaction with no savepoints (they cost
/// two statements each on the hot path). A posting refused before writing (insufficient stock,
/// an unknown article, ...) writes nothing and the group goes on. One that fails or panics after
/// it started writing leaves the transaction unusable: the whole transaction is rolled back,
/// that posting is answered with its error, and the group runs again without it. Refusals and
/// failures are answered after the group's outcome is known.
async fn commit_group(pool: &SqlitePool, group: &mut Vec<Request>) {
    let mut conn = match pool.acquire().await {
        Ok(conn) => GroupConn { conn, open: false },
        Err(e) => return fail_all(group.drain(..), &e.to_string()),
    };
    let mut pending: Vec<Request> = std::mem::take(group);
    let mut answered: Vec<(Reply, InventoryError)> = Vec::new();
    'attempt: loop {
        // Open from before `BEGIN` is sent: if this future is dropped while it runs, the
        // statement may still take the write lock, and the connection must not go back to the
        // pool holding it.
        conn.open = true;
        if let Err(e) = conn.run("BEGIN IMMEDIATE").await {
            conn.open = false;
            return abort(
                &mut conn,
                Vec::new(),
                answered,
                pending.into_iter(),
                &e.to_string(),
            )
            .await;
        }
        // What each pending posting did, in order.
        let mut results: Vec<Result<Vec<Movement>, InventoryError>> =
            Vec::with_capacity(pending.len());
        // Loaded articles, warehouses and balances carry over from one posting to the next;
        // each balance is written once, at the end.
        let mut session = Session::default();
        // What the group will read, in three statements instead of three a posting.
        {
            let all: Vec<&NewMovement> = pending.iter().flat_map(|r| r.movements.iter()).collect();
            crate::storage::sqlite::prefetch(&mut conn.conn, &mut session, &all).await;
        }
        // Rows of batched hooks, by kind: (pending index, row).
        let mut batches: Vec<Batch<'_>> = Vec::new();
        let mut broke: Vec<(usize, InventoryError)> = Vec::new();
        for (i, req) in pending.iter().enumerate() {
            let batched = req.hook.as_deref().and_then(|h| h.batched());
            match post_one(&mut conn.conn, req, &mut session, batched.is_none()).await {
                Outcome::Posted(posted) => {
                    if let Some(b) = batched {
                        match b.prepare(&posted) {
                            Ok(row) => match batches.iter_mut().find(|(k, _)| k.kind() == b.kind())
                            {
                                Some((_, rows)) => rows.push((i, row)),
                                None => batches.push((b, vec![(i, row)])),
                            },
                            Err(e) => {
                                broke.push((i, e));
                                break;
                            }
                        }
                    }
                    results.push(Ok(posted));
                }
                Outcome::Refused(e) => results.push(Err(e)),
                Outcome::Broke(e) => {
                    broke.push((i, e));
                    break;
                }
                Outcome::Failed(e) => {
                    let why = e.to_string();
                    let (done, rest) = split(pending, results);
                    answered.extend(rest);
                    return abort(&mut conn, done, answered, std::iter::empty(), &why).await;
                }
            }
        }
        if broke.is_empty() {
            for (writer, rows) in batches {
                let (at, rows): (Vec<usize>, Vec<BatchRow>) = rows.into_iter().unzip();
                match writer.write_batch(&mut conn.conn, rows).await {
                    Ok(refused) => {
                        broke.extend(
                            refused
                                .into_iter()
                                .filter_map(|(j, e)| Some((*at.get(j)?, e))),
                        );
                    }
                    Err(e) => {
                        let why = e.to_string();
                        let (done, rest) = split(pending, results);
                        answered.extend(rest);
                        return abort(&mut conn, done, answered, std::iter::empty(), &why).await;
                    }
                }
            }
        }
        if !broke.is_empty() {
            // Those postings are answered with their errors; the rest run again without them.
            if let Err(r) = conn.run("ROLLBACK").await {
                let why = format!("rolling back a failed posting: {r}");
                return abort(&mut conn, Vec::new(), answered, pending.into_iter(), &why).await;
            }
            conn.open = false;
            broke.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
            for (i, e) in broke {
                if i < pending.len() {
                    let req = pending.remove(i);
                    answered.push((req.reply, e));
                }
            }
            continue 'attempt;
        }
        let (done, refused) = split(pending, results);
        answered.extend(refused);
        let committed = match crate::storage::sqlite::write_balances(
            &mut conn.conn,
            &mut session,
            chrono::Utc::now(),
        )
        .await
        {
            Ok(()) => conn.run("COMMIT").await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match committed {
            Ok(()) => {
                conn.open = false;
                tracing::trace!(postings = done.len(), "group committed");
                for (reply, posted) in done {
                    let _gone = reply.send(Ok(posted));
                }
                for (reply, e) in answered {
                    let _gone = reply.send(Err(e));
                }
            }
            Err(e) => abort(&mut conn, done, answered, std::iter::empty(), &e).await,
        }
        return;
    }
}

type Split = (Vec<(Reply, Vec<Movement>)>, Vec<(Reply, InventoryError)>);

/// The first `results.len()` requests' replies with what they posted, and with their refusals;
/// requests without a result yet (after a database failure) count as refused with it.
fn split(pending: Vec<Request>, results: Vec<Result<Vec<Movement>, InventoryError>>) -> Split {
    let mut done = Vec::with_capacity(results.len());
    let mut refused = Vec::new();
    let mut results = results.into_iter();
    for req in pending {
        match results.next() {
            Some(Ok(posted)) => done.push((req.reply, posted)),
            Some(Err(e)) => refused.push((req.reply, e)),
            None => refused.push((
                req.reply,
                unavailable("the group failed before this posting ran"),
            )),
        }
    }
    (done, refused)
}

/// Runs one posting (its hook too, with `hook`); a panic is a failure of the posting, after it
/// may have written.
async fn post_one(conn: &mut Conn, req: &Request, session: &mut Session, hook: bool) -> Outcome {
    session.writing = false;
    let result = AssertUnwindSafe(crate::storage::sqlite::post_in(
        conn,
        &req.movements,
        &req.by,
        session,
        true,
        req.inbox.as_ref(),
        req.hook.as_deref().filter(|_| hook),
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
        // Whatever it did, the transaction may hold part of it.
        session.writing = true;
        Err(InventoryError::Failed(format!("panicked: {message}")))
    });
    match result {
        Ok(posted) => Outcome::Posted(posted),
        Err(e) if e.is_transient() => Outcome::Failed(e),
        Err(e) if !session.writing => Outcome::Refused(e),
        Err(e) => {
            if !e.is_refusal() {
                tracing::error!(error = %e, "a posting failed; rolled back alone");
            }
            Outcome::Broke(e)
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
    if conn.open {
        match conn.run("ROLLBACK").await {
            Ok(()) => conn.open = false,
            // The connection's state is unknown: it is closed, not handed back (`GroupConn`).
            Err(e) => tracing::error!(error = %e, "rollback after a failed group commit failed"),
        }
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
