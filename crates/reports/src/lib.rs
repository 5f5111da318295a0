//! Reports as a service: a request is a row in `malaka_reports` and a `report` job on the
//! `reports` queue (concurrency 2 by default, so reports never starve the API or the
//! notifications), enqueued in one transaction. The job streams the report's rows from one
//! snapshot into CSV or JSON, stores the file in 1 MiB chunks in the database (any node can
//! serve the download), and on completion writes `report.ready` to the outbox and enqueues the
//! notifications of rules that want it, in the transaction that marks it completed.

mod format;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use malaka_inventory::{
    Inventory, InventoryError, ReportKind, ReportParams, ReportSink, ReportSummary, Sku,
    WarehouseCode,
};
use malaka_jobs::{JobContext, JobError, JobOptions, NewJob, Registry};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use format::{Format, Writer};
use malaka_db::{Database, on_pool};

/// Applies this crate's migrations (the reports and their chunks) that have not run yet; the
/// crates' migrators share `_sqlx_migrations`, so each leaves the others' versions alone.
///
/// # Errors
/// A migration that fails, or one that was edited after it ran.
pub async fn migrate(db: &Database) -> Result<(), sqlx::migrate::MigrateError> {
    match db {
        Database::Sqlite(pool) => {
            let mut m = sqlx::migrate!("./migrations/sqlite");
            m.set_ignore_missing(true);
            m.run(pool).await
        }
        Database::Postgres(pool) => {
            let mut m = sqlx::migrate!("./migrations/postgres");
            m.set_ignore_missing(true);
            m.run(pool).await
        }
    }
}

/// The queue reports run on.
pub const QUEUE: &str = "reports";
/// The job kind.
pub const KIND: &str = "report";
/// Topic of the event a finished report writes.
pub const TOPIC_READY: &str = malaka_inventory::topics::TOPIC_REPORT_READY;
/// Size of a stored chunk of a report's file.
const CHUNK: usize = 1024 * 1024;

/// A report's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportState {
    /// Waiting for a worker.
    Queued,
    /// Being generated.
    Running,
    /// Ready to download.
    Completed,
    /// Failed (see `error`).
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl ReportState {
    /// Every state.
    pub const ALL: [Self; 5] = [
        Self::Queued,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Completed,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }

    /// Finished one way or another.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// A report's parameters as stored (and as the API takes them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredParams {
    /// One article.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// One warehouse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warehouse: Option<String>,
    /// Ledger: posted at or after (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<DateTime<Utc>>,
    /// Ledger: posted before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<DateTime<Utc>>,
}

impl StoredParams {
    /// The domain parameters.
    ///
    /// # Errors
    /// An invalid sku or warehouse code (the field is named).
    pub fn parse(&self) -> Result<ReportParams, InventoryError> {
        if let (Some(f), Some(t)) = (self.from, self.to)
            && f > t
        {
            return Err(InventoryError::invalid("from", "from must not be after to"));
        }
        Ok(ReportParams {
            sku: self.sku.as_deref().map(Sku::parse).transpose()?,
            warehouse: self
                .warehouse
                .as_deref()
                .map(|w| WarehouseCode::parse_field("warehouse", w))
                .transpose()?,
            from: self.from,
            to: self.to,
        })
    }
}

/// A report request as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Id (UUIDv7).
    pub id: String,
    /// Which report.
    pub kind: ReportKind,
    /// Its parameters.
    pub params: StoredParams,
    /// CSV or JSON.
    pub format: Format,
    /// Where it is.
    pub state: ReportState,
    /// Percent done.
    pub progress: i64,
    /// Rows, once done.
    pub rows: Option<i64>,
    /// File size, once done.
    pub bytes: Option<i64>,
    /// Totals and notes, once done.
    pub summary: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// The token that asked for it.
    pub token_id: i64,
    /// That token's name.
    pub requested_by: String,
    /// The job generating it.
    pub job_id: Option<i64>,
    /// Asked for.
    pub created_at: DateTime<Utc>,
    /// Started.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Deleted after this.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    kind: String,
    params: String,
    format: String,
    state: String,
    progress: i64,
    rows: Option<i64>,
    bytes: Option<i64>,
    summary: Option<String>,
    error: Option<String>,
    token_id: i64,
    requested_by: String,
    job_id: Option<i64>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
}

const COLS: &str = "id, kind, params, format, state, progress, rows, bytes, summary, error, \
                    token_id, requested_by, job_id, created_at, started_at, finished_at, expires_at";

fn decode(r: Row) -> Result<Report, sqlx::Error> {
    let bad = |what: &str| sqlx::Error::Decode(format!("report {}: {what}", r.id).into());
    Ok(Report {
        kind: r.kind.parse().map_err(|_| bad("kind"))?,
        params: serde_json::from_str(&r.params).map_err(|_| bad("params"))?,
        format: Format::parse(&r.format).ok_or_else(|| bad("format"))?,
        state: ReportState::parse(&r.state).ok_or_else(|| bad("state"))?,
        progress: r.progress,
        rows: r.rows,
        bytes: r.bytes,
        summary: r
            .summary
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok()),
        error: r.error,
        token_id: r.token_id,
        requested_by: r.requested_by,
        job_id: r.job_id,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        expires_at: r.expires_at,
        id: r.id,
    })
}

/// Why a report operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The inventory refused or failed.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The job queue failed.
    #[error(transparent)]
    Jobs(#[from] malaka_jobs::JobsError),
    /// Writing the file failed.
    #[error("writing the report: {0}")]
    Write(String),
    /// The token has its most reports queued or running.
    #[error(
        "this token already has {0} reports queued or running (reports.max_active_per_token); wait for one to finish"
    )]
    TooMany(u32),
}

/// The first key of the advisory lock that serializes one token's report requests.
const REPORT_QUOTA_LOCK: i32 = 0x4d52_5054; // "MRPT"

/// Reports: requests, generation (the job handler), downloads, retention.
#[derive(Debug)]
pub struct Reports {
    db: Database,
    inventory: Inventory,
    retention: Duration,
    max_active: u32,
}

impl Reports {
    /// Reports over `db`, kept `retention` after they finish.
    pub fn new(db: Database, inventory: Inventory, retention: Duration) -> Self {
        Self {
            db,
            inventory,
            retention,
            max_active: u32::MAX,
        }
    }

    /// At most `n` reports of one token queued or running at once ([`ReportError::TooMany`]).
    #[must_use]
    pub fn max_active_per_token(mut self, n: u32) -> Self {
        self.max_active = n;
        self
    }

    /// The job options of a report (one attempt more on a database failure; 30 minutes).
    pub fn job_options() -> JobOptions {
        JobOptions::default()
            .queue(QUEUE)
            .max_attempts(2)
            .timeout(Duration::from_secs(30 * 60))
    }

    /// `registry` with the report kind added.
    pub fn register(self: &Arc<Self>, registry: Registry) -> Registry {
        let me = Arc::clone(self);
        registry.register_fn(KIND, Self::job_options(), move |payload, ctx| {
            let me = Arc::clone(&me);
            async move { me.run(payload, &ctx).await }
        })
    }

    /// Stores a request and enqueues its job, in one transaction.
    ///
    /// # Errors
    /// A database error.
    pub async fn request(
        &self,
        kind: ReportKind,
        params: StoredParams,
        format: Format,
        token_id: i64,
        by: &str,
    ) -> Result<Report, ReportError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = Utc::now();
        let job = NewJob::new(KIND, serde_json::json!({ "report": id }))
            .queue(QUEUE)
            .max_attempts(2)
            .tag(kind.as_str());
        let params_text = serde_json::to_string(&params).unwrap_or_else(|_| "{}".into());
        const ACTIVE: &str = "SELECT count(*) FROM malaka_reports \
                              WHERE token_id = $1 AND state IN ('queued', 'running')";
        const INSERT: &str = "INSERT INTO malaka_reports (id, kind, params, format, state, token_id, \
                              requested_by, job_id, created_at) \
                              VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8)";
        match &self.db {
            Database::Sqlite(pool) => {
                // IMMEDIATE: the count and the insert are one step for every writer.
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let active: i64 = sqlx::query_scalar(ACTIVE)
                    .bind(token_id)
                    .fetch_one(&mut *tx)
                    .await?;
                if active >= i64::from(self.max_active) {
                    return Err(ReportError::TooMany(self.max_active));
                }
                let job = malaka_jobs::sqlite::enqueue_in(&mut tx, &job).await?;
                sqlx::query(INSERT)
                    .bind(&id)
                    .bind(kind.as_str())
                    .bind(&params_text)
                    .bind(format.as_str())
                    .bind(token_id)
                    .bind(by)
                    .bind(job.id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // One request of a token at a time past this point (on any node), so two
                // cannot both see room for one more.
                sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
                    .bind(REPORT_QUOTA_LOCK)
                    .bind(i32::try_from(token_id.rem_euclid(i64::from(i32::MAX))).unwrap_or(0))
                    .execute(&mut *tx)
                    .await?;
                let active: i64 = sqlx::query_scalar(ACTIVE)
                    .bind(token_id)
                    .fetch_one(&mut *tx)
                    .await?;
                if active >= i64::from(self.max_active) {
                    return Err(ReportError::TooMany(self.max_active));
                }
                let job = malaka_jobs::postgres::enqueue_in(&mut tx, &job).await?;
                sqlx::query(INSERT)
                    .bind(&id)
                    .bind(kind.as_str())
                    .bind(&params_text)
                    .bind(format.as_str())
                    .bind(token_id)
                    .bind(by)
                    .bind(job.id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
        }
        self.get(&id)
            .await?
            .ok_or_else(|| ReportError::Write("the report vanished".into()))
    }

    /// One report.
    ///
    /// # Errors
    /// A database error.
    pub async fn get(&self, id: &str) -> Result<Option<Report>, sqlx::Error> {
        let sql = format!("SELECT {COLS} FROM malaka_reports WHERE id = $1");
        let row: Option<Row> = on_pool!(&self.db, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(id).fetch_optional(pool).await?
        });
        row.map(decode).transpose()
    }

    /// Reports, newest first, optionally in one state, before `before` (an id), at most
    /// `limit`.
    ///
    /// # Errors
    /// A database error.
    pub async fn list(
        &self,
        state: Option<ReportState>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Report>, sqlx::Error> {
        let rows: Vec<Row> = on_pool!(&self.db, pool => {
            // Only the filters given, so `malaka_reports_state_id` serves a state filter.
            let mut q = sqlx::QueryBuilder::new(format!("SELECT {COLS} FROM malaka_reports WHERE 1 = 1"));
            if let Some(st) = state {
                q.push(" AND state = ").push_bind(st.as_str());
            }
            if let Some(b) = before {
                q.push(" AND id < ").push_bind(b);
            }
            q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit));
            q.build_query_as().fetch_all(pool).await?
        });
        rows.into_iter().map(decode).collect()
    }

    /// Cancels a report still to finish (its job stops at the next batch of rows) or deletes
    /// a finished one. Returns the report as it was, or `None` if there is none.
    ///
    /// # Errors
    /// A database or queue error.
    pub async fn cancel_or_delete(
        &self,
        id: &str,
        queue: &malaka_jobs::Queue,
    ) -> Result<Option<Report>, ReportError> {
        let Some(r) = self.get(id).await? else {
            return Ok(None);
        };
        if r.state.is_final() {
            const DEL: &str = "DELETE FROM malaka_reports WHERE id = $1";
            on_pool!(&self.db, pool => { sqlx::query(DEL).bind(id).execute(pool).await?; });
            return Ok(Some(r));
        }
        const CANCEL: &str = "UPDATE malaka_reports SET state = 'cancelled', finished_at = $2, \
                              expires_at = $3 WHERE id = $1 AND state IN ('queued', 'running')";
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(self.retention).unwrap_or_default();
        on_pool!(&self.db, pool => {
            sqlx::query(CANCEL).bind(id).bind(now).bind(expires).execute(pool).await?;
        });
        if let Some(job) = r.job_id {
            match queue.cancel(job).await {
                // Finished meanwhile, or already gone (a completed job is not kept): nothing
                // left to stop.
                Ok(_)
                | Err(
                    malaka_jobs::JobsError::WrongState { .. } | malaka_jobs::JobsError::NotFound(_),
                ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(r))
    }

    /// Chunk `seq` of a report's file, if there is one.
    ///
    /// # Errors
    /// A database error.
    pub async fn chunk(&self, id: &str, seq: i64) -> Result<Option<Vec<u8>>, sqlx::Error> {
        const SQL: &str = "SELECT data FROM malaka_report_chunks WHERE report_id = $1 AND seq = $2";
        Ok(on_pool!(&self.db, pool => {
            sqlx::query_scalar(SQL).bind(id).bind(seq).fetch_optional(pool).await?
        }))
    }

    /// Deletes reports past their retention; how many.
    ///
    /// # Errors
    /// A database error.
    pub async fn prune(&self) -> Result<u64, sqlx::Error> {
        const SQL: &str =
            "DELETE FROM malaka_reports WHERE expires_at IS NOT NULL AND expires_at < $1";
        let now = Utc::now();
        Ok(on_pool!(&self.db, pool => {
            sqlx::query(SQL).bind(now).execute(pool).await?.rows_affected()
        }))
    }

    async fn set(
        &self,
        id: &str,
        sql: &'static str,
        now: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        Ok(on_pool!(&self.db, pool => {
            sqlx::query(sql).bind(id).bind(now).execute(pool).await?.rows_affected()
        }))
    }

    async fn run(&self, payload: serde_json::Value, ctx: &JobContext) -> Result<(), JobError> {
        let id = payload["report"]
            .as_str()
            .ok_or_else(|| JobError::permanent("no report id"))?
            .to_owned();
        let Some(report) = self.get(&id).await? else {
            return Ok(()); // deleted meanwhile
        };
        if report.state != ReportState::Queued && report.state != ReportState::Running {
            return Ok(()); // cancelled before it started
        }
        const START: &str = "UPDATE malaka_reports SET state = 'running', started_at = $2, progress = 0 \
                             WHERE id = $1 AND state IN ('queued', 'running')";
        if self.set(&id, START, Utc::now()).await? == 0 {
            return Ok(());
        }
        // A second attempt starts from nothing.
        const CLEAR: &str = "DELETE FROM malaka_report_chunks WHERE report_id = $1";
        on_pool!(&self.db, pool => { sqlx::query(CLEAR).bind(&id).execute(pool).await?; });
        match self.generate(&report, ctx).await {
            Ok((summary, bytes)) => {
                self.complete(&report, &summary, bytes).await?;
                tracing::info!(report = %id, kind = report.kind.as_str(), rows = summary.rows, bytes, "report ready");
                Ok(())
            }
            Err(_) if ctx.is_cancelled() => Ok(()),
            Err(e) => {
                tracing::warn!(report = %id, error = %e, "report failed");
                let last = ctx.attempt >= ctx.max_attempts;
                if last || matches!(e, ReportError::Inventory(InventoryError::Invalid { .. })) {
                    const FAIL: &str = "UPDATE malaka_reports SET state = 'failed', error = $3, \
                                        finished_at = $2, expires_at = $4 WHERE id = $1";
                    let now = Utc::now();
                    let expires =
                        now + chrono::Duration::from_std(self.retention).unwrap_or_default();
                    on_pool!(&self.db, pool => {
                        sqlx::query(FAIL).bind(&id).bind(now).bind(e.to_string()).bind(expires)
                            .execute(pool).await?;
                    });
                    return Err(JobError::permanent(e));
                }
                Err(JobError::retryable(e))
            }
        }
    }

    /// Streams the report into chunks; its summary and size.
    async fn generate(
        &self,
        report: &Report,
        ctx: &JobContext,
    ) -> Result<(ReportSummary, u64), ReportError> {
        let params = report.params.parse()?;
        let mut sink = ChunkSink {
            reports: self,
            id: &report.id,
            writer: Writer::new(report.format, report.kind)?,
            seq: 0,
            bytes: 0,
            ctx: Some(ctx),
            last_progress: Instant::now(),
            writing: None,
        };
        let summary = self
            .inventory
            .report(report.kind, &params, &mut sink)
            .await?;
        sink.writer.finish(&summary)?;
        let rest = sink.writer.take();
        sink.store(rest).await?;
        sink.written().await?;
        Ok((summary, sink.bytes))
    }

    /// Marks `report` completed, writes `report.ready` and enqueues the notifications of rules
    /// that want it, in one transaction.
    async fn complete(
        &self,
        report: &Report,
        summary: &ReportSummary,
        bytes: u64,
    ) -> Result<(), ReportError> {
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(self.retention).unwrap_or_default();
        let summary_json = serde_json::to_string(summary).unwrap_or_else(|_| "{}".into());
        let event = serde_json::json!({
            "report_id": report.id, "kind": report.kind.as_str(), "format": report.format.as_str(),
            "rows": summary.rows, "bytes": bytes, "requested_by": report.requested_by,
            "download": format!("/api/v1/reports/{}/download", report.id),
        });
        const DONE: &str = "UPDATE malaka_reports SET state = 'completed', progress = 100, rows = $2, \
                            bytes = $3, summary = $4, finished_at = $5, expires_at = $6 \
                            WHERE id = $1 AND state = 'running'";
        const EVENT: &str =
            "INSERT INTO malaka_outbox (topic, payload, created_at) VALUES ($1, $2, $3)";
        let rows = i64::try_from(summary.rows).unwrap_or(i64::MAX);
        let size = i64::try_from(bytes).unwrap_or(i64::MAX);
        macro_rules! complete_in {
            ($pool:expr, $begin:literal, $enqueue:path, $rules:path) => {{
                let mut tx = $pool.begin_with($begin).await?;
                let n = sqlx::query(DONE)
                    .bind(&report.id)
                    .bind(rows)
                    .bind(size)
                    .bind(&summary_json)
                    .bind(now)
                    .bind(expires)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 1 {
                    sqlx::query(EVENT)
                        .bind(TOPIC_READY)
                        .bind(event.to_string())
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    let rules = $rules(&mut *tx).await?;
                    for job in malaka_notify::jobs_for_report(&event, &rules) {
                        $enqueue(&mut *tx, &job).await?;
                    }
                }
                tx.commit().await?;
            }};
        }
        match &self.db {
            Database::Sqlite(pool) => complete_in!(
                pool,
                "BEGIN IMMEDIATE",
                malaka_jobs::sqlite::enqueue_in,
                malaka_notify::rules::enabled_sqlite
            ),
            Database::Postgres(pool) => complete_in!(
                pool,
                "BEGIN",
                malaka_jobs::postgres::enqueue_in,
                malaka_notify::rules::enabled_postgres
            ),
        }
        self.inventory.outbox_written().notify_one();
        Ok(())
    }

    /// Runs a report now, outside the queue, into `out` (`malaka report`); `progress` is told
    /// (done, total) as rows go.
    ///
    /// # Errors
    /// The inventory or the writer failed.
    pub async fn run_to(
        &self,
        kind: ReportKind,
        params: &StoredParams,
        format: Format,
        out: &mut (dyn std::io::Write + Send),
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<ReportSummary, ReportError> {
        struct Direct<'a> {
            writer: Writer,
            out: &'a mut (dyn std::io::Write + Send),
            progress: &'a (dyn Fn(u64, u64) + Sync),
        }
        #[async_trait::async_trait]
        impl ReportSink for Direct<'_> {
            async fn rows(&mut self, cells: &[&str]) -> Result<(), InventoryError> {
                self.writer
                    .rows(cells)
                    .map_err(|e| InventoryError::Unavailable(e.to_string()))?;
                let bytes = self.writer.take();
                self.out
                    .write_all(&bytes)
                    .map_err(|e| InventoryError::Unavailable(format!("writing: {e}")))
            }
            async fn progress(&mut self, done: u64, total: u64) -> Result<(), InventoryError> {
                (self.progress)(done, total);
                Ok(())
            }
        }
        let mut sink = Direct {
            writer: Writer::new(format, kind)?,
            out,
            progress,
        };
        let summary = self
            .inventory
            .report(kind, &params.parse()?, &mut sink)
            .await?;
        sink.writer.finish(&summary)?;
        let rest = sink.writer.take();
        sink.out
            .write_all(&rest)
            .and_then(|()| sink.out.flush())
            .map_err(|e| ReportError::Write(e.to_string()))?;
        Ok(summary)
    }
}

/// Stores a report's file in chunks as rows arrive, and its progress. A chunk is written while
/// the next one is being made (one write in flight): the report's rows and the chunk's insert
/// then use the two sides of the work (formatting here, the write in the database) at once.
struct ChunkSink<'a> {
    reports: &'a Reports,
    id: &'a str,
    writer: Writer,
    seq: i64,
    bytes: u64,
    ctx: Option<&'a JobContext>,
    last_progress: Instant,
    /// The chunk being written.
    writing: Option<tokio::task::JoinHandle<Result<(), sqlx::Error>>>,
}

impl ChunkSink<'_> {
    /// Starts writing `data` as the next chunk, once the one before it is written.
    async fn store(&mut self, data: Vec<u8>) -> Result<(), sqlx::Error> {
        if data.is_empty() {
            return Ok(());
        }
        self.written().await?;
        self.bytes += data.len() as u64;
        const SQL: &str =
            "INSERT INTO malaka_report_chunks (report_id, seq, data) VALUES ($1, $2, $3)";
        let seq = self.seq;
        self.seq += 1;
        let (db, id) = (self.reports.db.clone(), self.id.to_owned());
        self.writing = Some(tokio::spawn(async move {
            on_pool!(&db, pool => {
                sqlx::query(SQL).bind(&id).bind(seq).bind(&data).execute(pool).await?;
            });
            Ok(())
        }));
        Ok(())
    }

    /// Waits for the chunk being written, if any.
    async fn written(&mut self) -> Result<(), sqlx::Error> {
        match self.writing.take() {
            None => Ok(()),
            Some(w) => w
                .await
                .map_err(|e| sqlx::Error::Protocol(format!("writing a chunk: {e}")))?,
        }
    }
}

impl Drop for ChunkSink<'_> {
    fn drop(&mut self) {
        // A report that failed or was cancelled leaves no write behind.
        if let Some(w) = self.writing.take() {
            w.abort();
        }
    }
}

#[async_trait::async_trait]
impl ReportSink for ChunkSink<'_> {
    async fn rows(&mut self, cells: &[&str]) -> Result<(), InventoryError> {
        if self.ctx.is_some_and(JobContext::is_cancelled) {
            return Err(InventoryError::Unavailable(
                "the report was cancelled".into(),
            ));
        }
        self.writer
            .rows(cells)
            .map_err(|e| InventoryError::Unavailable(e.to_string()))?;
        if self.writer.buffered() >= CHUNK {
            let data = self.writer.take();
            self.store(data)
                .await
                .map_err(|e| InventoryError::Unavailable(e.to_string()))?;
        }
        Ok(())
    }

    async fn progress(&mut self, done: u64, total: u64) -> Result<(), InventoryError> {
        if self.last_progress.elapsed() < Duration::from_millis(250) {
            return Ok(());
        }
        self.last_progress = Instant::now();
        let pct = i64::try_from(done.saturating_mul(100) / total.max(1))
            .unwrap_or(100)
            .min(99);
        const SQL: &str =
            "UPDATE malaka_reports SET progress = $2 WHERE id = $1 AND state = 'running'";
        let n = on_pool!(&self.reports.db, pool => {
            sqlx::query(SQL).bind(self.id).bind(pct).execute(pool).await
                .map_err(|e| InventoryError::Unavailable(e.to_string()))?.rows_affected()
        });
        if n == 0 {
            // Cancelled (or deleted) while running.
            return Err(InventoryError::Unavailable(
                "the report was cancelled".into(),
            ));
        }
        Ok(())
    }
}
