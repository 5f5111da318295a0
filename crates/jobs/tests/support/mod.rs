//! Harness for the storage conformance suite: a fresh SQLite file or PostgreSQL database per test
//! behind one `Backend` handle, the macro that runs each case on both, and small waiting helpers.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use malaka_jobs::{JobId, JobRecord, JobState, NewJob, PgStorage, Queue, SqliteStorage, Storage};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tokio::time::Instant;

/// Generates, for each `case_xxx(&Backend)`, one `#[tokio::test]` per backend.
///
/// ```ignore
/// conformance! {
///     case_priority_order => sqlite_priority_order, postgres_priority_order;
/// }
/// ```
macro_rules! conformance {
    ($($case:ident => $sqlite:ident, $postgres:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $sqlite() {
            let b = support::Backend::sqlite().await;
            $case(&b).await;
            b.close().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $postgres() {
            let Some(b) = support::Backend::postgres().await else {
                return;
            };
            $case(&b).await;
            b.close().await;
        }
    )*};
}

/// Which database a case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
enum Db {
    Sqlite(SqlitePool, std::path::PathBuf),
    Postgres(PgPool, String),
}

/// One fresh database with the jobs schema, and a storage and queue over it.
pub struct Backend {
    pub kind: Kind,
    pub storage: Arc<dyn Storage>,
    pub queue: Queue,
    db: Db,
    extra: std::sync::Mutex<Vec<Db>>,
    pg_database: Option<PgDatabase>,
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("kind", &self.kind).finish()
    }
}

async fn sqlite_pool(path: &std::path::Path) -> SqlitePool {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    SqlitePoolOptions::new()
        .max_connections(8)
        .after_connect(|conn, _| {
            Box::pin(async move { malaka_jobs::sqlite::install_hooks(conn).await })
        })
        .connect_with(opts)
        .await
        .expect("open SQLite test database")
}

async fn pg_pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .expect("connect to the PostgreSQL test database")
}

/// The PostgreSQL server tests use: `MALAKA_TEST_POSTGRES_URL`, else the local one.
pub fn postgres_admin_url() -> String {
    std::env::var("MALAKA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A test database, dropped (best effort) when this is dropped, even if the test panicked.
#[derive(Debug)]
struct PgDatabase {
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        // Dropping may happen inside the test's runtime: do the async work on a thread of its own.
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(malaka_db::fresh::drop_database(
                &postgres_admin_url(),
                &name,
            ));
        });
        let _ = dropper.join();
    }
}

impl Backend {
    /// A fresh SQLite file in a temporary folder (WAL, busy timeout 5 s, wake-up hooks).
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("jobs.db");
        let pool = sqlite_pool(&path).await;
        malaka_jobs::sqlite::migrate(&pool)
            .await
            .expect("migrate SQLite");
        let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::new(pool.clone()));
        Self {
            kind: Kind::Sqlite,
            queue: Queue::new(Arc::clone(&storage)),
            storage,
            db: Db::Sqlite(pool, path),
            extra: std::sync::Mutex::new(Vec::new()),
            pg_database: None,
            _dir: Some(dir),
        }
    }

    /// A fresh PostgreSQL database, or `None` (after a message) when no server answers outside
    /// CI. Under CI (`CI=true`) a missing server fails the test.
    pub async fn postgres() -> Option<Self> {
        let admin = postgres_admin_url();
        let fresh = match malaka_db::FreshPostgres::create(&admin, "malaka_jobs_test").await {
            Ok(f) => f,
            Err(e) if !in_ci() => {
                eprintln!("skipping PostgreSQL test: {admin} unreachable ({e})");
                return None;
            }
            Err(e) => panic!("PostgreSQL at {admin} is required under CI: {e}"),
        };
        let guard = PgDatabase {
            name: fresh.name.clone(),
        };
        let url = fresh.url;
        let pool = pg_pool(&url).await;
        malaka_jobs::postgres::migrate(&pool)
            .await
            .expect("migrate PostgreSQL");
        let storage: Arc<dyn Storage> = Arc::new(PgStorage::new(pool.clone()));
        Some(Self {
            kind: Kind::Postgres,
            queue: Queue::new(Arc::clone(&storage)),
            storage,
            db: Db::Postgres(pool, url),
            extra: std::sync::Mutex::new(Vec::new()),
            pg_database: Some(guard),
            _dir: None,
        })
    }

    /// Another storage over the same database through a pool of its own (a second "node").
    pub async fn another_storage(&self) -> Arc<dyn Storage> {
        self.storage_keeping_completed(true).await
    }

    /// Another storage over the same database that keeps completed jobs or deletes them.
    pub async fn storage_keeping_completed(&self, keep: bool) -> Arc<dyn Storage> {
        match &self.db {
            Db::Sqlite(_, path) => {
                let pool = sqlite_pool(path).await;
                self.extra
                    .lock()
                    .unwrap()
                    .push(Db::Sqlite(pool.clone(), path.clone()));
                Arc::new(SqliteStorage::new(pool).keep_completed(keep))
            }
            Db::Postgres(_, url) => {
                let pool = pg_pool(url).await;
                self.extra
                    .lock()
                    .unwrap()
                    .push(Db::Postgres(pool.clone(), url.clone()));
                Arc::new(PgStorage::new(pool).keep_completed(keep))
            }
        }
    }

    /// Enqueues `job` with the backend's `enqueue_in` inside a transaction of the test's own,
    /// then commits it or rolls it back.
    pub async fn enqueue_in_tx(&self, job: &NewJob, commit: bool) -> malaka_jobs::Enqueued {
        match &self.db {
            Db::Sqlite(pool, _) => {
                let mut tx = pool.begin().await.expect("begin");
                let out = malaka_jobs::sqlite::enqueue_in(&mut tx, job)
                    .await
                    .expect("enqueue_in");
                if commit {
                    tx.commit().await.expect("commit");
                } else {
                    tx.rollback().await.expect("rollback");
                }
                out
            }
            Db::Postgres(pool, _) => {
                let mut tx = pool.begin().await.expect("begin");
                let out = malaka_jobs::postgres::enqueue_in(&mut tx, job)
                    .await
                    .expect("enqueue_in");
                if commit {
                    tx.commit().await.expect("commit");
                } else {
                    tx.rollback().await.expect("rollback");
                }
                out
            }
        }
    }

    /// Enqueues `job` as another process would: through a connection of its own, outside every
    /// pool and storage of this process (on SQLite: no commit hooks, so nothing in this process
    /// hears of the commit), inside a transaction with a row of another table, then commits.
    pub async fn enqueue_elsewhere(&self, job: &NewJob) -> malaka_jobs::Enqueued {
        use sqlx::{ConnectOptions, Connection};
        match &self.db {
            Db::Sqlite(_, path) => {
                let mut conn = SqliteConnectOptions::new()
                    .filename(path)
                    .busy_timeout(Duration::from_secs(5))
                    .connect()
                    .await
                    .expect("another SQLite connection");
                let mut tx = conn.begin().await.expect("begin");
                sqlx::query("CREATE TABLE IF NOT EXISTS elsewhere (id INTEGER PRIMARY KEY)")
                    .execute(&mut *tx)
                    .await
                    .expect("business table");
                sqlx::query("INSERT INTO elsewhere DEFAULT VALUES")
                    .execute(&mut *tx)
                    .await
                    .expect("business row");
                let out = malaka_jobs::sqlite::enqueue_in(&mut tx, job)
                    .await
                    .expect("enqueue_in");
                tx.commit().await.expect("commit");
                conn.close().await.expect("close");
                out
            }
            Db::Postgres(_, url) => {
                let mut conn = sqlx::PgConnection::connect(url)
                    .await
                    .expect("another PostgreSQL connection");
                let mut tx = conn.begin().await.expect("begin");
                let out = malaka_jobs::postgres::enqueue_in(&mut tx, job)
                    .await
                    .expect("enqueue_in");
                tx.commit().await.expect("commit");
                conn.close().await.expect("close");
                out
            }
        }
    }

    /// The job, which must exist.
    pub async fn job(&self, id: JobId) -> JobRecord {
        self.storage
            .get(id)
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("job {id} exists"))
    }

    /// Closes the pools and drops the PostgreSQL database.
    pub async fn close(mut self) {
        let mut pools = std::mem::take(&mut *self.extra.lock().unwrap());
        pools.push(self.db.clone());
        for db in pools {
            match db {
                // A worker's listener may still hold a connection until its next notification:
                // do not wait for it; the database is dropped WITH (FORCE).
                Db::Postgres(..) => {}
                Db::Sqlite(pool, _) => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), pool.close()).await;
                }
            }
        }
        drop(self.pg_database.take());
    }
}

/// Polls `check` every 10 ms until it holds; panics naming `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until job `id` is in `state`, and returns it.
pub async fn wait_state(b: &Backend, id: JobId, state: JobState, timeout: Duration) -> JobRecord {
    let deadline = Instant::now() + timeout;
    loop {
        let job = b.job(id).await;
        if job.state == state {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for job {id} to be {state}; it is {:?}",
            job
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every job matching `filter`, page by page (`before_id` = the previous page's last id).
pub async fn list_all(b: &Backend, filter: &malaka_jobs::ListFilter) -> Vec<JobId> {
    let mut out = Vec::new();
    let mut f = filter.clone();
    loop {
        let page = b.queue.list(&f).await.expect("list");
        let Some(last) = page.last() else { break };
        f.before_id = Some(last.id);
        let full = i64::try_from(page.len()).unwrap() == f.page_size();
        out.extend(page.iter().map(|j| j.id));
        if !full {
            break;
        }
    }
    out
}
