//! `malaka bench jobs`: enqueue rate, end-to-end drain rate and idle pickup latency of the job
//! queue, on a fresh SQLite file or a fresh PostgreSQL database (the shape of the peers' scripts in
//! `shared/peers/`).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use malaka_jobs::{
    JobOptions, NewJob, Queue, QueueConfig, Registry, Storage, Worker, WorkerConfig,
};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{Notify, mpsc};

use crate::bench::Figures;

/// Which database the suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file.
    Sqlite,
    /// A fresh database on a PostgreSQL server.
    Postgres,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct JobsBench {
    /// Backend.
    pub backend: Backend,
    /// For PostgreSQL: a URL on the server to use (a fresh database is created next to it).
    /// For SQLite: the file to create (must not exist).
    pub database_url: Option<String>,
    /// Jobs to enqueue and drain.
    pub jobs: usize,
    /// Jobs run at once.
    pub workers: usize,
    /// Latency samples (after 50 warm-ups).
    pub samples: usize,
    /// Jobs claimed ahead of free workers (default: the queue's default, 4 x workers).
    pub prefetch: Option<usize>,
    /// SQLite `synchronous=FULL` instead of the job store's `NORMAL`.
    pub sqlite_synchronous_full: bool,
    /// Keep completed jobs (a non-zero `completed_retention`) instead of deleting them.
    pub keep_completed: bool,
}

/// Why the suite failed.
#[derive(Debug, thiserror::Error)]
pub enum JobsBenchError {
    /// Database trouble.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Queue trouble.
    #[error(transparent)]
    Jobs(#[from] malaka_jobs::JobsError),
    /// Setup trouble.
    #[error("{0}")]
    Setup(String),
}

struct Fresh {
    storage: Arc<dyn Storage>,
    cleanup: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

async fn fresh(b: &JobsBench) -> Result<Fresh, JobsBenchError> {
    match b.backend {
        Backend::Sqlite => {
            let (path, dir) = match &b.database_url {
                Some(url) => {
                    let path = url
                        .trim_start_matches("sqlite://")
                        .trim_start_matches("sqlite:");
                    if std::path::Path::new(path).exists() {
                        return Err(JobsBenchError::Setup(format!(
                            "{path} exists; the benchmark needs a fresh file"
                        )));
                    }
                    (path.to_owned(), None)
                }
                None => {
                    let dir = tempfile::tempdir()
                        .map_err(|e| JobsBenchError::Setup(format!("temp dir: {e}")))?;
                    (dir.path().join("bench.db").display().to_string(), Some(dir))
                }
            };
            let opts = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(if b.sqlite_synchronous_full {
                    SqliteSynchronous::Full
                } else {
                    SqliteSynchronous::Normal
                })
                .busy_timeout(Duration::from_secs(5));
            // The job store's own pool, as the server runs it: no commit hooks (its writes wake
            // workers themselves, after commit).
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .test_before_acquire(false)
                .connect_with(opts)
                .await?;
            malaka_jobs::sqlite::migrate(&pool).await?;
            Ok(Fresh {
                storage: Arc::new(
                    malaka_jobs::SqliteStorage::new(pool).keep_completed(b.keep_completed),
                ),
                cleanup: None,
                _dir: dir,
            })
        }
        Backend::Postgres => {
            let admin = b
                .database_url
                .clone()
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned());
            let admin_opts = PgConnectOptions::from_str(&admin)?;
            let name = format!("malaka_bench_{}", uuid::Uuid::now_v7().simple());
            let mut conn = admin_opts.connect().await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await?;
            let pool = PgPoolOptions::new()
                .max_connections(u32::try_from(b.workers.clamp(4, 32)).unwrap_or(16))
                .connect_with(admin_opts.clone().database(&name))
                .await?;
            malaka_jobs::postgres::migrate(&pool).await?;
            Ok(Fresh {
                storage: Arc::new(
                    malaka_jobs::PgStorage::new(pool).keep_completed(b.keep_completed),
                ),
                cleanup: Some((admin, name)),
                _dir: None,
            })
        }
    }
}

async fn drop_database(admin: &str, name: &str) {
    if let Ok(opts) = PgConnectOptions::from_str(admin)
        && let Ok(mut conn) = opts.connect().await
    {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    }
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs the suite: `enqueue_per_sec`, `jobs_per_sec`, `latency_p50_ms`, `latency_p99_ms`,
/// `latency_avg_ms`.
///
/// # Errors
/// The database could not be set up or the queue failed.
pub async fn jobs_suite(b: &JobsBench) -> Result<Figures, JobsBenchError> {
    let fresh = fresh(b).await?;
    let result = run(b, Arc::clone(&fresh.storage)).await;
    if let Some((admin, name)) = &fresh.cleanup {
        drop(fresh.storage);
        drop_database(admin, name).await;
    }
    result
}

async fn run(b: &JobsBench, storage: Arc<dyn Storage>) -> Result<Figures, JobsBenchError> {
    let mut f = Figures::default();
    let queue = Queue::new(Arc::clone(&storage));
    let q = "bench";

    // 1. Enqueue N no-op jobs with one call.
    let jobs: Vec<NewJob> = (0..b.jobs)
        .map(|i| NewJob::new("noop", serde_json::json!({ "id": i })).queue(q))
        .collect();
    let t0 = Instant::now();
    let ids = queue.enqueue_many(jobs).await?;
    let enqueue = t0.elapsed();
    if ids.len() != b.jobs {
        return Err(JobsBenchError::Setup(format!(
            "enqueued {} of {} jobs",
            ids.len(),
            b.jobs
        )));
    }
    f.push("enqueue_per_sec", b.jobs as f64 / enqueue.as_secs_f64());

    // 2. Drain them: from worker start until every completion is committed.
    let done = Arc::new(AtomicUsize::new(0));
    let all_ran = Arc::new(Notify::new());
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<Instant>();
    let target = b.jobs;
    let registry = {
        let done = Arc::clone(&done);
        let all_ran = Arc::clone(&all_ran);
        Registry::new().register_fn("noop", JobOptions::default().queue(q), move |_, _| {
            let n = done.fetch_add(1, Ordering::AcqRel) + 1;
            if n == target {
                all_ran.notify_one();
            }
            if started_tx.send(Instant::now()).is_err() {
                tracing::debug!("latency sampling over; start time not needed");
            }
            async { Ok(()) }
        })
    };
    let mut qc = QueueConfig::new(q, b.workers);
    if let Some(p) = b.prefetch {
        qc = qc.prefetch(p);
    }
    let config = WorkerConfig::default().queues(vec![qc]);
    let t0 = Instant::now();
    let worker = Worker::start(Arc::clone(&storage), registry, config).await?;
    all_ran.notified().await;
    // Every handler has run; wait until the last completions are committed.
    let mut unfinished = malaka_jobs::ListFilter::default();
    unfinished.queue = Some(q.to_owned());
    unfinished.states = vec![malaka_jobs::JobState::Running];
    unfinished.limit = Some(1);
    while !queue.list(&unfinished).await?.is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let drain = t0.elapsed();
    f.push("jobs_per_sec", b.jobs as f64 / drain.as_secs_f64());
    while started_rx.try_recv().is_ok() {}

    // 3. Pickup latency: one job at a time into the idle queue.
    let mut lat = Vec::with_capacity(b.samples);
    let mut enq = Vec::with_capacity(b.samples);
    for i in 0..(50 + b.samples) {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let t = Instant::now();
        queue
            .enqueue(NewJob::new("noop", serde_json::json!({ "sample": i })).queue(q))
            .await?;
        let enqueued = t.elapsed();
        let started = tokio::time::timeout(Duration::from_secs(10), started_rx.recv())
            .await
            .map_err(|_| JobsBenchError::Setup("a latency sample never started".into()))?
            .ok_or_else(|| JobsBenchError::Setup("worker stopped".into()))?;
        if i >= 50 {
            lat.push(started.saturating_duration_since(t));
            enq.push(enqueued);
        }
    }
    worker.shutdown().await;
    lat.sort();
    f.push("latency_p50_ms", percentile(&lat, 0.5));
    f.push("latency_p99_ms", percentile(&lat, 0.99));
    let avg = lat.iter().map(Duration::as_secs_f64).sum::<f64>() / lat.len().max(1) as f64;
    f.push("latency_avg_ms", avg * 1000.0);
    enq.sort();
    f.push("latency_enqueue_call_p50_ms", percentile(&enq, 0.5));
    f.push("jobs", b.jobs as f64);
    f.push("workers", b.workers as f64);
    Ok(f)
}
