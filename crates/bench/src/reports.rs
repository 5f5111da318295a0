//! `malaka bench reports`: reports timed end to end on the real path. The server runs in process
//! (`Application::build` on 127.0.0.1:0, its report workers and all); the benchmark is an HTTP
//! client of it, so the benchmark and the server are one process and `peak_rss_mb` covers both.
//!
//! Seeding, before the server starts (not timed as reports): `--rows` ledger rows through a bulk
//! path (multi-row inserts in one transaction, written as the posting path would leave them,
//! balances included). `--layers` of them are receipts of 1,000 FIFO articles in one warehouse,
//! each a movement, a ledger row and an open layer of its balance, dated over the last 180
//! days; the rest are receipts and issues of 500 moving-average articles in 2 warehouses over
//! the last 120 days.
//!
//! Every timed report is one `POST /api/v1/reports` (`format: csv`), then `GET
//! /api/v1/reports/{id}` every 10 ms until it is `completed`, then `GET
//! /api/v1/reports/{id}/download` read to its last byte: the clock starts before the POST and
//! stops when the download's last byte is read. So each time covers the request, the job's
//! queueing and pickup, the report's queries, CSV formatting, the 1 MiB chunk inserts and
//! progress updates, completion, the polling's lag (at most 10 ms), and streaming the file back.
//!
//! Figures:
//! - `ledger_rows`, `seed_rows_per_sec`: the seeded ledger (`--rows`) and how fast it was
//!   written.
//! - `valuation_seconds`, `stock_balance_seconds`: the valuation and stock balance reports
//!   (1,000 balances), end to end.
//! - `ledger_csv_seconds`: the full ledger export (`type: ledger`, every row), end to end;
//!   `ledger_csv_rows_per_sec` is `ledger_rows` over it (target above 400,000 rows/s);
//!   `ledger_csv_bytes`: the size of the file downloaded (its rows are counted and checked).
//! - `ageing_seconds`: the ageing report over the whole database, end to end (target below
//!   5 s): `ageing_layers` (`--layers`) open FIFO layers, aged from their receipt dates, and the
//!   1,000 moving-average balances, whose articles' ledger (`--rows` less `--layers` rows) is
//!   replayed.
//! - `peak_rss_mb`: the process's peak resident set (`VmHWM` in `/proc/self/status`) at the end,
//!   server and benchmark together (target below 200 MB).

use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use crate::Figures;
use crate::jobs::Backend;
use crate::movements::{MovementsBenchError, fresh_database};
use malaka_server::Config;
use malaka_server::db::Database;
use malaka_server::db::DatabaseExt as _;

/// What to run.
#[derive(Debug, Clone)]
pub struct ReportsBench {
    /// Backend.
    pub backend: Backend,
    /// Database URL (a fresh database is made next to it).
    pub database_url: Option<String>,
    /// Ledger rows to seed.
    pub rows: usize,
    /// Open FIFO layers to seed for the ageing report.
    pub layers: usize,
}

const ARTICLES: usize = 500;
const WAREHOUSES: [&str; 2] = ["MAIN", "SIDE"];
const FIFO_ARTICLES: usize = 1000;
const PER_INSERT: usize = 500;
/// How often a report's state is polled.
const POLL: Duration = Duration::from_millis(10);

fn err(what: &str) -> impl Fn(String) -> MovementsBenchError + '_ {
    move |e| MovementsBenchError::Setup(format!("{what}: {e}"))
}

/// The process's peak resident set, in MB (Linux; 0 elsewhere).
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs the suite (see the module's docs for the figures).
///
/// # Errors
/// Setup or a report failed.
pub async fn reports_suite(b: &ReportsBench) -> Result<Figures, MovementsBenchError> {
    let fresh = fresh_database(b.backend, b.database_url.as_deref()).await?;
    let result = serve_and_measure(b, &fresh.config).await;
    fresh.remove().await;
    result
}

async fn serve_and_measure(
    b: &ReportsBench,
    config: &Config,
) -> Result<Figures, MovementsBenchError> {
    if b.layers > b.rows {
        return Err(err("--layers")(format!(
            "{} open layers need as many of the {} ledger rows",
            b.layers, b.rows
        )));
    }
    // Seeded before the server starts: one long write transaction would hold SQLite's write
    // lock past every other writer's busy timeout.
    let mut f = Figures::default();
    let db = Database::connect(&config.database_url(), &config.database)
        .await
        .map_err(|e| err("database")(e.to_string()))?;
    db.migrate()
        .await
        .map_err(|e| err("migrate")(e.to_string()))?;
    let t0 = Instant::now();
    seed(&db, b.rows - b.layers).await?;
    seed_layers(&db, b.layers).await?;
    f.push("ledger_rows", b.rows as f64);
    f.push(
        "seed_rows_per_sec",
        b.rows as f64 / t0.elapsed().as_secs_f64(),
    );
    db.close().await;
    crate::movements::with_server(config, |state, addr| async move {
        measure(b, &state, addr, f).await
    })
    .await
}

/// An HTTP client of the server under test.
struct Client {
    http: reqwest::Client,
    base: String,
    bearer: String,
}

/// What one timed report took and downloaded.
struct Timed {
    seconds: f64,
    bytes: u64,
    lines: u64,
}

impl Client {
    async fn json(&self, req: reqwest::RequestBuilder) -> Result<serde_json::Value, String> {
        let resp = req
            .header(reqwest::header::AUTHORIZATION, &self.bearer)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
    }

    /// Requests a `kind` report as CSV, waits for it and downloads it: the clock runs from the
    /// request to the download's last byte.
    async fn timed(&self, kind: &str) -> Result<Timed, MovementsBenchError> {
        let e = err(kind);
        let start = Instant::now();
        let r = self
            .json(
                self.http
                    .post(format!("{}/api/v1/reports", self.base))
                    .json(&serde_json::json!({"type": kind, "format": "csv"})),
            )
            .await
            .map_err(&e)?;
        let id = r["id"]
            .as_str()
            .ok_or_else(|| e(format!("no id in {r}")))?
            .to_owned();
        let download = loop {
            let r = self
                .json(self.http.get(format!("{}/api/v1/reports/{id}", self.base)))
                .await
                .map_err(&e)?;
            match r["state"].as_str() {
                Some("completed") => {
                    break r["download"]
                        .as_str()
                        .ok_or_else(|| e(format!("no download in {r}")))?
                        .to_owned();
                }
                Some("queued" | "running") => tokio::time::sleep(POLL).await,
                _ => return Err(e(format!("the report ended as {r}"))),
            }
        };
        let mut resp = self
            .http
            .get(format!("{}{download}", self.base))
            .header(reqwest::header::AUTHORIZATION, &self.bearer)
            .send()
            .await
            .map_err(|x| e(x.to_string()))?;
        if !resp.status().is_success() {
            return Err(e(format!("download: {}", resp.status())));
        }
        let (mut bytes, mut lines) = (0u64, 0u64);
        while let Some(chunk) = resp.chunk().await.map_err(|x| e(x.to_string()))? {
            bytes += chunk.len() as u64;
            lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        }
        Ok(Timed {
            seconds: start.elapsed().as_secs_f64(),
            bytes,
            lines,
        })
    }
}

async fn measure(
    b: &ReportsBench,
    state: &malaka_server::AppState,
    addr: std::net::SocketAddr,
    mut f: Figures,
) -> Result<Figures, MovementsBenchError> {
    let token = crate::movements::admin_token(state, "bench reports").await?;
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| err("HTTP client")(e.to_string()))?,
        base: format!("http://{addr}"),
        bearer: format!("Bearer {token}"),
    };
    for (kind, name) in [
        ("valuation", "valuation_seconds"),
        ("stock_balance", "stock_balance_seconds"),
    ] {
        let t = client.timed(kind).await?;
        f.push(name, t.seconds);
    }
    let t = client.timed("ledger").await?;
    // A header line, then one line per row (no totals row for the ledger).
    if t.lines != b.rows as u64 + 1 {
        return Err(err("ledger")(format!(
            "the export held {} lines for {} rows",
            t.lines, b.rows
        )));
    }
    f.push("ledger_csv_rows_per_sec", b.rows as f64 / t.seconds);
    f.push("ledger_csv_seconds", t.seconds);
    f.push("ledger_csv_bytes", t.bytes as f64);
    let t = client.timed("ageing").await?;
    // A header, a row per balance in stock (at least the FIFO ones), the totals.
    let fifo = FIFO_ARTICLES.min(b.layers) as u64;
    if t.lines < fifo + 2 {
        return Err(err("ageing")(format!(
            "the report held {} lines for {fifo} FIFO balances",
            t.lines
        )));
    }
    f.push("ageing_seconds", t.seconds);
    f.push("ageing_layers", b.layers as f64);
    f.push("peak_rss_mb", peak_rss_mb());
    Ok(f)
}

/// One balance being built.
#[derive(Clone, Copy, Default)]
struct Bal {
    qty: Decimal,
    value: Decimal,
}

fn text(d: Decimal) -> String {
    d.normalize().to_string()
}

/// `$i`, or `?` on SQLite: SQLite maps `$N` to its argument by name, a linear search per
/// parameter, and plain `?` keeps a 5,500-parameter insert linear.
fn placeholder(db: &Database) -> impl Fn(usize) -> String {
    let positional = matches!(db, Database::Sqlite(_));
    move |i| {
        if positional {
            "?".to_owned()
        } else {
            format!("${i}")
        }
    }
}

/// One movement with its one ledger row, as the bulk path writes them.
struct Row {
    id: String,
    kind: &'static str,
    sku: String,
    warehouse: &'static str,
    qty: String,
    cost: String,
    value_change: String,
    qty_after: String,
    value_after: String,
    rate_after: String,
    at: chrono::DateTime<chrono::Utc>,
}

/// The SQL of `n` movements and of their `n` ledger rows.
fn inserts(n: usize, ph: &dyn Fn(usize) -> String) -> (String, String) {
    let mut mv = String::from(
        "INSERT INTO inv_movements (id, kind, sku, warehouse, qty, unit_cost, posted_by, posted_at) VALUES ",
    );
    let mut lg = String::from(
        "INSERT INTO inv_ledger (movement_id, kind, sku, warehouse, qty_change, unit_cost, value_change, \
         qty_after, value_after, rate_after, reference, posted_by, posted_at) VALUES ",
    );
    let (mut p, mut q) = (1, 1);
    for i in 0..n {
        if i > 0 {
            mv.push(',');
            lg.push(',');
        }
        let c: Vec<String> = (p..p + 7).map(ph).collect();
        mv.push_str(&format!(
            "({}, {}, {}, {}, {}, {}, 'bench', {})",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6]
        ));
        p += 7;
        let c: Vec<String> = (q..q + 11).map(ph).collect();
        lg.push_str(&format!(
            "({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, 'seed', 'bench', {})",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]
        ));
        q += 11;
    }
    (mv, lg)
}

macro_rules! write_rows {
    ($tx:expr, $sql:expr, $vals:expr) => {{
        let (mv, lg) = $sql;
        let mut q = sqlx::query(sqlx::AssertSqlSafe(mv));
        for v in $vals {
            q = q
                .bind(&v.id)
                .bind(v.kind)
                .bind(&v.sku)
                .bind(v.warehouse)
                .bind(&v.qty)
                .bind(&v.cost)
                .bind(v.at);
        }
        q.execute(&mut *$tx).await?;
        let mut q = sqlx::query(sqlx::AssertSqlSafe(lg));
        for v in $vals {
            q = q
                .bind(&v.id)
                .bind(v.kind)
                .bind(&v.sku)
                .bind(v.warehouse)
                .bind(&v.qty)
                .bind(&v.cost)
                .bind(&v.value_change)
                .bind(&v.qty_after)
                .bind(&v.value_after)
                .bind(&v.rate_after)
                .bind(v.at);
        }
        q.execute(&mut *$tx).await?;
    }};
}

/// Writes the catalog, `rows` ledger rows (each its own movement) and the balances they leave,
/// in one transaction.
pub(crate) async fn seed(db: &Database, rows: usize) -> Result<(), MovementsBenchError> {
    let now = chrono::Utc::now();
    let start = now - chrono::Duration::days(120);
    let mut bal = vec![Bal::default(); ARTICLES * WAREHOUSES.len()];
    let keys = bal.len();
    let ph = placeholder(db);
    macro_rules! seed_in {
        ($pool:expr, $begin:literal) => {{
            let mut tx = $pool.begin_with($begin).await?;
            for w in WAREHOUSES {
                sqlx::query("INSERT INTO inv_warehouses (code, name, archived, created_at, updated_at) VALUES ($1, $2, FALSE, $3, $3)")
                    .bind(w).bind(w).bind(now).execute(&mut *tx).await?;
            }
            for a in 0..ARTICLES {
                sqlx::query("INSERT INTO inv_articles (sku, name, unit, valuation, min_qty, reorder_qty, allow_negative, archived, created_at, updated_at) \
                             VALUES ($1, $2, 'pcs', 'moving_average', '20', '50', FALSE, FALSE, $3, $3)")
                    .bind(format!("SKU-{a:04}")).bind(format!("Article {a}")).bind(now)
                    .execute(&mut *tx).await?;
            }
            let mut done = 0;
            while done < rows {
                let n = PER_INSERT.min(rows - done);
                let mut vals: Vec<Row> = Vec::with_capacity(n);
                for i in 0..n {
                    let r = done + i;
                    let k = r % keys;
                    let (sku, wh) = (format!("SKU-{:04}", k / WAREHOUSES.len()), WAREHOUSES[k % WAREHOUSES.len()]);
                    let b = &mut bal[k];
                    let receipt = (r / keys) % 2 == 0;
                    let rate = if b.qty.is_zero() { Decimal::ZERO } else { b.value / b.qty };
                    let (kind, q, cost, dv) = if receipt {
                        let cost = Decimal::new(100 + i64::try_from(r % 50).unwrap_or(0), 2);
                        ("receipt", Decimal::from(10), cost, cost * Decimal::from(10))
                    } else {
                        let dv = (rate * Decimal::from(5)).round_dp(6);
                        ("issue", Decimal::from(-5), rate.round_dp(6), -dv)
                    };
                    b.qty += q;
                    b.value += dv;
                    let after_rate = if b.qty.is_zero() { Decimal::ZERO } else { (b.value / b.qty).round_dp(6) };
                    let at = start + chrono::Duration::seconds(i64::try_from(r).unwrap_or(0) * 10_368_000 / i64::try_from(rows.max(1)).unwrap_or(1));
                    vals.push(Row {
                        id: uuid::Uuid::now_v7().to_string(), kind, sku, warehouse: wh, qty: text(q), cost: text(cost),
                        value_change: text(dv), qty_after: text(b.qty), value_after: text(b.value), rate_after: text(after_rate), at,
                    });
                }
                write_rows!(tx, inserts(n, &ph), &vals);
                done += n;
            }
            for (k, b) in bal.iter().enumerate() {
                let level = malaka_inventory::AlertLevel::of(b.qty, Decimal::from(20));
                let rate = if b.qty.is_zero() { Decimal::ZERO } else { (b.value / b.qty).round_dp(6) };
                sqlx::query("INSERT INTO inv_balances (sku, warehouse, qty, value, rate, layer_seq, level, updated_at) VALUES ($1, $2, $3, $4, $5, 0, $6, $7)")
                    .bind(format!("SKU-{:04}", k / WAREHOUSES.len())).bind(WAREHOUSES[k % WAREHOUSES.len()])
                    .bind(text(b.qty)).bind(text(b.value)).bind(text(rate)).bind(level.as_str()).bind(now)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }};
    }
    match db {
        Database::Sqlite(pool) => seed_in!(pool, "BEGIN IMMEDIATE"),
        Database::Postgres(pool) => seed_in!(pool, "BEGIN"),
    }
    Ok(())
}

/// Writes `layers` receipts of FIFO articles in MAIN (each a movement, a ledger row and an open
/// layer of its balance, dated over the last 180 days, oldest first) and their balances, in
/// one transaction.
async fn seed_layers(db: &Database, layers: usize) -> Result<(), MovementsBenchError> {
    if layers == 0 {
        return Ok(());
    }
    let now = chrono::Utc::now();
    let start = now - chrono::Duration::days(180);
    let articles = FIFO_ARTICLES.min(layers);
    let per = layers.div_ceil(articles);
    let ph = placeholder(db);
    let mut bal = vec![Bal::default(); articles];
    let mut open: Vec<Vec<malaka_inventory::Layer>> = vec![Vec::with_capacity(per); articles];
    let sku = |a: usize| format!("FIFO-{a:04}");
    macro_rules! seed_in {
        ($pool:expr, $begin:literal) => {{
            let mut tx = $pool.begin_with($begin).await?;
            for a in 0..articles {
                sqlx::query("INSERT INTO inv_articles (sku, name, unit, valuation, min_qty, reorder_qty, allow_negative, archived, created_at, updated_at) \
                             VALUES ($1, $2, 'pcs', 'fifo', '20', '50', FALSE, FALSE, $3, $3)")
                    .bind(sku(a)).bind(format!("FIFO article {a}")).bind(now)
                    .execute(&mut *tx).await?;
            }
            let mut done = 0;
            while done < layers {
                let n = PER_INSERT.min(layers - done);
                let mut vals: Vec<Row> = Vec::with_capacity(n);
                for i in 0..n {
                    // Round after round of one receipt per article, oldest first.
                    let r = done + i;
                    let a = r % articles;
                    let b = &mut bal[a];
                    let q = Decimal::from(10);
                    let cost = Decimal::new(100 + i64::try_from(r % 50).unwrap_or(0), 2);
                    let dv = cost * q;
                    b.qty += q;
                    b.value += dv;
                    let at = start + chrono::Duration::seconds(i64::try_from(r).unwrap_or(0) * 15_552_000 / i64::try_from(layers.max(1)).unwrap_or(1));
                    open[a].push(malaka_inventory::Layer::new(q, cost, Some(at)));
                    vals.push(Row {
                        id: uuid::Uuid::now_v7().to_string(), kind: "receipt", sku: sku(a), warehouse: "MAIN", qty: text(q), cost: text(cost),
                        value_change: text(dv), qty_after: text(b.qty), value_after: text(b.value),
                        rate_after: text((b.value / b.qty).round_dp(6)), at,
                    });
                }
                write_rows!(tx, inserts(n, &ph), &vals);
                done += n;
            }
            for (a, b) in bal.iter().enumerate() {
                if b.qty.is_zero() {
                    continue;
                }
                let level = malaka_inventory::AlertLevel::of(b.qty, Decimal::from(20));
                sqlx::query("INSERT INTO inv_balances (sku, warehouse, qty, value, rate, layer_seq, level, updated_at) VALUES ($1, 'MAIN', $2, $3, $4, $5, $6, $7)")
                    .bind(sku(a)).bind(text(b.qty)).bind(text(b.value)).bind(text((b.value / b.qty).round_dp(6)))
                    .bind(i64::try_from(open[a].len()).unwrap_or(i64::MAX)).bind(level.as_str()).bind(now)
                    .execute(&mut *tx).await?;
                // Its open layers, oldest first (as rows: `inv_layers`).
                let numbered: Vec<(i64, &malaka_inventory::Layer)> = open[a].iter().enumerate().map(|(i, l)| (i64::try_from(i).unwrap_or(i64::MAX), l)).collect();
                for chunk in numbered.chunks(PER_INSERT) {
                    let mut q = sqlx::QueryBuilder::new("INSERT INTO inv_layers (sku, warehouse, seq, qty, rate, received_at, ledger_id) ");
                    q.push_values(chunk, |mut r, (seq, l)| {
                        r.push_bind(sku(a)).push_bind("MAIN").push_bind(*seq).push_bind(text(l.qty)).push_bind(text(l.rate)).push_bind(l.received_at).push_bind(None::<i64>);
                    });
                    q.build().execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
        }};
    }
    match db {
        Database::Sqlite(pool) => seed_in!(pool, "BEGIN IMMEDIATE"),
        Database::Postgres(pool) => seed_in!(pool, "BEGIN"),
    }
    Ok(())
}
