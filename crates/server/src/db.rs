//! The database: an embedded SQLite file by default, or a shared PostgreSQL; connection, schema
//! migrations (the server's and the job queue's) and the readiness check.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::config::{DatabaseConfig, SqliteSync};

pub(crate) use malaka_db::on_pool;

/// Which database kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One embedded file.
    Sqlite,
    /// A PostgreSQL server, possibly shared by several nodes.
    Postgres,
}

impl Backend {
    /// `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

pub use malaka_db::Database;

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL names no supported database.
    #[error("unsupported database URL `{0}`: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    /// The data folder could not be created.
    #[error("cannot create data folder {path}: {source}")]
    DataDir {
        /// The folder.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A query or connection failed.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    /// A migration failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The job queue's migrations failed.
    #[error("job queue: {0}")]
    Jobs(#[from] malaka_jobs::JobsError),
    /// The inventory's migrations failed.
    #[error("inventory: {0}")]
    Inventory(#[from] malaka_inventory::InventoryError),
}

/// What the server does with a [`Database`]: connect, migrate its own, the job queue's and the
/// inventory's schemas, build the domain services over it, and keep its metadata.
#[allow(async_fn_in_trait)] // Used as a concrete type's methods, never as `dyn` or across threads generically.
pub trait DatabaseExt: Sized {
    /// Waits until this node leads for advisory lock `key` (trying every `every`): on
    /// PostgreSQL the holder of the lock, on SQLite at once. `None` when `stop` fires first.
    async fn leader_lock(
        &self,
        key: i64,
        every: std::time::Duration,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Option<malaka_db::Leader>;

    /// Connects, creating the SQLite file (and its folder) when missing.
    ///
    /// # Errors
    /// An unsupported URL, an unreachable server, or a file that cannot be created.
    async fn connect(url: &str, config: &DatabaseConfig) -> Result<Self, DbError>;

    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Applies the server's, the job queue's, the inventory's, the notifications' and the
    /// reports' migrations that have not run yet. The crates'
    /// migrators share the `_sqlx_migrations` table, so each leaves the others' versions alone.
    ///
    /// # Errors
    /// A migration that fails, or one that was edited after it ran.
    async fn migrate(&self) -> Result<(), DbError>;

    /// The inventory over this database's pool (migrated by [`Self::migrate`]), its SQLite
    /// committer under a supervisor of its own (for commands that run no server).
    fn inventory(&self) -> malaka_inventory::Inventory;

    /// The inventory, its SQLite committer (task `inventory.committer`) under `supervisor`.
    fn inventory_supervised(
        &self,
        supervisor: &malaka_runtime::Supervisor,
    ) -> malaka_inventory::Inventory;

    /// The job queue's storage over this database's pool (migrated by [`Self::migrate`]).
    fn job_storage(&self, jobs: &crate::config::JobsConfig) -> Arc<dyn malaka_jobs::Storage>;

    /// This installation's id, created on first use.
    ///
    /// # Errors
    /// A database error.
    async fn installation_id(&self) -> Result<String, DbError>;

    /// The value of `key` in `malaka_meta`, stored as `fresh` first when there is none (every
    /// node of one database then reads the same value).
    ///
    /// # Errors
    /// A database error.
    async fn meta_or_insert(&self, key: &str, fresh: &str) -> Result<String, DbError>;

    /// The value of `key` in `malaka_meta`, if set.
    ///
    /// # Errors
    /// A database error.
    async fn meta(&self, key: &str) -> Result<Option<String>, DbError>;

    /// Sets `key` in `malaka_meta` to `value`.
    ///
    /// # Errors
    /// A database error.
    async fn set_meta(&self, key: &str, value: &str) -> Result<(), DbError>;

    /// A small pool for work done after a posting commits (the outbox relay, stock alerts,
    /// notification jobs), whose commits do not wait for the disk: SQLite `synchronous=NORMAL`
    /// (WAL: a process crash loses nothing; a power cut may lose the last commits, never
    /// reorder them), PostgreSQL `synchronous_commit = off`. What such a loss undoes is redone
    /// from the outbox, which the posting itself made durable.
    fn event_pool(&self) -> malaka_db::Database;

    /// On SQLite, this process's turn to write to the file ([`malaka_inventory::WriteGate`]):
    /// a write that would otherwise wait in SQLite's busy handler while postings commit.
    async fn write_turn(&self) -> Option<malaka_inventory::WriteTurn>;

    /// A round trip to the database.
    ///
    /// # Errors
    /// The database did not answer.
    async fn ping(&self) -> Result<(), DbError>;

    /// Closes every connection (SQLite checkpoints its WAL on the last close).
    async fn close(&self);
}

impl DatabaseExt for Database {
    async fn leader_lock(
        &self,
        key: i64,
        every: std::time::Duration,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Option<malaka_db::Leader> {
        let pool = match self {
            Database::Postgres(pool) => Some(pool),
            Database::Sqlite(_) => None,
        };
        malaka_db::leader_lock(pool, key, every, stop).await
    }

    async fn connect(url: &str, config: &DatabaseConfig) -> Result<Self, DbError> {
        if url.starts_with("sqlite:") {
            // `sqlite_synchronous` (default `full`) applies to this pool: the ledger's postings
            // and anything enqueued inside their transactions. The job store's own claims and
            // outcomes use a pool of their own (see `job_storage`).
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(match config.sqlite_synchronous {
                    SqliteSync::Full => SqliteSynchronous::Full,
                    SqliteSync::Normal => SqliteSynchronous::Normal,
                })
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            if let Some(dir) = Path::new(opts.get_filename()).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|source| DbError::DataDir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(config.max_connections.max(1))
                .acquire_timeout(Duration::from_secs(10))
                // A local file does not hang up: skip the ping before every query.
                .test_before_acquire(false)
                // Every insert into the jobs table, whoever commits it, wakes this process's job
                // workers at once.
                .after_connect(|conn, _meta| {
                    Box::pin(async move { malaka_jobs::sqlite::install_hooks(conn).await })
                })
                .connect_with(opts)
                .await?;
            Ok(Database::Sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url)?.application_name("malaka");
            let pool = PgPoolOptions::new()
                .max_connections(config.max_connections.max(1))
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            Ok(Database::Postgres(pool))
        } else {
            Err(DbError::UnsupportedUrl(url.to_owned()))
        }
    }

    fn backend(&self) -> Backend {
        match self {
            Database::Sqlite(_) => Backend::Sqlite,
            Database::Postgres(_) => Backend::Postgres,
        }
    }

    async fn migrate(&self) -> Result<(), DbError> {
        match self {
            Database::Sqlite(pool) => {
                let mut m = sqlx::migrate!("./migrations/sqlite");
                m.set_ignore_missing(true);
                m.run(pool).await?;
                malaka_jobs::sqlite::migrate(pool).await?;
                malaka_inventory::Inventory::sqlite(pool.clone())
                    .migrate()
                    .await?;
            }
            Database::Postgres(pool) => {
                let mut m = sqlx::migrate!("./migrations/postgres");
                m.set_ignore_missing(true);
                m.run(pool).await?;
                malaka_jobs::postgres::migrate(pool).await?;
                malaka_inventory::Inventory::postgres(pool.clone())
                    .migrate()
                    .await?;
            }
        }
        malaka_notify::migrate(self).await?;
        malaka_reports::migrate(self).await?;
        Ok(())
    }

    fn inventory(&self) -> malaka_inventory::Inventory {
        self.inventory_supervised(&malaka_runtime::Supervisor::default())
    }

    fn inventory_supervised(
        &self,
        supervisor: &malaka_runtime::Supervisor,
    ) -> malaka_inventory::Inventory {
        match self {
            Database::Sqlite(pool) => {
                malaka_inventory::Inventory::sqlite_supervised(pool.clone(), supervisor)
            }
            Database::Postgres(pool) => malaka_inventory::Inventory::postgres(pool.clone()),
        }
    }

    fn job_storage(&self, jobs: &crate::config::JobsConfig) -> Arc<dyn malaka_jobs::Storage> {
        // A zero retention deletes completed jobs as they complete (the cheaper write).
        let keep = !jobs.completed_retention.is_zero();
        match self {
            Database::Sqlite(pool) => {
                // The job store gets connections of its own on the same file: without commit
                // hooks (its writes wake the workers after they commit) and with
                // `synchronous=NORMAL` (WAL: a committed enqueue survives a process crash; a
                // power cut can undo the last job state changes, which then run again). Jobs
                // enqueued inside a business transaction commit with that transaction's
                // connection and durability.
                let opts = (*pool.connect_options())
                    .clone()
                    .synchronous(SqliteSynchronous::Normal);
                let jobs_pool = SqlitePoolOptions::new()
                    .max_connections(8)
                    // A local file does not hang up: skip the ping before every query.
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_lazy_with(opts);
                // Jobs other processes enqueue are found within `watch_interval`.
                Arc::new(
                    malaka_jobs::SqliteStorage::new(jobs_pool)
                        .keep_completed(keep)
                        .watch_interval(jobs.watch_interval),
                )
            }
            Database::Postgres(pool) => {
                Arc::new(malaka_jobs::PgStorage::new(pool.clone()).keep_completed(keep))
            }
        }
    }

    async fn installation_id(&self) -> Result<String, DbError> {
        self.meta_or_insert("installation_id", &uuid::Uuid::now_v7().to_string())
            .await
    }

    async fn meta_or_insert(&self, key: &str, fresh: &str) -> Result<String, DbError> {
        const INSERT: &str =
            "INSERT INTO malaka_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING";
        const SELECT: &str = "SELECT value FROM malaka_meta WHERE key = $1";
        let value = match self {
            Database::Sqlite(pool) => {
                sqlx::query(INSERT)
                    .bind(key)
                    .bind(fresh)
                    .execute(pool)
                    .await?;
                sqlx::query_scalar(SELECT).bind(key).fetch_one(pool).await?
            }
            Database::Postgres(pool) => {
                sqlx::query(INSERT)
                    .bind(key)
                    .bind(fresh)
                    .execute(pool)
                    .await?;
                sqlx::query_scalar(SELECT).bind(key).fetch_one(pool).await?
            }
        };
        Ok(value)
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, DbError> {
        const SELECT: &str = "SELECT value FROM malaka_meta WHERE key = $1";
        Ok(match self {
            Database::Sqlite(p) => {
                sqlx::query_scalar(SELECT)
                    .bind(key)
                    .fetch_optional(p)
                    .await?
            }
            Database::Postgres(p) => {
                sqlx::query_scalar(SELECT)
                    .bind(key)
                    .fetch_optional(p)
                    .await?
            }
        })
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), DbError> {
        const UPSERT: &str = "INSERT INTO malaka_meta (key, value) VALUES ($1, $2) \
                              ON CONFLICT (key) DO UPDATE SET value = excluded.value";
        match self {
            Database::Sqlite(pool) => {
                sqlx::query(UPSERT)
                    .bind(key)
                    .bind(value)
                    .execute(pool)
                    .await?;
            }
            Database::Postgres(pool) => {
                sqlx::query(UPSERT)
                    .bind(key)
                    .bind(value)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    fn event_pool(&self) -> malaka_db::Database {
        match self {
            Database::Sqlite(pool) => {
                let opts = (*pool.connect_options())
                    .clone()
                    .synchronous(SqliteSynchronous::Normal);
                malaka_db::Database::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(4)
                        .test_before_acquire(false)
                        .acquire_timeout(Duration::from_secs(10))
                        // Jobs enqueued by alert side effects wake this process's workers.
                        .after_connect(|conn, _meta| {
                            Box::pin(async move { malaka_jobs::sqlite::install_hooks(conn).await })
                        })
                        .connect_lazy_with(opts),
                )
            }
            Database::Postgres(pool) => {
                let opts = (*pool.connect_options())
                    .clone()
                    .options([("synchronous_commit", "off")]);
                malaka_db::Database::Postgres(
                    PgPoolOptions::new()
                        .max_connections(4)
                        .acquire_timeout(Duration::from_secs(10))
                        .connect_lazy_with(opts),
                )
            }
        }
    }

    async fn write_turn(&self) -> Option<malaka_inventory::WriteTurn> {
        match self {
            Database::Sqlite(pool) => Some(malaka_inventory::sqlite_turn(pool).await),
            Database::Postgres(_) => None,
        }
    }

    async fn ping(&self) -> Result<(), DbError> {
        match self {
            Database::Sqlite(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
            Database::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }

    async fn close(&self) {
        match self {
            Database::Sqlite(pool) => pool.close().await,
            Database::Postgres(pool) => pool.close().await,
        }
    }
}
