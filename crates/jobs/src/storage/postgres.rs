//! PostgreSQL storage for many nodes: batched `FOR UPDATE SKIP LOCKED` claims, batched fenced
//! completions through `unnest`, and `LISTEN/NOTIFY` wake-ups (a trigger notifies on insert).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgRow};
use tokio::sync::mpsc;

use super::{COLS, Storage, UNFINISHED, initial_state, lease_delta};
use crate::error::JobsError;
use crate::types::{
    AttemptError, Enqueued, Finish, JobId, JobRecord, JobState, LeaseStatus, ListFilter, NewJob,
    Outcome, QueueStats, Wakeup,
};

/// The channel new jobs are announced on (payload: the queue name).
pub const JOBS_CHANNEL: &str = "malaka_jobs";
/// The channel cancel requests are announced on (payload: the job id).
pub const CANCEL_CHANNEL: &str = "malaka_jobs_cancel";

/// Applies this crate's PostgreSQL migrations (sharing `_sqlx_migrations` with other crates).
///
/// # Errors
/// A migration failed.
pub async fn migrate(pool: &PgPool) -> Result<(), JobsError> {
    let mut m = sqlx::migrate!("./migrations/postgres");
    m.set_ignore_missing(true);
    m.run(pool).await?;
    Ok(())
}

/// Jobs in a PostgreSQL database shared by any number of nodes.
///
/// Enqueues go through the given pool and are durable when they return. Workers' own state
/// changes (claims, outcomes, heartbeats) go through a second pool on the same database with
/// `synchronous_commit = off`: they do not wait for the WAL flush, so a database crash can undo
/// the last fraction of a second of them, and the affected jobs run again (at least once, never
/// lost).
#[derive(Debug, Clone)]
pub struct PgStorage {
    pool: PgPool,
    worker_pool: PgPool,
    keep_completed: bool,
}

impl PgStorage {
    /// Storage over `pool` (migrated with [`migrate`]).
    pub fn new(pool: PgPool) -> Self {
        let opts = (*pool.connect_options())
            .clone()
            .options([("synchronous_commit", "off")]);
        let worker_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(pool.options().get_max_connections().max(2))
            // No ping before each claim or outcome: a broken connection fails that statement,
            // which the worker retries, instead of costing every statement a round trip.
            .test_before_acquire(false)
            .connect_lazy_with(opts);
        Self {
            pool,
            worker_pool,
            keep_completed: true,
        }
    }

    /// Whether a completed job stays in the table (state `completed`, until the pruner's
    /// retention) or is deleted as it completes (default: kept). Deleting is what
    /// graphile-worker and Sidekiq do and is cheaper: no new row version, no index entries.
    #[must_use]
    pub fn keep_completed(mut self, keep: bool) -> Self {
        self.keep_completed = keep;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn record(row: &PgRow) -> Result<JobRecord, JobsError> {
    let errors: serde_json::Value = row.try_get("errors")?;
    Ok(JobRecord {
        id: row.try_get("id")?,
        queue: row.try_get("queue")?,
        kind: row.try_get("kind")?,
        payload: row.try_get("payload")?,
        priority: row.try_get("priority")?,
        state: row.try_get::<&str, _>("state")?.parse()?,
        attempt: row.try_get("attempt")?,
        max_attempts: row.try_get("max_attempts")?,
        run_at: row.try_get("run_at")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        locked_by: row.try_get("locked_by")?,
        unique_key: row.try_get("unique_key")?,
        tags: row.try_get("tags")?,
        errors: serde_json::from_value::<Vec<AttemptError>>(errors)?,
        cancel_requested: row.try_get("cancel_requested")?,
        created_at: row.try_get("created_at")?,
        attempted_at: row.try_get("attempted_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// Inserts `job` through `conn`, which may be inside the caller's transaction: the job then
/// exists if and only if that transaction commits (and its `NOTIFY` goes out on commit).
///
/// # Errors
/// An invalid job or a database error.
pub async fn enqueue_in(conn: &mut PgConnection, job: &NewJob) -> Result<Enqueued, JobsError> {
    job.validate()?;
    let now = Utc::now();
    for _ in 0..3 {
        let inserted: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "INSERT INTO malaka_jobs (queue, kind, payload, priority, state, max_attempts, run_at, \
             unique_key, tags) VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now()), $8, $9) \
             ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN {UNFINISHED} \
             DO NOTHING RETURNING id"
        )))
        .bind(&job.queue)
        .bind(&job.kind)
        .bind(&job.payload)
        .bind(job.priority)
        .bind(initial_state(job, now).as_str())
        .bind(job.max_attempts)
        .bind(job.run_at)
        .bind(&job.unique_key)
        .bind(&job.tags)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(id) = inserted {
            return Ok(Enqueued {
                id,
                duplicate: false,
            });
        }
        let existing: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM malaka_jobs WHERE unique_key = $1 AND state IN {UNFINISHED}"
        )))
        .bind(&job.unique_key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(id) = existing {
            return Ok(Enqueued {
                id,
                duplicate: true,
            });
        }
    }
    Err(JobsError::Invalid(
        "unique_key: contention did not settle after 3 tries".into(),
    ))
}

/// Wakes the workers of each distinct queue in `queues` (one `NOTIFY` for all of them).
async fn notify_queues(pool: &PgPool, queues: &[String]) -> Result<(), JobsError> {
    let mut distinct = queues.to_vec();
    distinct.sort();
    distinct.dedup();
    if !distinct.is_empty() {
        sqlx::query("SELECT pg_notify($1, q) FROM unnest($2::text[]) AS q")
            .bind(JOBS_CHANNEL)
            .bind(&distinct)
            .execute(pool)
            .await?;
    }
    Ok(())
}

#[async_trait]
impl Storage for PgStorage {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, JobsError> {
        let mut conn = self.pool.acquire().await?;
        enqueue_in(&mut conn, &job).await
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<JobId>, JobsError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let now = Utc::now();
        let n = jobs.len();
        let (mut queue, mut kind, mut payload, mut priority, mut state, mut max, mut run_at) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut unique, mut tags) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for j in jobs {
            j.validate()?;
            state.push(initial_state(&j, now).as_str());
            run_at.push(j.run_at);
            queue.push(j.queue);
            kind.push(j.kind);
            payload.push(j.payload);
            priority.push(j.priority);
            max.push(j.max_attempts);
            unique.push(j.unique_key);
            // Arrays of arrays must be rectangular in PostgreSQL: pass tags as JSON text.
            tags.push(serde_json::to_string(&j.tags)?);
        }
        let mut ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "INSERT INTO malaka_jobs (queue, kind, payload, priority, state, max_attempts, run_at, \
                                      unique_key, tags) \
             SELECT q, k, p, pr, s, m, coalesce(r, now()), u, \
                    ARRAY(SELECT jsonb_array_elements_text(t::jsonb)) \
             FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::smallint[], $5::text[], \
                         $6::int[], $7::timestamptz[], $8::text[], $9::text[]) \
                  WITH ORDINALITY AS j(q, k, p, pr, s, m, r, u, t, ord) \
             ORDER BY ord \
             ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN {UNFINISHED} \
             DO NOTHING RETURNING id"
        )))
        .bind(&queue)
        .bind(&kind)
        .bind(&payload)
        .bind(&priority)
        .bind(&state)
        .bind(&max)
        .bind(&run_at)
        .bind(&unique)
        .bind(&tags)
        .fetch_all(&self.pool)
        .await?;
        ids.sort_unstable();
        Ok(ids)
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, JobsError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLS} FROM malaka_jobs WHERE id = $1"
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
            let states: Vec<&str> = f.states.iter().map(|s| s.as_str()).collect();
            q.push(" AND state = ANY(").push_bind(states).push(")");
        }
        if let Some(v) = &f.tag {
            q.push(" AND ").push_bind(v.as_str()).push(" = ANY(tags)");
        }
        if let Some(v) = f.before_id {
            q.push(" AND id < ").push_bind(v);
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(f.page_size());
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(record).collect()
    }

    async fn stats(&self) -> Result<Vec<QueueStats>, JobsError> {
        let rows = sqlx::query(
            "SELECT queue, state, count(*) AS n, \
                    extract(epoch FROM now() - min(CASE WHEN state IN ('available', 'scheduled', 'retryable') \
                                                         AND run_at <= now() THEN run_at END))::float8 AS age \
             FROM malaka_jobs GROUP BY queue, state ORDER BY queue",
        )
        .fetch_all(&self.pool)
        .await?;
        let rows = rows
            .iter()
            .map(|row| {
                let age: Option<f64> = row.try_get("age")?;
                Ok((
                    row.try_get("queue")?,
                    row.try_get::<&str, _>("state")?.parse()?,
                    row.try_get("n")?,
                    age.map(|a| Duration::try_from_secs_f64(a.max(0.0)).unwrap_or_default()),
                ))
            })
            .collect::<Result<Vec<_>, JobsError>>()?;
        Ok(super::fold_stats(rows))
    }

    async fn cancel(&self, id: JobId) -> Result<JobRecord, JobsError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLS} FROM malaka_jobs WHERE id = $1 FOR UPDATE"
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
                sqlx::query("UPDATE malaka_jobs SET cancel_requested = true WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CANCEL_CHANNEL)
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            _ => {
                sqlx::query(
                    "UPDATE malaka_jobs SET state = 'cancelled', finished_at = now() WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        self.get(id).await?.ok_or(JobsError::NotFound(id))
    }

    async fn retry(&self, id: JobId) -> Result<JobRecord, JobsError> {
        let mut tx = self.pool.begin().await?;
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM malaka_jobs WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let state: JobState = state.ok_or(JobsError::NotFound(id))?.parse()?;
        let sql = match state {
            JobState::Discarded | JobState::Cancelled => {
                "UPDATE malaka_jobs SET state = 'available', run_at = now(), attempt = 0, \
                 finished_at = NULL, cancel_requested = false WHERE id = $1 RETURNING queue"
            }
            JobState::Retryable | JobState::Scheduled => {
                "UPDATE malaka_jobs SET state = 'available', run_at = now() WHERE id = $1 RETURNING queue"
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
        let queue: Result<String, _> = sqlx::query_scalar(sql).bind(id).fetch_one(&mut *tx).await;
        let queue = match queue {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(JobsError::WrongState {
                    id,
                    state,
                    message: "another unfinished job holds its unique key".into(),
                });
            }
            other => other?,
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(super::postgres::JOBS_CHANNEL)
            .bind(&queue)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.get(id).await?.ok_or(JobsError::NotFound(id))
    }

    async fn claim(
        &self,
        queue: &str,
        limit: usize,
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<JobRecord>, JobsError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH next AS ( \
                SELECT id FROM malaka_jobs \
                WHERE queue = $1 AND state IN ('available', 'scheduled', 'retryable') \
                  AND run_at <= now() \
                ORDER BY priority, run_at, id \
                LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE malaka_jobs j SET state = 'running', attempt = j.attempt + 1, \
                    attempted_at = now(), lease_expires_at = now() + $3, locked_by = $4 \
             FROM next WHERE j.id = next.id \
             RETURNING {}",
            COLS.split(", ")
                .map(|c| format!("j.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
        .bind(queue)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(lease_delta(lease))
        .bind(worker)
        .fetch_all(&self.worker_pool)
        .await?;
        let mut jobs = rows.iter().map(record).collect::<Result<Vec<_>, _>>()?;
        jobs.sort_by_key(|j| (j.priority, j.run_at, j.id));
        Ok(jobs)
    }

    async fn finish(&self, batch: &[Finish]) -> Result<u64, JobsError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let now = Utc::now();
        let mut changed = 0;
        let (ids, attempts): (Vec<i64>, Vec<i32>) = batch
            .iter()
            .filter(|f| f.outcome == Outcome::Completed)
            .map(|f| (f.id, f.attempt))
            .unzip();
        let others: Vec<&Finish> = batch
            .iter()
            .filter(|f| f.outcome != Outcome::Completed)
            .collect();
        let completed = if self.keep_completed {
            "UPDATE malaka_jobs j SET state = 'completed', finished_at = now(), \
                    lease_expires_at = NULL \
             FROM unnest($1::bigint[], $2::int[]) AS c(id, attempt) \
             WHERE j.id = c.id AND j.attempt = c.attempt AND j.state = 'running'"
        } else {
            "DELETE FROM malaka_jobs j USING unnest($1::bigint[], $2::int[]) AS c(id, attempt) \
             WHERE j.id = c.id AND j.attempt = c.attempt AND j.state = 'running'"
        };
        if others.is_empty() {
            // Completions only (the common batch): one autocommit statement.
            return Ok(sqlx::query(completed)
                .bind(&ids)
                .bind(&attempts)
                .execute(&self.worker_pool)
                .await?
                .rows_affected());
        }
        let mut tx = self.worker_pool.begin().await?;
        if !ids.is_empty() {
            changed += sqlx::query(completed)
                .bind(&ids)
                .bind(&attempts)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        {
            let mut ids = Vec::new();
            let mut attempts = Vec::new();
            let mut states = Vec::new();
            let mut run_ats = Vec::new();
            let mut errors: Vec<Option<serde_json::Value>> = Vec::new();
            for f in others {
                let (state, run_at, error) = match &f.outcome {
                    Outcome::Completed => continue,
                    Outcome::Retry { at, error } => ("retryable", *at, Some(error.clone())),
                    Outcome::Snooze { at } => ("scheduled", *at, None),
                    Outcome::Discard { error } => ("discarded", now, Some(error.clone())),
                    Outcome::Cancelled { error } => ("cancelled", now, error.clone()),
                };
                ids.push(f.id);
                attempts.push(f.attempt);
                states.push(state);
                run_ats.push(run_at);
                errors.push(
                    error
                        .map(|e| {
                            serde_json::to_value(AttemptError {
                                attempt: f.attempt,
                                at: now,
                                error: e,
                            })
                        })
                        .transpose()?,
                );
            }
            changed += sqlx::query(
                "UPDATE malaka_jobs j SET state = c.state, run_at = c.run_at, \
                        lease_expires_at = NULL, locked_by = NULL, \
                        finished_at = CASE WHEN c.state IN ('retryable', 'scheduled') THEN NULL \
                                           ELSE now() END, \
                        errors = CASE WHEN c.error IS NULL THEN j.errors \
                                      ELSE j.errors || jsonb_build_array(c.error) END, \
                        max_attempts = j.max_attempts + CASE WHEN c.state = 'scheduled' THEN 1 ELSE 0 END \
                 FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $5::jsonb[]) \
                      AS c(id, attempt, state, run_at, error) \
                 WHERE j.id = c.id AND j.attempt = c.attempt AND j.state = 'running'",
            )
            .bind(&ids)
            .bind(&attempts)
            .bind(&states)
            .bind(&run_ats)
            .bind(&errors)
            .execute(&mut *tx)
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
        let (ids, attempts): (Vec<i64>, Vec<i32>) = jobs.iter().copied().unzip();
        let rows = sqlx::query(
            "UPDATE malaka_jobs j SET lease_expires_at = now() + $3 \
             FROM unnest($1::bigint[], $2::int[]) AS c(id, attempt) \
             WHERE j.id = c.id AND j.attempt = c.attempt AND j.state = 'running' \
             RETURNING j.id, j.cancel_requested",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(lease_delta(lease))
        .fetch_all(&self.worker_pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LeaseStatus {
                    id: r.try_get("id")?,
                    cancel_requested: r.try_get("cancel_requested")?,
                })
            })
            .collect()
    }

    async fn release(&self, jobs: &[(JobId, i32, bool)]) -> Result<u64, JobsError> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = jobs.iter().map(|j| j.0).collect();
        let attempts: Vec<i32> = jobs.iter().map(|j| j.1).collect();
        let give_back: Vec<i32> = jobs.iter().map(|j| if j.2 { 0 } else { 1 }).collect();
        let queues: Vec<String> = sqlx::query_scalar(
            "UPDATE malaka_jobs j SET state = 'available', run_at = now(), lease_expires_at = NULL, \
                    locked_by = NULL, attempt = j.attempt - c.give_back \
             FROM unnest($1::bigint[], $2::int[], $3::int[]) AS c(id, attempt, give_back) \
             WHERE j.id = c.id AND j.attempt = c.attempt AND j.state = 'running' \
             RETURNING j.queue",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(&give_back)
        .fetch_all(&self.worker_pool)
        .await?;
        notify_queues(&self.worker_pool, &queues).await?;
        Ok(queues.len() as u64)
    }

    async fn next_run_at(&self, queue: &str) -> Result<Option<DateTime<Utc>>, JobsError> {
        Ok(sqlx::query_scalar(
            "SELECT min(run_at) FROM malaka_jobs \
             WHERE queue = $1 AND state IN ('available', 'scheduled', 'retryable')",
        )
        .bind(queue)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn rescue_expired(&self) -> Result<u64, JobsError> {
        let queues: Vec<String> = sqlx::query_scalar(
            "UPDATE malaka_jobs SET \
                state = CASE WHEN cancel_requested THEN 'cancelled' \
                             WHEN attempt >= max_attempts THEN 'discarded' ELSE 'retryable' END, \
                finished_at = CASE WHEN cancel_requested OR attempt >= max_attempts THEN now() END, \
                run_at = now(), lease_expires_at = NULL, \
                errors = errors || jsonb_build_array(jsonb_build_object('attempt', attempt, \
                    'at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                    'error', 'lease expired: worker ' || coalesce(locked_by, '?') || ' stopped renewing it')), \
                locked_by = NULL \
             WHERE state = 'running' AND lease_expires_at < now() RETURNING queue",
        )
        .fetch_all(&self.pool)
        .await?;
        notify_queues(&self.pool, &queues).await?;
        Ok(queues.len() as u64)
    }

    async fn prune(
        &self,
        completed_before: DateTime<Utc>,
        failed_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, JobsError> {
        Ok(sqlx::query(
            "DELETE FROM malaka_jobs WHERE id IN (SELECT id FROM malaka_jobs \
               WHERE (state = 'completed' AND finished_at < $1) \
                  OR (state IN ('discarded', 'cancelled') AND finished_at < $2) \
               ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)",
        )
        .bind(completed_before)
        .bind(failed_before)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn promote_due(&self) -> Result<u64, JobsError> {
        Ok(sqlx::query(
            "UPDATE malaka_jobs SET state = 'available' WHERE id IN ( \
               SELECT id FROM malaka_jobs WHERE state IN ('scheduled', 'retryable') \
                 AND run_at <= now() LIMIT 10000 FOR UPDATE SKIP LOCKED)",
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn cron_tick(
        &self,
        name: &str,
        tick: DateTime<Utc>,
        job: NewJob,
    ) -> Result<bool, JobsError> {
        let mut tx = self.pool.begin().await?;
        let won = sqlx::query(
            "INSERT INTO malaka_cron (name, last_tick) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET last_tick = excluded.last_tick \
             WHERE malaka_cron.last_tick < excluded.last_tick",
        )
        .bind(name)
        .bind(tick)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if won {
            enqueue_in(&mut tx, &job).await?;
        }
        tx.commit().await?;
        Ok(won)
    }

    async fn subscribe(&self) -> Result<mpsc::Receiver<Wakeup>, JobsError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen_all([JOBS_CHANNEL, CANCEL_CHANNEL]).await?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let w = match listener.try_recv().await {
                    Ok(Some(n)) if n.channel() == CANCEL_CHANNEL => match n.payload().parse() {
                        Ok(id) => Wakeup::Cancel(id),
                        Err(_) => continue,
                    },
                    Ok(Some(n)) => Wakeup::Available(n.payload().to_owned()),
                    // The connection dropped and was re-established: notifications may be lost.
                    Ok(None) => Wakeup::Resync,
                    Err(e) => {
                        tracing::warn!(error = %e, "job listener failed; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Wakeup::Resync
                    }
                };
                if tx.send(w).await.is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }
}
