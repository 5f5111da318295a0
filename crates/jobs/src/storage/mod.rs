//! The `Storage` abstraction over the jobs table, with SQLite and PostgreSQL implementations that
//! pass one conformance suite (`tests/conformance.rs`).

pub mod postgres;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::error::JobsError;
use crate::types::{
    Enqueued, Finish, JobId, JobRecord, JobState, LeaseStatus, ListFilter, NewJob, QueueStats,
    Wakeup,
};
use crate::worker::Taker;

/// Every column of `malaka_jobs`, in `JobRecord` order.
pub(crate) const COLS: &str = "id, queue, kind, payload, priority, state, attempt, max_attempts, \
    run_at, lease_expires_at, locked_by, unique_key, tags, errors, cancel_requested, created_at, \
    attempted_at, finished_at";

/// The states a unique key is held in.
pub(crate) const UNFINISHED: &str = "('available', 'scheduled', 'running', 'retryable')";

/// A new job's state: scheduled when it may not run yet.
pub(crate) fn initial_state(job: &NewJob, now: DateTime<Utc>) -> JobState {
    match job.run_at {
        Some(t) if t > now => JobState::Scheduled,
        _ => JobState::Available,
    }
}

/// Folds `(queue, state, count, age of the oldest runnable job)` rows, ordered by queue, into one
/// `QueueStats` per queue.
pub(crate) fn fold_stats(
    rows: impl IntoIterator<Item = (String, JobState, i64, Option<Duration>)>,
) -> Vec<QueueStats> {
    let mut out: Vec<QueueStats> = Vec::new();
    for (queue, state, n, age) in rows {
        if out.last().is_none_or(|s| s.queue != queue) {
            out.push(QueueStats {
                queue,
                ..QueueStats::default()
            });
        }
        if let Some(s) = out.last_mut() {
            s.counts.insert(state, n);
            if let Some(age) = age {
                s.oldest_available_age = Some(s.oldest_available_age.map_or(age, |a| a.max(age)));
            }
        }
    }
    out
}

/// Everything the queue, workers and maintenance need from a database.
///
/// Every method that changes a running job is fenced by its attempt number, so a late finisher of
/// an attempt that was rescued cannot overwrite the new attempt.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Inserts one job; with a unique key already held by an unfinished job, returns that job.
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, JobsError>;

    /// Inserts many jobs in one statement; returns the new ids in input order (jobs skipped for a
    /// held unique key are left out).
    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<JobId>, JobsError>;

    /// One job.
    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, JobsError>;

    /// Jobs matching `filter`, newest first.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>, JobsError>;

    /// Counts per queue and state, and each queue's oldest available job's age.
    async fn stats(&self) -> Result<Vec<QueueStats>, JobsError>;

    /// Cancels a job that has not finished: at once if it is not running, else by asking the
    /// worker (the job ends `cancelled` when its run returns). Returns the job afterwards.
    async fn cancel(&self, id: JobId) -> Result<JobRecord, JobsError>;

    /// Makes a discarded, cancelled or retryable job available now (a retryable one keeps its
    /// attempt count; a final one gets a fresh set of attempts).
    async fn retry(&self, id: JobId) -> Result<JobRecord, JobsError>;

    /// Claims up to `limit` runnable jobs of `queue` for `worker`, most urgent first, each under
    /// a lease of `lease`; each claim starts a new attempt.
    async fn claim(
        &self,
        queue: &str,
        limit: usize,
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<JobRecord>, JobsError>;

    /// Records attempts' ends; returns how many were still current (not fenced out).
    async fn finish(&self, batch: &[Finish]) -> Result<u64, JobsError>;

    /// Extends the leases of `jobs` (id, attempt); returns those still held by that attempt,
    /// with any cancel request.
    async fn heartbeat(
        &self,
        jobs: &[(JobId, i32)],
        lease: Duration,
    ) -> Result<Vec<LeaseStatus>, JobsError>;

    /// Gives leases back at shutdown so another worker takes the jobs at once. A job that never
    /// started gets its attempt back.
    async fn release(&self, jobs: &[(JobId, i32, bool)]) -> Result<u64, JobsError>;

    /// When the next job of `queue` becomes runnable, if one is waiting for its time.
    async fn next_run_at(&self, queue: &str) -> Result<Option<DateTime<Utc>>, JobsError>;

    /// Returns running jobs whose lease expired to `retryable` (or `discarded` when out of
    /// attempts), recording the lost lease as the attempt's error. Returns how many.
    async fn rescue_expired(&self) -> Result<u64, JobsError>;

    /// Deletes final jobs that finished before the cut-offs, at most `limit`. Returns how many.
    async fn prune(
        &self,
        completed_before: DateTime<Utc>,
        failed_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, JobsError>;

    /// Marks scheduled and retryable jobs whose time has come as available (for accurate
    /// statistics; claiming does not depend on it). Returns how many.
    async fn promote_due(&self) -> Result<u64, JobsError>;

    /// Enqueues `job` for cron entry `name`'s `tick` if no node has yet; true when this call did.
    async fn cron_tick(
        &self,
        name: &str,
        tick: DateTime<Utc>,
        job: NewJob,
    ) -> Result<bool, JobsError>;

    /// Wake-ups for workers: new jobs, cancel requests. The receiver ends when storage closes.
    async fn subscribe(&self) -> Result<mpsc::Receiver<Wakeup>, JobsError>;

    /// Offers a worker of this process to take jobs as they are enqueued (see [`Taker`]); held
    /// weakly, so it lapses when the worker stops. Storages that cannot insert a job already
    /// claimed ignore it (the default), and their workers claim as usual.
    fn attach(&self, taker: Arc<Taker>) {
        let _ignored = taker;
    }
}

/// The retry delay's upper bound for a row built from stored parts.
pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

pub(crate) fn lease_delta(lease: Duration) -> chrono::Duration {
    chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::days(1))
}
