//! SQLite storage: one writer, claims and completions as single `UPDATE ... RETURNING` statements
//! in `BEGIN IMMEDIATE` transactions. Wake-ups: in process, at once (the storage's own writes, and
//! commit hooks that see every insert of a hooked connection); from other processes, within
//! [`DEFAULT_WATCH_INTERVAL`] (each subscribed worker's watcher reads the WAL index header, and
//! when a commit changed it, looks for new waiting jobs; see `Watcher`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnection, SqliteOperation, SqlitePool, SqliteRow};
use sqlx::{Acquire, ConnectOptions, Connection, Row};
use tokio::sync::mpsc;

use super::{COLS, Storage, UNFINISHED, from_micros, initial_state, lease_delta, micros};
use crate::error::JobsError;
use crate::types::{
    AttemptError, Enqueued, Finish, JobId, JobRecord, JobState, LeaseStatus, ListFilter, NewJob,
    Outcome, QueueStats, Wakeup,
};
use crate::worker::{Slot, Taker};

/// Receivers of wake-ups in this process, by database file: a storage's own writes wake only
/// the workers of its file (a cancel for job 7 of one database must not stop job 7 of another);
/// commit hooks, which do not know the file, wake everyone (a spurious wake-up costs one claim).
type Subscribers = std::collections::HashMap<Arc<str>, Vec<mpsc::Sender<Wakeup>>>;

fn subscribers() -> &'static std::sync::Mutex<Subscribers> {
    static SUBS: OnceLock<std::sync::Mutex<Subscribers>> = OnceLock::new();
    SUBS.get_or_init(Default::default)
}

fn wake(db: Option<&Arc<str>>, w: Wakeup) {
    let mut subs = subscribers()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (file, senders) in subs.iter_mut() {
        if db.is_some_and(|d| d != file) {
            continue;
        }
        senders.retain(|tx| match tx.try_send(w.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(w)) => {
                // A full channel already holds wake-ups for every queue, so another
                // `Available`/`Resync` adds nothing; a cancel must still arrive.
                if let Wakeup::Cancel(_) = w {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let _closed = tx.send(w).await;
                    });
                }
                true
            }
        });
    }
}

/// Makes every insert into the jobs table through `conn` wake this process's workers when its
/// transaction commits, whoever wrote it (a caller's own transaction included). Call it from the
/// pool's `after_connect`.
///
/// # Errors
/// The connection's handle could not be locked.
pub async fn install_hooks(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let dirty = Arc::new(AtomicBool::new(false));
    let on_update = Arc::clone(&dirty);
    handle.set_update_hook(move |r| {
        if r.operation == SqliteOperation::Insert && r.table == "malaka_jobs" {
            on_update.store(true, Ordering::Relaxed);
        }
    });
    let on_commit = Arc::clone(&dirty);
    handle.set_commit_hook(move || {
        if on_commit.swap(false, Ordering::Relaxed) {
            wake(None, Wakeup::Resync);
        }
        true
    });
    handle.set_rollback_hook(move || dirty.store(false, Ordering::Relaxed));
    Ok(())
}

/// How often a subscribed worker's watcher checks whether another connection (another process,
/// typically) committed, by default: what bounds the pickup of a job enqueued elsewhere (plus one
/// query and one claim), instead of the worker's `poll_interval`. An idle check reads 48 bytes
/// of the `-shm` file (no SQL; `PRAGMA data_version` every 20th check as a safety net).
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_millis(5);

/// Applies this crate's SQLite migrations (sharing `_sqlx_migrations` with other crates).
///
/// # Errors
/// A migration failed.
pub async fn migrate(pool: &SqlitePool) -> Result<(), JobsError> {
    let mut m = sqlx::migrate!("./migrations/sqlite");
    m.set_ignore_missing(true);
    m.run(pool).await?;
    Ok(())
}

/// Jobs in an SQLite database.
///
/// Give it a pool of its own (on the same file) without [`install_hooks`]: its own writes wake
/// workers after they commit, and an in-process lock orders its writers, so they never meet in
/// SQLite's busy handler (which sleeps in whole milliseconds).
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    pool: SqlitePool,
    /// The one connection every write of this storage goes through, in turn: no pool hand-off
    /// or release ping per statement, and writers queue here instead of in SQLite's busy handler.
    writer: Arc<tokio::sync::Mutex<Option<SqliteConnection>>>,
    /// The database file: it scopes this storage's wake-ups.
    db: Arc<str>,
    keep_completed: bool,
    /// How often a subscription's watcher looks for other connections' commits (zero: never).
    watch: Duration,
}

/// The writer connection, held.
type Writer = tokio::sync::OwnedMappedMutexGuard<Option<SqliteConnection>, SqliteConnection>;

impl SqliteStorage {
    /// Storage over `pool` (migrated with [`migrate`]); writes use one more connection made
    /// with the pool's options.
    pub fn new(pool: SqlitePool) -> Self {
        let opts = pool.connect_options();
        let file = opts.get_filename();
        let db = std::fs::canonicalize(file)
            .or_else(|_| std::path::absolute(file))
            .unwrap_or_else(|_| file.to_path_buf());
        Self {
            pool,
            writer: Arc::new(tokio::sync::Mutex::new(None)),
            db: db.to_string_lossy().into(),
            keep_completed: true,
            watch: DEFAULT_WATCH_INTERVAL,
        }
    }

    /// How often each subscribed worker looks for jobs that other connections (other processes:
    /// `malaka jobs enqueue`, another server) committed (default [`DEFAULT_WATCH_INTERVAL`]).
    /// Zero turns the watcher off: such jobs then wait for the worker's `poll_interval`.
    #[must_use]
    pub fn watch_interval(mut self, every: Duration) -> Self {
        self.watch = every;
        self
    }

    /// Whether a completed job stays in the table (state `completed`, until the pruner's
    /// retention) or is deleted as it completes (default: kept).
    #[must_use]
    pub fn keep_completed(mut self, keep: bool) -> Self {
        self.keep_completed = keep;
        self
    }

    /// The writer connection, connected on first use (and again after it failed).
    async fn writer(&self) -> Result<Writer, JobsError> {
        let mut slot = Arc::clone(&self.writer).lock_owned().await;
        if slot.is_none() {
            *slot = Some(self.pool.connect_options().connect().await?);
        }
        tokio::sync::OwnedMutexGuard::try_map(slot, Option::as_mut)
            .map_err(|_| JobsError::Database(sqlx::Error::PoolClosed))
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn state_of(s: &str) -> Result<JobState, JobsError> {
    s.parse()
}

fn record(row: &SqliteRow) -> Result<JobRecord, JobsError> {
    let payload: String = row.try_get("payload")?;
    let tags: String = row.try_get("tags")?;
    let errors: String = row.try_get("errors")?;
    let opt = |name: &str| -> Result<Option<DateTime<Utc>>, JobsError> {
        Ok(row.try_get::<Option<i64>, _>(name)?.map(from_micros))
    };
    Ok(JobRecord {
        id: row.try_get("id")?,
        queue: row.try_get("queue")?,
        kind: row.try_get("kind")?,
        payload: serde_json::from_str(&payload)?,
        priority: row
            .try_get::<i64, _>("priority")?
            .clamp(i16::MIN.into(), i16::MAX.into()) as i16,
        state: state_of(row.try_get("state")?)?,
        attempt: row.try_get("attempt")?,
        max_attempts: row.try_get("max_attempts")?,
        run_at: from_micros(row.try_get("run_at")?),
        lease_expires_at: opt("lease_expires_at")?,
        locked_by: row.try_get("locked_by")?,
        unique_key: row.try_get("unique_key")?,
        tags: serde_json::from_str(&tags)?,
        errors: serde_json::from_str::<Vec<AttemptError>>(&errors)?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        created_at: from_micros(row.try_get("created_at")?),
        attempted_at: opt("attempted_at")?,
        finished_at: opt("finished_at")?,
    })
}

fn error_json(attempt: i32, at: DateTime<Utc>, error: &str) -> Result<String, JobsError> {
    Ok(serde_json::to_string(&AttemptError {
        attempt,
        at,
        error: error.to_owned(),
    })?)
}

/// Inserts `job` through `conn`, which may be inside the caller's transaction: the job then
/// exists if and only if that transaction commits. With [`install_hooks`] on the connection, the
/// commit wakes the workers.
///
/// # Errors
/// An invalid job or a database error.
pub async fn enqueue_in(conn: &mut SqliteConnection, job: &NewJob) -> Result<Enqueued, JobsError> {
    Ok(insert(conn, job, None).await?.0)
}

/// Inserts `job`, already claimed for `taker`'s worker when one is given (the job must be
/// runnable now); returns the claimed row with it.
async fn insert(
    conn: &mut SqliteConnection,
    job: &NewJob,
    taker: Option<&Taker>,
) -> Result<(Enqueued, Option<JobRecord>), JobsError> {
    job.validate()?;
    let now = Utc::now();
    let run_at = job.run_at.unwrap_or(now);
    let tags = serde_json::to_string(&job.tags)?;
    let payload = serde_json::to_string(&job.payload)?;
    let (state, attempt, lease, worker) = match taker {
        Some(t) => (
            JobState::Running,
            1,
            Some(micros(now + lease_delta(t.lease()))),
            Some(t.worker()),
        ),
        None => (initial_state(job, now), 0, None, None),
    };
    for _ in 0..3 {
        let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO malaka_jobs (queue, kind, payload, priority, state, max_attempts, run_at, \
             unique_key, tags, created_at, attempt, attempted_at, lease_expires_at, locked_by) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN {UNFINISHED} \
             DO NOTHING RETURNING {}",
            if taker.is_some() { COLS } else { "id" }
        )))
        .bind(&job.queue)
        .bind(&job.kind)
        .bind(&payload)
        .bind(i64::from(job.priority))
        .bind(state.as_str())
        .bind(job.max_attempts)
        .bind(micros(run_at))
        .bind(&job.unique_key)
        .bind(&tags)
        .bind(micros(now))
        .bind(attempt)
        .bind(taker.map(|_| micros(now)))
        .bind(lease)
        .bind(worker)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = inserted {
            let id: i64 = row.try_get("id")?;
            let claimed = if taker.is_some() {
                Some(record(&row)?)
            } else {
                None
            };
            return Ok((
                Enqueued {
                    id,
                    duplicate: false,
                },
                claimed,
            ));
        }
        let existing: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM malaka_jobs WHERE unique_key = ? AND state IN {UNFINISHED}"
        )))
        .bind(&job.unique_key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(id) = existing {
            return Ok((
                Enqueued {
                    id,
                    duplicate: true,
                },
                None,
            ));
        }
        // The holder finished between the two statements: try again.
    }
    Err(JobsError::Invalid(
        "unique_key: contention did not settle after 3 tries".into(),
    ))
}

/// Workers of this process that take jobs as they are enqueued, by database file.
type Takers = std::collections::HashMap<Arc<str>, Vec<Weak<Taker>>>;

fn takers() -> &'static std::sync::Mutex<Takers> {
    static TAKERS: OnceLock<std::sync::Mutex<Takers>> = OnceLock::new();
    TAKERS.get_or_init(Default::default)
}

/// An idle worker of this process for `queue` on database `db`, with a slot reserved.
fn idle_taker(db: &Arc<str>, queue: &str) -> Option<(Arc<Taker>, Slot)> {
    let mut all = takers()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let list = all.get_mut(db)?;
    let mut found = None;
    list.retain(|w| {
        let Some(t) = w.upgrade() else {
            return false;
        };
        if found.is_none()
            && t.queue() == queue
            && let Some(slot) = t.reserve()
        {
            found = Some((t, slot));
        }
        true
    });
    found
}

fn pairs_json(jobs: impl Iterator<Item = (JobId, i32)>) -> Result<String, JobsError> {
    let v: Vec<[i64; 2]> = jobs.map(|(id, a)| [id, i64::from(a)]).collect();
    Ok(serde_json::to_string(&v)?)
}

#[async_trait]
impl Storage for SqliteStorage {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, JobsError> {
        // An idle worker of this process takes a job that may run now straight from the insert:
        // no wake-up, no claim statement.
        let runnable = job.run_at.is_none_or(|t| t <= Utc::now());
        let taker = if runnable {
            idle_taker(&self.db, &job.queue)
        } else {
            None
        };
        let mut w = self.writer().await?;
        let (out, claimed) = insert(&mut w, &job, taker.as_ref().map(|(t, _)| &**t)).await?;
        drop(w);
        match (claimed, taker) {
            (Some(record), Some((taker, slot))) => {
                if let Err(record) = taker.take(record, slot) {
                    // The worker stopped in between: the job goes back to the queue.
                    self.release(&[(record.id, record.attempt, false)]).await?;
                }
            }
            _ if !out.duplicate => wake(Some(&self.db), Wakeup::Available(job.queue.clone())),
            _ => {}
        }
        Ok(out)
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<JobId>, JobsError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let now = Utc::now();
        let mut rows = Vec::with_capacity(jobs.len());
        let mut queues = std::collections::BTreeSet::new();
        for j in &jobs {
            j.validate()?;
            queues.insert(j.queue.clone());
            rows.push(serde_json::json!([
                j.queue,
                j.kind,
                serde_json::to_string(&j.payload)?,
                j.priority,
                initial_state(j, now).as_str(),
                j.max_attempts,
                micros(j.run_at.unwrap_or(now)),
                j.unique_key,
                serde_json::to_string(&j.tags)?,
            ]));
        }
        let body = serde_json::to_string(&rows)?;
        let mut w = self.writer().await?;
        let mut ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "INSERT INTO malaka_jobs (queue, kind, payload, priority, state, max_attempts, run_at, \
             unique_key, tags, created_at) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
                    value ->> 6, value ->> 7, value ->> 8, ? \
             FROM json_each(?) WHERE true ORDER BY key \
             ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN {UNFINISHED} \
             DO NOTHING RETURNING id"
        )))
        .bind(micros(now))
        .bind(&body)
        .fetch_all(&mut *w)
        .await?;
        drop(w);
        ids.sort_unstable();
        for q in queues {
            wake(Some(&self.db), Wakeup::Available(q));
        }
        Ok(ids)
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, JobsError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLS} FROM malaka_jobs WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record).transpose()
    }

    async fn list(&self, f: &ListFilter) -> Result<Vec<JobRecord>, JobsError> {
        // Only the filters given, so each shape reads its index (`malaka_jobs_*_id`).
        let mut q = sqlx::QueryBuilder::new(format!("SELECT {COLS} FROM malaka_jobs WHERE 1 = 1"));
        if let Some(v) = &f.queue {
            q.push(" AND queue = ").push_bind(v.as_str());
        }
        if let Some(v) = &f.kind {
            q.push(" AND kind = ").push_bind(v.as_str());
        }
        if !f.states.is_empty() {
            q.push(" AND state IN (");
            let mut sep = q.separated(", ");
            for st in &f.states {
                sep.push_bind(st.as_str());
            }
            q.push(")");
        }
        if let Some(v) = &f.tag {
            q.push(" AND EXISTS (SELECT 1 FROM json_each(tags) WHERE value = ")
                .push_bind(v.as_str())
                .push(")");
        }
        if let Some(v) = f.before_id {
            q.push(" AND id < ").push_bind(v);
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(f.page_size());
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(record).collect()
    }

    async fn stats(&self) -> Result<Vec<QueueStats>, JobsError> {
        let now = micros(Utc::now());
        let rows = sqlx::query(
            "SELECT queue, state, count(*) AS n, \
                    min(CASE WHEN state IN ('available', 'scheduled', 'retryable') AND run_at <= ?1 \
                             THEN run_at END) AS oldest \
             FROM malaka_jobs GROUP BY queue, state ORDER BY queue",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let rows = rows
            .iter()
            .map(|row| {
                let oldest: Option<i64> = row.try_get("oldest")?;
                Ok((
                    row.try_get("queue")?,
                    state_of(row.try_get("state")?)?,
                    row.try_get("n")?,
                    oldest.map(|o| Duration::from_micros(u64::try_from(now - o).unwrap_or(0))),
                ))
            })
            .collect::<Result<Vec<_>, JobsError>>()?;
        Ok(super::fold_stats(rows))
    }

    async fn cancel(&self, id: JobId) -> Result<JobRecord, JobsError> {
        let mut w = self.writer().await?;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let now = micros(Utc::now());
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLS} FROM malaka_jobs WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(JobsError::NotFound(id))?;
        let job = record(&row)?;
        match job.state {
            JobState::Cancelled => {}
            JobState::Completed | JobState::Discarded => {
                return Err(JobsError::WrongState {
                    id,
                    state: job.state,
                    message: "a finished job cannot be cancelled".into(),
                });
            }
            JobState::Running => {
                sqlx::query("UPDATE malaka_jobs SET cancel_requested = 1 WHERE id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            _ => {
                sqlx::query(
                    "UPDATE malaka_jobs SET state = 'cancelled', finished_at = ? WHERE id = ?",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        if job.state == JobState::Running {
            wake(Some(&self.db), Wakeup::Cancel(id));
        }
        self.get(id).await?.ok_or(JobsError::NotFound(id))
    }

    async fn retry(&self, id: JobId) -> Result<JobRecord, JobsError> {
        let mut w = self.writer().await?;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let now = micros(Utc::now());
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM malaka_jobs WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let state = state_of(&state.ok_or(JobsError::NotFound(id))?)?;
        let sql = match state {
            JobState::Discarded | JobState::Cancelled => {
                "UPDATE malaka_jobs SET state = 'available', run_at = ?, attempt = 0, \
                 finished_at = NULL, cancel_requested = 0 WHERE id = ?"
            }
            JobState::Retryable | JobState::Scheduled => {
                "UPDATE malaka_jobs SET state = 'available', run_at = ? WHERE id = ?"
            }
            _ => {
                return Err(JobsError::WrongState {
                    id,
                    state,
                    message:
                        "only discarded, cancelled, retryable or scheduled jobs can be retried"
                            .into(),
                });
            }
        };
        let done = sqlx::query(sql).bind(now).bind(id).execute(&mut *tx).await;
        if let Err(sqlx::Error::Database(e)) = &done
            && e.is_unique_violation()
        {
            return Err(JobsError::WrongState {
                id,
                state,
                message: "another unfinished job holds its unique key".into(),
            });
        }
        done?;
        tx.commit().await?;
        let job = self.get(id).await?.ok_or(JobsError::NotFound(id))?;
        wake(Some(&self.db), Wakeup::Available(job.queue.clone()));
        Ok(job)
    }

    async fn claim(
        &self,
        queue: &str,
        limit: usize,
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<JobRecord>, JobsError> {
        let now = Utc::now();
        // One autocommit statement: a write statement takes SQLite's write lock before it reads,
        // so it needs no explicit `BEGIN IMMEDIATE` (and saves two round trips).
        let mut w = self.writer().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE malaka_jobs SET state = 'running', attempt = attempt + 1, attempted_at = ?1, \
                    lease_expires_at = ?2, locked_by = ?3 \
             WHERE id IN (SELECT id FROM malaka_jobs \
                          WHERE queue = ?4 AND state IN ('available', 'scheduled', 'retryable') \
                            AND run_at <= ?1 \
                          ORDER BY priority, run_at, id LIMIT ?5) \
             RETURNING {COLS}"
        )))
        .bind(micros(now))
        .bind(micros(now + lease_delta(lease)))
        .bind(worker)
        .bind(queue)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *w)
        .await?;
        drop(w);
        let mut jobs = rows.iter().map(record).collect::<Result<Vec<_>, _>>()?;
        jobs.sort_by_key(|j| (j.priority, j.run_at, j.id));
        Ok(jobs)
    }

    async fn finish(&self, batch: &[Finish]) -> Result<u64, JobsError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let now = Utc::now();
        let mut w = self.writer().await?;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let conn = tx.acquire().await?;
        let mut changed = 0;
        let completed: Vec<(JobId, i32)> = batch
            .iter()
            .filter(|f| f.outcome == Outcome::Completed)
            .map(|f| (f.id, f.attempt))
            .collect();
        if !completed.is_empty() {
            changed += sqlx::query(if self.keep_completed {
                "UPDATE malaka_jobs SET state = 'completed', finished_at = ?1, lease_expires_at = NULL \
                 WHERE state = 'running' AND (id, attempt) IN \
                       (SELECT value ->> 0, value ->> 1 FROM json_each(?2))"
            } else {
                "DELETE FROM malaka_jobs WHERE ?1 IS NOT NULL AND state = 'running' AND (id, attempt) IN \
                       (SELECT value ->> 0, value ->> 1 FROM json_each(?2))"
            })
            .bind(micros(now))
            .bind(pairs_json(completed.into_iter())?)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        }
        for f in batch {
            let (state, run_at, error) = match &f.outcome {
                Outcome::Completed => continue,
                Outcome::Retry { at, error } => ("retryable", *at, Some(error.as_str())),
                Outcome::Snooze { at } => ("scheduled", *at, None),
                Outcome::Discard { error } => ("discarded", now, Some(error.as_str())),
                Outcome::Cancelled { error } => ("cancelled", now, error.as_deref()),
            };
            let final_state = state != "retryable" && state != "scheduled";
            let err = error.map(|e| error_json(f.attempt, now, e)).transpose()?;
            changed += sqlx::query(
                "UPDATE malaka_jobs SET state = ?1, run_at = ?2, lease_expires_at = NULL, \
                        locked_by = NULL, finished_at = CASE WHEN ?3 THEN ?4 ELSE NULL END, \
                        errors = CASE WHEN ?5 IS NULL THEN errors \
                                      ELSE json_insert(errors, '$[#]', json(?5)) END, \
                        max_attempts = max_attempts + (?1 = 'scheduled') \
                 WHERE id = ?6 AND attempt = ?7 AND state = 'running'",
            )
            .bind(state)
            .bind(micros(run_at))
            .bind(final_state)
            .bind(micros(now))
            .bind(err)
            .bind(f.id)
            .bind(f.attempt)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn heartbeat(
        &self,
        jobs: &[(JobId, i32)],
        lease: Duration,
    ) -> Result<Vec<LeaseStatus>, JobsError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let until = Utc::now() + lease_delta(lease);
        let mut w = self.writer().await?;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query(
            "UPDATE malaka_jobs SET lease_expires_at = ?1 \
             WHERE state = 'running' AND (id, attempt) IN \
                   (SELECT value ->> 0, value ->> 1 FROM json_each(?2)) \
             RETURNING id, cancel_requested",
        )
        .bind(micros(until))
        .bind(pairs_json(jobs.iter().copied())?)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(LeaseStatus {
                    id: r.try_get("id")?,
                    cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
                })
            })
            .collect()
    }

    async fn release(&self, jobs: &[(JobId, i32, bool)]) -> Result<u64, JobsError> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let now = micros(Utc::now());
        let mut w = self.writer().await?;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let mut n = 0;
        for (id, attempt, started) in jobs {
            n += sqlx::query(
                "UPDATE malaka_jobs SET state = 'available', run_at = ?1, lease_expires_at = NULL, \
                        locked_by = NULL, attempt = attempt - ?2 \
                 WHERE id = ?3 AND attempt = ?4 AND state = 'running'",
            )
            .bind(now)
            .bind(if *started { 0 } else { 1 })
            .bind(id)
            .bind(attempt)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        wake(Some(&self.db), Wakeup::Resync);
        Ok(n)
    }

    async fn next_run_at(&self, queue: &str) -> Result<Option<DateTime<Utc>>, JobsError> {
        let t: Option<i64> = sqlx::query_scalar(
            "SELECT min(run_at) FROM malaka_jobs \
             WHERE queue = ? AND state IN ('available', 'scheduled', 'retryable')",
        )
        .bind(queue)
        .fetch_one(&self.pool)
        .await?;
        Ok(t.map(from_micros))
    }

    async fn rescue_expired(&self) -> Result<u64, JobsError> {
        let now = Utc::now();
        let mut w = self.writer().await?;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let n = sqlx::query(
            "UPDATE malaka_jobs SET \
                state = CASE WHEN cancel_requested THEN 'cancelled' \
                             WHEN attempt >= max_attempts THEN 'discarded' ELSE 'retryable' END, \
                finished_at = CASE WHEN cancel_requested OR attempt >= max_attempts THEN ?1 END, \
                run_at = ?1, lease_expires_at = NULL, \
                errors = json_insert(errors, '$[#]', json_object('attempt', attempt, 'at', ?2, \
                    'error', 'lease expired: worker ' || coalesce(locked_by, '?') || ' stopped renewing it')), \
                locked_by = NULL \
             WHERE state = 'running' AND lease_expires_at < ?1",
        )
        .bind(micros(now))
        .bind(now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if n > 0 {
            wake(Some(&self.db), Wakeup::Resync);
        }
        Ok(n)
    }

    async fn prune(
        &self,
        completed_before: DateTime<Utc>,
        failed_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, JobsError> {
        let mut w = self.writer().await?;
        let n = sqlx::query(
            "DELETE FROM malaka_jobs WHERE id IN (SELECT id FROM malaka_jobs \
               WHERE (state = 'completed' AND finished_at < ?1) \
                  OR (state IN ('discarded', 'cancelled') AND finished_at < ?2) \
               ORDER BY id LIMIT ?3)",
        )
        .bind(micros(completed_before))
        .bind(micros(failed_before))
        .bind(i64::from(limit))
        .execute(&mut *w)
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn promote_due(&self) -> Result<u64, JobsError> {
        let mut w = self.writer().await?;
        let n = sqlx::query(
            "UPDATE malaka_jobs SET state = 'available' \
             WHERE state IN ('scheduled', 'retryable') AND run_at <= ?",
        )
        .bind(micros(Utc::now()))
        .execute(&mut *w)
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn cron_tick(
        &self,
        name: &str,
        tick: DateTime<Utc>,
        job: NewJob,
    ) -> Result<bool, JobsError> {
        let mut w = self.writer().await?;
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
        let won = sqlx::query(
            "INSERT INTO malaka_cron (name, last_tick) VALUES (?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET last_tick = excluded.last_tick \
             WHERE malaka_cron.last_tick < excluded.last_tick",
        )
        .bind(name)
        .bind(micros(tick))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if won {
            enqueue_in(&mut tx, &job).await?;
        }
        tx.commit().await?;
        if won {
            wake(Some(&self.db), Wakeup::Available(job.queue));
        }
        Ok(won)
    }

    fn attach(&self, taker: Arc<Taker>) {
        takers()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(Arc::clone(&self.db))
            .or_default()
            .push(Arc::downgrade(&taker));
    }

    async fn subscribe(&self) -> Result<mpsc::Receiver<Wakeup>, JobsError> {
        let (tx, rx) = mpsc::channel(256);
        if !self.watch.is_zero() {
            // A connection of its own, outside the pool: it is held for the subscription's life.
            // Without it (an in-memory database has no other process), the poll finds such jobs.
            let watcher = match self.pool.connect_options().connect().await {
                Ok(conn) => Watcher::start(conn, &self.db, tx.clone()).await,
                Err(e) => Err(e.into()),
            };
            match watcher {
                Ok(w) => {
                    let watch = self.watch;
                    // Its end is watched: a panic would otherwise leave other processes' jobs
                    // to the poll without a word.
                    drop(tokio::spawn(async move {
                        if let Err(e) = tokio::spawn(w.run(watch)).await {
                            tracing::error!(error = %e,
                                "the job watcher stopped; jobs other processes enqueue wait for the poll");
                        }
                    }));
                }
                Err(e) => tracing::warn!(error = %e,
                    "job watcher not started; jobs other processes enqueue wait for the poll"),
            }
        }
        subscribers()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(Arc::clone(&self.db))
            .or_default()
            .push(tx);
        Ok(rx)
    }
}

/// Finds jobs that other connections committed and wakes one subscription for their queues.
///
/// SQLite has no cross-process notification, so the watcher looks every `interval`, as cheaply
/// as it can: it reads the 48-byte header of the database's WAL index (the `-shm` file, which
/// every commit of every process changes: its `iChange` counter and `mxFrame`) with one `pread`,
/// no SQL. Only when that changed does it run one query on a connection of its own: the queues of
/// jobs inserted since its last look (ids above the last `AUTOINCREMENT` value it saw) that are
/// still waiting. Every [`SAFETY_TICKS`] quiet looks it also compares `PRAGMA data_version`
/// (which changes when another connection committed), so a change the header read missed (no
/// `-shm` file, a future SQLite) costs at most that much longer. Jobs this process enqueued are
/// usually claimed by then (they woke the worker at once), so they cost nothing more. Other
/// processes' retries and cancels are not watched for: the poll and the heartbeat find them.
struct Watcher {
    conn: SqliteConnection,
    tx: mpsc::Sender<Wakeup>,
    probe: Option<Probe>,
    version: i64,
    seen: i64,
}

/// Looks since the last SQL check after which `PRAGMA data_version` is compared anyway.
const SAFETY_TICKS: u32 = 20;

/// The WAL index header of a database file, read with plain file I/O.
struct Probe {
    file: std::fs::File,
    last: [u8; 48],
}

impl Probe {
    /// The header of `db`'s `-shm` file, if it has one (WAL mode) that can be read.
    fn open(db: &str) -> Option<Self> {
        let file = std::fs::File::open(format!("{db}-shm")).ok()?;
        let mut p = Self {
            file,
            last: [0; 48],
        };
        p.changed().ok()?;
        Some(p)
    }

    /// Whether the header changed since the last read (a torn read counts as a change).
    fn changed(&mut self) -> std::io::Result<bool> {
        use std::io::{Read, Seek, SeekFrom};
        let mut now = [0u8; 48];
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_exact(&mut now)?;
        let changed = now != self.last;
        self.last = now;
        Ok(changed)
    }
}

impl Watcher {
    async fn start(
        mut conn: SqliteConnection,
        db: &str,
        tx: mpsc::Sender<Wakeup>,
    ) -> Result<Self, JobsError> {
        let version = data_version(&mut conn).await?;
        let (seen, _) = new_waiting(&mut conn, i64::MAX).await?;
        // After the queries above: this connection now holds the WAL index open, so the file
        // stays for as long as the watcher runs.
        let probe = Probe::open(db);
        if probe.is_none() {
            tracing::debug!(%db, "no WAL index to read; the job watcher checks `PRAGMA data_version` instead");
        }
        Ok(Self {
            conn,
            tx,
            probe,
            version,
            seen,
        })
    }

    async fn run(mut self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut quiet = 0u32;
        loop {
            tick.tick().await;
            if self.tx.is_closed() {
                return;
            }
            // Whether a commit surely happened (the header changed); without a header to read,
            // `PRAGMA data_version` tells, every time.
            let changed = match self.probe.as_mut().map(Probe::changed) {
                Some(Ok(true)) => true,
                Some(Ok(false)) => {
                    quiet += 1;
                    if quiet < SAFETY_TICKS {
                        continue;
                    }
                    false
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "the WAL index header cannot be read; the job watcher checks `PRAGMA data_version` instead");
                    self.probe = None;
                    false
                }
                None => false,
            };
            quiet = 0;
            match self.look(changed).await {
                Ok(()) => failing = false,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "job watcher: reading the database failed; jobs of other processes wait for the poll meanwhile");
                    }
                    failing = true;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Looks for new waiting jobs: at once when the header read saw a change, else only if
    /// `PRAGMA data_version` says another connection committed.
    async fn look(&mut self, changed: bool) -> Result<(), JobsError> {
        if !changed {
            let version = data_version(&mut self.conn).await?;
            if version == self.version {
                return Ok(());
            }
            self.version = version;
        }
        let (seen, queues) = new_waiting(&mut self.conn, self.seen).await?;
        self.seen = seen;
        for q in queues {
            // A full channel already holds wake-ups enough.
            let _full = self.tx.try_send(Wakeup::Available(q));
        }
        Ok(())
    }
}

async fn data_version(conn: &mut SqliteConnection) -> Result<i64, JobsError> {
    Ok(sqlx::query_scalar("PRAGMA data_version")
        .fetch_one(&mut *conn)
        .await?)
}

/// The last job id handed out, and the queues of waiting jobs with an id above `after`, read in
/// one statement (one snapshot).
async fn new_waiting(
    conn: &mut SqliteConnection,
    after: i64,
) -> Result<(i64, Vec<String>), JobsError> {
    let row = sqlx::query(
        "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'malaka_jobs'), 0) AS seen, \
                (SELECT json_group_array(DISTINCT queue) FROM malaka_jobs \
                 WHERE id > ?1 AND state IN ('available', 'scheduled', 'retryable')) AS queues",
    )
    .bind(after)
    .fetch_one(&mut *conn)
    .await?;
    let queues: String = row.try_get("queues")?;
    Ok((row.try_get("seen")?, serde_json::from_str(&queues)?))
}
