//! `malaka bench lists`: a page of every filtered list, timed over HTTP on a large database.
//!
//! Seeding, before the server starts (not timed; on PostgreSQL followed by `ANALYZE`, as
//! autovacuum would soon run): `--rows` ledger rows through the reports
//! suite's bulk path (500 articles in 2 warehouses over 120 days, the balances they leave),
//! 100,000 alerts (one open per balance in alert, the rest cleared), 100,000 jobs on a queue no
//! worker serves (5 kinds), 10,000 reports (completed, failed, cancelled) and 100,000 more
//! articles (`ART-000000`..., hardware names) for the article search shapes.
//!
//! Each shape is timed as a client walks it: the first page and then four more by the `next`
//! cursor, 40 walks (200 requests) after 10 warm-up requests, one request at a time. A time runs
//! from sending the GET to reading the last byte of its 100-row page. The balances list has a
//! response cache (invalidated by every posting); before each timed balances request a posting
//! (not timed) invalidates it, so the figures are of the query, not the cache.
//!
//! Baseline: `baseline_ledger_by_article_*`, the same page of one article's ledger served by a
//! hand-written axum handler over the same pool (one indexed `SELECT ... WHERE sku = ? AND id > ?
//! ORDER BY id LIMIT 100`, rows into a `FromRow` struct serialized by serde; no auth, no
//! middleware), walked the same way.
//!
//! Figures (milliseconds): `<shape>_p50_ms`, `<shape>_p99_ms` for `ledger_by_article`,
//! `ledger_by_warehouse`, `ledger_by_dates` (one day), `ledger_all`, `balances_by_level`,
//! `balances_all`, `alerts_open`, `alerts_by_level`, `jobs_by_state`, `jobs_by_kind`,
//! `reports_by_state`, and the article searches `articles_search_sku` (a SKU prefix),
//! `articles_search_name` (a word of many names) and `articles_search_none` (text no article
//! holds); `worst_p99_ms` (target below 20); `ledger_rows`.

use std::time::{Duration, Instant};

use crate::Figures;
use crate::jobs::Backend;
use crate::movements::{MovementsBenchError, fresh_database};
use malaka_server::Config;
use malaka_server::db::Database;
use malaka_server::db::DatabaseExt as _;

/// What to run.
#[derive(Debug, Clone)]
pub struct ListsBench {
    /// Backend.
    pub backend: Backend,
    /// Database URL (a fresh database is made next to it).
    pub database_url: Option<String>,
    /// Ledger rows to seed.
    pub rows: usize,
    /// Walks per shape (five pages each).
    pub walks: usize,
    /// Alerts, jobs and reports to seed (alerts and jobs; reports a tenth of it).
    pub others: usize,
}

fn err(what: &str) -> impl Fn(String) -> MovementsBenchError + '_ {
    move |e| MovementsBenchError::Setup(format!("{what}: {e}"))
}

/// Runs the suite (see the module's docs for the figures).
///
/// # Errors
/// Setup or a request failed.
pub async fn lists_suite(b: &ListsBench) -> Result<Figures, MovementsBenchError> {
    let fresh = fresh_database(b.backend, b.database_url.as_deref()).await?;
    let result = serve_and_measure(b, &fresh.config).await;
    fresh.remove().await;
    result
}

async fn serve_and_measure(
    b: &ListsBench,
    config: &Config,
) -> Result<Figures, MovementsBenchError> {
    let db = Database::connect(&config.database_url(), &config.database)
        .await
        .map_err(|e| err("database")(e.to_string()))?;
    db.migrate()
        .await
        .map_err(|e| err("migrate")(e.to_string()))?;
    crate::reports::seed(&db, b.rows).await?;
    seed_others(&db, config, b.others).await?;
    if let Database::Postgres(pool) = &db {
        sqlx::query("ANALYZE").execute(pool).await?;
    }
    db.close().await;
    crate::movements::with_server(config, |state, addr| async move {
        measure(b, &state, addr).await
    })
    .await
}

/// Alerts, jobs and reports, written directly (as their services would leave them).
async fn seed_others(db: &Database, config: &Config, n: usize) -> Result<(), MovementsBenchError> {
    let now = chrono::Utc::now();
    macro_rules! alerts_and_reports {
        ($pool:expr, $begin:literal) => {{
            let mut tx = $pool.begin_with($begin).await?;
            let levels = ["LOW", "CRITICAL", "OUT_OF_STOCK"];
            for i in 0..n {
                let k = i % 1000;
                let (sku, wh) = (format!("SKU-{:04}", k / 2), ["MAIN", "SIDE"][k % 2]);
                // The last alert of each balance stays open.
                let cleared = (i + 1000 < n).then_some(now);
                sqlx::query(
                    "INSERT INTO inv_alerts (sku, warehouse, level, qty, min_qty, raised_at, \
                     updated_at, cleared_at, last_event) VALUES ($1, $2, $3, '5', '20', $4, $4, $5, $6)",
                )
                .bind(&sku)
                .bind(wh)
                .bind(levels[i % 3])
                .bind(now)
                .bind(cleared)
                .bind(i64::try_from(i).unwrap_or(0))
                .execute(&mut *tx)
                .await?;
            }
            let states = ["completed", "completed", "failed", "cancelled"];
            for i in 0..n / 10 {
                sqlx::query(
                    "INSERT INTO malaka_reports (id, kind, params, format, state, token_id, \
                     requested_by, created_at, expires_at) VALUES ($1, 'valuation', '{}', 'csv', $2, 1, 'bench', $3, $4)",
                )
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(states[i % 4])
                .bind(now)
                .bind(now + chrono::Duration::days(7))
                .execute(&mut *tx)
                .await?;
            }
            // Articles for the search shapes: `ART-000000`..., named like a hardware catalogue.
            let words = ["bolt", "nut", "screw", "washer", "bracket", "hinge", "spring", "valve",
                         "pipe", "cable", "clamp", "gasket", "bearing", "seal", "filter"];
            for start in (0..n).step_by(1000) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO inv_articles (sku, name, unit, valuation, min_qty, reorder_qty, \
                     allow_negative, archived, created_at, updated_at) ",
                );
                q.push_values(start..n.min(start + 1000), |mut row, i| {
                    row.push_bind(format!("ART-{i:06}"))
                        .push_bind(format!(
                            "{} {} M{} {}mm",
                            words[i % 15],
                            words[(i / 15) % 15],
                            i % 40,
                            i % 997
                        ))
                        .push_bind("pcs")
                        .push_bind("moving_average")
                        .push_bind("0")
                        .push_bind("0")
                        .push_bind(false)
                        .push_bind(false)
                        .push_bind(now)
                        .push_bind(now);
                });
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }};
    }
    match db {
        Database::Sqlite(pool) => alerts_and_reports!(pool, "BEGIN IMMEDIATE"),
        Database::Postgres(pool) => alerts_and_reports!(pool, "BEGIN"),
    }
    let queue = malaka_jobs::Queue::new(db.job_storage(&config.jobs));
    let mut done = 0;
    while done < n {
        let batch: Vec<malaka_jobs::NewJob> = (done..n.min(done + 1000))
            .map(|i| {
                malaka_jobs::NewJob::new(format!("k{}", i % 5), serde_json::json!({}))
                    .queue("archive")
            })
            .collect();
        done += batch.len();
        queue
            .enqueue_many(batch)
            .await
            .map_err(|e| err("jobs")(e.to_string()))?;
    }
    Ok(())
}

struct Client {
    http: reqwest::Client,
    base: String,
    bearer: String,
}

impl Client {
    /// One GET read to its last byte: its time and its `next`.
    async fn page(&self, path: &str) -> Result<(Duration, Option<String>), MovementsBenchError> {
        let t0 = Instant::now();
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header(reqwest::header::AUTHORIZATION, &self.bearer)
            .send()
            .await
            .map_err(|e| err(path)(e.to_string()))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| err(path)(e.to_string()))?;
        let took = t0.elapsed();
        if !status.is_success() {
            return Err(err(path)(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| err(path)(e.to_string()))?;
        Ok((took, v["next"].as_str().map(str::to_owned)))
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> Result<(), MovementsBenchError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::AUTHORIZATION, &self.bearer)
            .json(&body)
            .send()
            .await
            .map_err(|e| err(path)(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(err(path)(resp.status().to_string()));
        }
        Ok(())
    }

    /// Walks `path` (`cursor` is the name of its cursor parameter): `walks` times the first
    /// page and up to four more; `before` runs untimed before each request.
    async fn walk(
        &self,
        path: &str,
        cursor: &str,
        walks: usize,
        invalidate: bool,
    ) -> Result<Vec<f64>, MovementsBenchError> {
        let mut times = Vec::with_capacity(walks * 5);
        for w in 0..walks + 2 {
            let mut next: Option<String> = None;
            for _ in 0..5 {
                if invalidate {
                    self.post(
                        "/api/v1/movements",
                        serde_json::json!({"type": "receipt", "sku": "SKU-0000", "warehouse": "MAIN", "qty": "1", "unit_cost": "1"}),
                    )
                    .await?;
                }
                let url = match &next {
                    Some(c) => format!("{path}&{cursor}={}", urlencode(c)),
                    None => path.to_owned(),
                };
                let (took, n) = self.page(&url).await?;
                // The first two walks warm up.
                if w >= 2 {
                    times.push(took.as_secs_f64() * 1000.0);
                }
                match n {
                    Some(c) => next = Some(c),
                    None => break,
                }
            }
        }
        Ok(times)
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn measure(
    b: &ListsBench,
    state: &malaka_server::AppState,
    addr: std::net::SocketAddr,
) -> Result<Figures, MovementsBenchError> {
    let token = crate::movements::admin_token(state, "bench lists").await?;
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| err("HTTP client")(e.to_string()))?,
        base: format!("http://{addr}"),
        bearer: format!("Bearer {token}"),
    };
    let day = (chrono::Utc::now() - chrono::Duration::days(60)).date_naive();
    let next_day = day + chrono::Days::new(1);
    let shapes: Vec<(&str, String, &str, bool)> = vec![
        (
            "ledger_by_article",
            "/api/v1/ledger?sku=SKU-0017".into(),
            "cursor",
            false,
        ),
        (
            "ledger_by_warehouse",
            "/api/v1/ledger?warehouse=SIDE".into(),
            "cursor",
            false,
        ),
        (
            "ledger_by_dates",
            format!("/api/v1/ledger?from={day}&to={next_day}"),
            "cursor",
            false,
        ),
        (
            "ledger_all",
            "/api/v1/ledger?limit=100".into(),
            "cursor",
            false,
        ),
        (
            "balances_by_level",
            "/api/v1/balances?level=NORMAL".into(),
            "cursor",
            true,
        ),
        (
            "balances_all",
            "/api/v1/balances?limit=100".into(),
            "cursor",
            true,
        ),
        (
            "alerts_open",
            "/api/v1/alerts?open=true".into(),
            "before",
            false,
        ),
        (
            "alerts_by_level",
            "/api/v1/alerts?level=CRITICAL".into(),
            "before",
            false,
        ),
        (
            "jobs_by_state",
            "/api/v1/jobs?state=available".into(),
            "before",
            false,
        ),
        (
            "jobs_by_kind",
            "/api/v1/jobs?kind=k3".into(),
            "before",
            false,
        ),
        // Article search as the dashboard types it (20 suggestions): a SKU prefix, a word of
        // many names, and text no article holds (every article read unless an index answers).
        (
            "articles_search_sku",
            "/api/v1/articles?q=ART-0999&limit=20".into(),
            "after",
            false,
        ),
        (
            "articles_search_name",
            "/api/v1/articles?q=hinge%20valve&limit=20".into(),
            "after",
            false,
        ),
        (
            "articles_search_none",
            "/api/v1/articles?q=no%20such%20thing&limit=20".into(),
            "after",
            false,
        ),
        (
            "reports_by_state",
            "/api/v1/reports?state=completed".into(),
            "before",
            false,
        ),
    ];
    let mut f = Figures::default();
    let mut worst: f64 = 0.0;
    for (name, path, cursor, invalidate) in &shapes {
        let mut t = client.walk(path, cursor, b.walks, *invalidate).await?;
        t.sort_by(f64::total_cmp);
        let p99 = percentile(&t, 0.99);
        worst = worst.max(p99);
        f.push(format!("{name}_p50_ms"), percentile(&t, 0.5));
        f.push(format!("{name}_p99_ms"), p99);
    }
    let (base_p50, base_p99) = baseline(state.db(), b.walks).await?;
    f.push("baseline_ledger_by_article_p50_ms", base_p50);
    f.push("baseline_ledger_by_article_p99_ms", base_p99);
    f.push("worst_p99_ms", worst);
    f.push("ledger_rows", b.rows as f64);
    Ok(f)
}

/// The hand-written page: one indexed query, rows to JSON, behind a bare axum route.
async fn baseline(db: &Database, walks: usize) -> Result<(f64, f64), MovementsBenchError> {
    use axum::extract::{Query, State};
    const SQL: &str = "SELECT id, movement_id, kind, sku, warehouse, qty_change, unit_cost, \
         value_change, qty_after, value_after, rate_after, reference, posted_by, posted_at \
         FROM inv_ledger WHERE sku = $1 AND id > $2 ORDER BY id LIMIT 100";
    #[derive(sqlx::FromRow, serde::Serialize)]
    struct LedgerRow {
        id: i64,
        movement_id: String,
        #[serde(rename = "type")]
        kind: String,
        sku: String,
        warehouse: String,
        qty_change: String,
        unit_cost: String,
        value_change: String,
        qty_after: String,
        value_after: String,
        rate_after: String,
        reference: Option<String>,
        posted_by: String,
        posted_at: chrono::DateTime<chrono::Utc>,
    }
    #[derive(serde::Serialize)]
    struct Page {
        items: Vec<LedgerRow>,
        next: Option<String>,
    }
    async fn page(
        State(db): State<Database>,
        Query(q): Query<std::collections::HashMap<String, String>>,
    ) -> axum::Json<Page> {
        let sku = q.get("sku").cloned().unwrap_or_default();
        let after: i64 = q.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
        let items: Vec<LedgerRow> = match &db {
            Database::Sqlite(p) => {
                sqlx::query_as(SQL)
                    .bind(&sku)
                    .bind(after)
                    .fetch_all(p)
                    .await
            }
            Database::Postgres(p) => {
                sqlx::query_as(SQL)
                    .bind(&sku)
                    .bind(after)
                    .fetch_all(p)
                    .await
            }
        }
        .unwrap_or_default();
        let next = (items.len() == 100)
            .then(|| items.last().map(|r| r.id.to_string()))
            .flatten();
        axum::Json(Page { items, next })
    }
    let router = axum::Router::new()
        .route("/ledger", axum::routing::get(page))
        .with_state(db.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| err("baseline")(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| err("baseline")(e.to_string()))?;
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = Client {
        http: reqwest::Client::new(),
        base: format!("http://{addr}"),
        bearer: String::new(),
    };
    let walked = client
        .walk("/ledger?sku=SKU-0017", "cursor", walks, false)
        .await;
    server.abort();
    let mut t = walked?;
    t.sort_by(f64::total_cmp);
    Ok((percentile(&t, 0.5), percentile(&t, 0.99)))
}
