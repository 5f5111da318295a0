//! `malaka bench jobs`: enqueue rate, end-to-end drain rate and idle pickup latency of the job
//! queue, on a fresh SQLite file or a fresh PostgreSQL database (the shape of the peers' scripts in
//! `shared/peers/`).
//!
//! Pickup latency is one job at a time into the idle queue (a 2 ms pause before each, 50 warm-ups,
//! then `--samples`), for each way of enqueueing asked for with `--enqueue-from`:
//!
//! - `api` (`latency_*`): `Queue::enqueue` in the worker's process, from before the call to
//!   the handler's start. On SQLite an idle worker of the process takes the job from the insert
//!   itself (inserted already claimed, handed over in memory).
//! - `tx` (`tx_latency_*`): a business transaction on a pool of its own (on SQLite with the
//!   server's commit hooks, as its ledger pool has): `BEGIN`, one business row, the job with
//!   `enqueue_in`, `COMMIT`, as notifications and reports enqueue; from just before `COMMIT` to
//!   the handler's start (`tx_commit_call_p50_ms`: how long the commit call took).
//! - `process` (`process_latency_*`): another OS process (this binary, a hidden child mode of
//!   `bench jobs`) enqueues through a storage of its own and prints the wall-clock time right
//!   after its commit; from that time to the handler's start, read on the wall clock. On SQLite
//!   the worker learns of it through its watcher (`PRAGMA data_version` every
//!   `malaka_jobs::sqlite::DEFAULT_WATCH_INTERVAL`), on PostgreSQL through `LISTEN/NOTIFY`.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use malaka_jobs::{
    JobOptions, NewJob, Queue, QueueConfig, Registry, Storage, Worker, WorkerConfig,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, mpsc};

use crate::Figures;

/// Which database the suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file.
    Sqlite,
    /// A fresh database on a PostgreSQL server.
    Postgres,
}

/// How the pickup-latency jobs are enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueFrom {
    /// `Queue::enqueue` in the worker's process.
    Api,
    /// `enqueue_in` inside a business transaction of the worker's process, then `COMMIT`.
    Tx,
    /// Another OS process.
    Process,
}

impl EnqueueFrom {
    /// The prefix of its figures.
    fn prefix(self) -> &'static str {
        match self {
            Self::Api => "",
            Self::Tx => "tx_",
            Self::Process => "process_",
        }
    }
}

impl FromStr for EnqueueFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "api" => Ok(Self::Api),
            "tx" => Ok(Self::Tx),
            "process" => Ok(Self::Process),
            other => Err(format!("api, tx or process, not {other}")),
        }
    }
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
    /// Pickup latency for each of these ways of enqueueing, in this order.
    pub enqueue_from: Vec<EnqueueFrom>,
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
    /// The database's URL, for the enqueueing child process.
    url: String,
    /// A pool for business transactions (on SQLite with the server's commit hooks).
    business: Business,
    cleanup: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

/// Where business transactions run.
#[derive(Debug, Clone)]
enum Business {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
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
                .connect_with(opts.clone())
                .await?;
            malaka_jobs::sqlite::migrate(&pool).await?;
            // The business pool, as the server's ledger pool: every insert into the jobs table
            // wakes this process's workers when its transaction commits.
            let business = SqlitePoolOptions::new()
                .max_connections(2)
                .test_before_acquire(false)
                .after_connect(|conn, _meta| {
                    Box::pin(async move { malaka_jobs::sqlite::install_hooks(conn).await })
                })
                .connect_with(opts)
                .await?;
            sqlx::query("CREATE TABLE bench_orders (id INTEGER PRIMARY KEY, at INTEGER NOT NULL)")
                .execute(&business)
                .await?;
            Ok(Fresh {
                storage: Arc::new(
                    malaka_jobs::SqliteStorage::new(pool).keep_completed(b.keep_completed),
                ),
                url: format!("sqlite://{path}"),
                business: Business::Sqlite(business),
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
            let name = malaka_db::FreshPostgres::create(&admin, "malaka_bench")
                .await
                .map_err(|e| JobsBenchError::Setup(format!("a fresh database: {e}")))?
                .name;
            let pool = PgPoolOptions::new()
                .max_connections(u32::try_from(b.workers.clamp(4, 32)).unwrap_or(16))
                .connect_with(admin_opts.clone().database(&name))
                .await?;
            malaka_jobs::postgres::migrate(&pool).await?;
            let business = PgPoolOptions::new()
                .max_connections(2)
                .connect_with(admin_opts.clone().database(&name))
                .await?;
            sqlx::query("CREATE TABLE bench_orders (id BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL)")
                .execute(&business)
                .await?;
            let url = malaka_db::fresh::with_database(&admin, &name);
            Ok(Fresh {
                storage: Arc::new(
                    malaka_jobs::PgStorage::new(pool).keep_completed(b.keep_completed),
                ),
                url,
                business: Business::Postgres(business),
                cleanup: Some((admin, name)),
                _dir: None,
            })
        }
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
    let result = run(b, &fresh).await;
    if let Some((admin, name)) = &fresh.cleanup {
        if let Business::Postgres(p) = &fresh.business {
            p.close().await;
        }
        drop(fresh.storage);
        malaka_db::fresh::drop_database(admin, name).await;
    }
    result
}

/// The wall clock, in microseconds since the Unix epoch (for times compared across processes).
fn wall_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// When a handler started: on this process's monotonic clock and on the wall clock.
type Started = (Instant, i64);

async fn run(b: &JobsBench, fresh: &Fresh) -> Result<Figures, JobsBenchError> {
    let storage = Arc::clone(&fresh.storage);
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
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<Started>();
    let target = b.jobs;
    let registry = {
        let done = Arc::clone(&done);
        let all_ran = Arc::clone(&all_ran);
        Registry::new().register_fn("noop", JobOptions::default().queue(q), move |_, _| {
            let n = done.fetch_add(1, Ordering::AcqRel) + 1;
            if n == target {
                all_ran.notify_one();
            }
            if started_tx.send((Instant::now(), wall_micros())).is_err() {
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

    // 3. Pickup latency: one job at a time into the idle queue, for each way of enqueueing.
    let modes = if b.enqueue_from.is_empty() {
        vec![EnqueueFrom::Api]
    } else {
        b.enqueue_from.clone()
    };
    for mode in modes {
        let result = pickup(b, fresh, &queue, &mut started_rx, mode, &mut f).await;
        if let Err(e) = result {
            worker.shutdown().await;
            return Err(e);
        }
    }
    worker.shutdown().await;
    f.push("jobs", b.jobs as f64);
    f.push("workers", b.workers as f64);
    Ok(f)
}

/// Times `50 + b.samples` pickups of jobs enqueued as `mode` says; pushes the mode's figures.
async fn pickup(
    b: &JobsBench,
    fresh: &Fresh,
    queue: &Queue,
    started_rx: &mut mpsc::UnboundedReceiver<Started>,
    mode: EnqueueFrom,
    f: &mut Figures,
) -> Result<(), JobsBenchError> {
    let q = "bench";
    let mut child = match mode {
        EnqueueFrom::Process => Some(Child::spawn(b.backend, &fresh.url, q).await?),
        _ => None,
    };
    let mut lat = Vec::with_capacity(b.samples);
    let mut call = Vec::with_capacity(b.samples);
    for i in 0..(50 + b.samples) {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let job = NewJob::new("noop", serde_json::json!({ "sample": i })).queue(q);
        // (from, how long the enqueue or commit call took); `from` is on the monotonic clock,
        // or on the wall clock for another process.
        let (from, took) = match (&mode, child.as_mut()) {
            (EnqueueFrom::Api, _) => {
                let t = Instant::now();
                queue.enqueue(job).await?;
                (Ok(t), t.elapsed())
            }
            (EnqueueFrom::Tx, _) => {
                let t = business_tx(&fresh.business, &job).await?;
                (Ok(t), t.elapsed())
            }
            (EnqueueFrom::Process, Some(c)) => (Err(c.enqueue(i).await?), Duration::ZERO),
            (EnqueueFrom::Process, None) => {
                return Err(JobsBenchError::Setup("no child process".into()));
            }
        };
        let (started, started_wall) =
            tokio::time::timeout(Duration::from_secs(10), started_rx.recv())
                .await
                .map_err(|_| JobsBenchError::Setup("a latency sample never started".into()))?
                .ok_or_else(|| JobsBenchError::Setup("worker stopped".into()))?;
        if i >= 50 {
            lat.push(match from {
                Ok(t) => started.saturating_duration_since(t),
                Err(wall) => Duration::from_micros(u64::try_from(started_wall - wall).unwrap_or(0)),
            });
            call.push(took);
        }
    }
    if let Some(c) = child {
        c.finish().await;
    }
    let p = mode.prefix();
    lat.sort();
    f.push(format!("{p}latency_p50_ms"), percentile(&lat, 0.5));
    f.push(format!("{p}latency_p99_ms"), percentile(&lat, 0.99));
    let avg = lat.iter().map(Duration::as_secs_f64).sum::<f64>() / lat.len().max(1) as f64;
    f.push(format!("{p}latency_avg_ms"), avg * 1000.0);
    call.sort();
    match mode {
        EnqueueFrom::Api => f.push("latency_enqueue_call_p50_ms", percentile(&call, 0.5)),
        EnqueueFrom::Tx => f.push("tx_commit_call_p50_ms", percentile(&call, 0.5)),
        EnqueueFrom::Process => {}
    }
    Ok(())
}

/// A business transaction that enqueues `job`: `BEGIN`, one business row, `enqueue_in`,
/// `COMMIT`. Returns the instant just before `COMMIT`.
async fn business_tx(business: &Business, job: &NewJob) -> Result<Instant, JobsBenchError> {
    use sqlx::Connection;
    match business {
        Business::Sqlite(pool) => {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin().await?;
            sqlx::query("INSERT INTO bench_orders (at) VALUES (?)")
                .bind(wall_micros())
                .execute(&mut *tx)
                .await?;
            malaka_jobs::sqlite::enqueue_in(&mut tx, job).await?;
            let t = Instant::now();
            tx.commit().await?;
            Ok(t)
        }
        Business::Postgres(pool) => {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin().await?;
            sqlx::query("INSERT INTO bench_orders (at) VALUES ($1)")
                .bind(wall_micros())
                .execute(&mut *tx)
                .await?;
            malaka_jobs::postgres::enqueue_in(&mut tx, job).await?;
            let t = Instant::now();
            tx.commit().await?;
            Ok(t)
        }
    }
}

/// The enqueueing child process: this binary in its hidden `bench jobs --enqueue-child` mode.
struct Child {
    process: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Child {
    async fn spawn(backend: Backend, url: &str, queue: &str) -> Result<Self, JobsBenchError> {
        let setup = |what: &str, e: &dyn std::fmt::Display| {
            JobsBenchError::Setup(format!("enqueueing child: {what}: {e}"))
        };
        let exe = std::env::current_exe().map_err(|e| setup("own executable", &e))?;
        let mut process = tokio::process::Command::new(exe)
            .args([
                "bench",
                "jobs",
                "--enqueue-child",
                queue,
                "--backend",
                match backend {
                    Backend::Sqlite => "sqlite",
                    Backend::Postgres => "postgres",
                },
                "--database-url",
                url,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| setup("spawning", &e))?;
        let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
            return Err(JobsBenchError::Setup("enqueueing child: no pipes".into()));
        };
        let mut child = Self {
            process,
            stdin,
            lines: BufReader::new(stdout).lines(),
        };
        match tokio::time::timeout(Duration::from_secs(30), child.lines.next_line()).await {
            Ok(Ok(Some(l))) if l == "ready" => Ok(child),
            other => Err(setup("not ready", &format!("{other:?}"))),
        }
    }

    /// Asks for one job; the wall-clock time (µs) right after its commit.
    async fn enqueue(&mut self, i: usize) -> Result<i64, JobsBenchError> {
        let setup =
            |e: &dyn std::fmt::Display| JobsBenchError::Setup(format!("enqueueing child: {e}"));
        self.stdin
            .write_all(format!("{i}\n").as_bytes())
            .await
            .map_err(|e| setup(&e))?;
        self.stdin.flush().await.map_err(|e| setup(&e))?;
        let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .map_err(|e| setup(&e))?
            .map_err(|e| setup(&e))?
            .ok_or_else(|| setup(&"it exited"))?;
        line.trim().parse().map_err(|e| setup(&e))
    }

    /// Closes its input (it exits) and waits for it.
    async fn finish(mut self) {
        drop(self.stdin);
        if tokio::time::timeout(Duration::from_secs(5), self.process.wait())
            .await
            .is_err()
        {
            let _killed = self.process.kill().await;
        }
    }
}

/// The hidden child mode of `bench jobs` (`--enqueue-child QUEUE`): opens the database at `url`
/// with a storage of its own, prints `ready`, then for each line read enqueues one `noop` job on
/// `queue` and prints the wall-clock time (µs since the epoch) right after its commit. Ends at
/// the end of its input.
///
/// # Errors
/// The database could not be opened, an enqueue failed, or stdin/stdout broke.
pub async fn enqueue_child(backend: Backend, url: &str, queue: &str) -> Result<(), JobsBenchError> {
    let io = |e: std::io::Error| JobsBenchError::Setup(format!("child I/O: {e}"));
    let storage: Arc<dyn Storage> = match backend {
        Backend::Sqlite => {
            let opts = SqliteConnectOptions::from_str(url)?
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(2)
                .connect_with(opts)
                .await?;
            Arc::new(malaka_jobs::SqliteStorage::new(pool))
        }
        Backend::Postgres => {
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .connect_with(PgConnectOptions::from_str(url)?)
                .await?;
            Arc::new(malaka_jobs::PgStorage::new(pool))
        }
    };
    let jobs = Queue::new(storage);
    let mut out = tokio::io::stdout();
    out.write_all(b"ready\n").await.map_err(io)?;
    out.flush().await.map_err(io)?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.map_err(io)? {
        jobs.enqueue(NewJob::new("noop", serde_json::json!({ "child": line })).queue(queue))
            .await?;
        let at = wall_micros();
        out.write_all(format!("{at}\n").as_bytes())
            .await
            .map_err(io)?;
        out.flush().await.map_err(io)?;
    }
    Ok(())
}
