//! `malaka bench reports`: seeds a ledger of N rows (500 articles in 2 warehouses, receipts and
//! issues at moving average) through a bulk path (multi-row inserts in one transaction, written
//! as the posting path would leave them), then times the valuation and stock balance reports and
//! a full ledger export to CSV through the same code the report jobs run, and reads the
//! process's peak resident memory.

use std::time::Instant;

use rust_decimal::Decimal;

use crate::bench::Figures;
use crate::bench_jobs::Backend;
use crate::bench_movements::{MovementsBenchError, drop_database, fresh_database};
use crate::db::Database;
use crate::reports::{Format, Reports, StoredParams};

/// What to run.
#[derive(Debug, Clone)]
pub struct ReportsBench {
    /// Backend.
    pub backend: Backend,
    /// Database URL (a fresh database is made next to it).
    pub database_url: Option<String>,
    /// Ledger rows to seed.
    pub rows: usize,
}

const ARTICLES: usize = 500;
const WAREHOUSES: [&str; 2] = ["MAIN", "SIDE"];
const PER_INSERT: usize = 500;

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

/// Runs the suite: `valuation_seconds`, `stock_balance_seconds`, `ledger_csv_rows_per_sec`,
/// `ledger_rows`, `seed_rows_per_sec`, `peak_rss_mb`.
///
/// # Errors
/// Setup or a report failed.
pub async fn reports_suite(b: &ReportsBench) -> Result<Figures, MovementsBenchError> {
    let fresh = fresh_database(b.backend, b.database_url.as_deref()).await?;
    let result = run(b, &fresh.config).await;
    if let Some((admin, name)) = &fresh.pg {
        drop_database(admin, name).await;
    }
    result
}

async fn run(b: &ReportsBench, config: &crate::Config) -> Result<Figures, MovementsBenchError> {
    let db = Database::connect(&config.database_url(), &config.database)
        .await
        .map_err(|e| err("database")(e.to_string()))?;
    db.migrate()
        .await
        .map_err(|e| err("migrate")(e.to_string()))?;
    let t0 = Instant::now();
    seed(&db, b.rows).await?;
    let seeded = t0.elapsed();
    let mut f = Figures::default();
    f.push("ledger_rows", b.rows as f64);
    f.push("seed_rows_per_sec", b.rows as f64 / seeded.as_secs_f64());
    let reports = Reports::new(
        db.clone(),
        db.inventory(),
        std::time::Duration::from_secs(60),
    );
    let params = StoredParams::default();
    let quiet = |_: u64, _: u64| {};
    for (kind, name) in [
        (malaka_inventory::ReportKind::Valuation, "valuation_seconds"),
        (
            malaka_inventory::ReportKind::StockBalance,
            "stock_balance_seconds",
        ),
    ] {
        let t = Instant::now();
        let mut out = std::io::sink();
        reports
            .run_to(kind, &params, Format::Csv, &mut out, &quiet)
            .await
            .map_err(|e| err(name)(e.to_string()))?;
        f.push(name, t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    let mut out = std::io::sink();
    let s = reports
        .run_to(
            malaka_inventory::ReportKind::Ledger,
            &params,
            Format::Csv,
            &mut out,
            &quiet,
        )
        .await
        .map_err(|e| err("ledger")(e.to_string()))?;
    let took = t.elapsed();
    if s.rows != b.rows as u64 {
        return Err(MovementsBenchError::Setup(format!(
            "the ledger export wrote {} of {} rows",
            s.rows, b.rows
        )));
    }
    f.push(
        "ledger_csv_rows_per_sec",
        s.rows as f64 / took.as_secs_f64(),
    );
    f.push("ledger_csv_seconds", took.as_secs_f64());
    f.push("peak_rss_mb", peak_rss_mb());
    db.close().await;
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

/// Writes the catalog, `rows` ledger rows (each its own movement) and the balances they leave,
/// in one transaction.
async fn seed(db: &Database, rows: usize) -> Result<(), MovementsBenchError> {
    let now = chrono::Utc::now();
    let start = now - chrono::Duration::days(120);
    let mut bal = vec![Bal::default(); ARTICLES * WAREHOUSES.len()];
    let keys = bal.len();
    // SQLite maps `$N` to its argument by name, a linear search per parameter: plain `?` keeps
    // a 5,500-parameter insert linear.
    let positional = matches!(db, Database::Sqlite(_));
    let ph = |i: usize| {
        if positional {
            "?".to_owned()
        } else {
            format!("${i}")
        }
    };
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
                let mut mv = String::from("INSERT INTO inv_movements (id, kind, sku, warehouse, qty, unit_cost, posted_by, posted_at) VALUES ");
                let mut lg = String::from("INSERT INTO inv_ledger (movement_id, kind, sku, warehouse, qty_change, unit_cost, value_change, qty_after, value_after, rate_after, reference, posted_by, posted_at) VALUES ");
                let mut vals: Vec<(String, &'static str, String, &'static str, String, String, String, String, String, String, chrono::DateTime<chrono::Utc>)> = Vec::with_capacity(n);
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
                    vals.push((uuid::Uuid::now_v7().to_string(), kind, sku, wh, text(q), text(cost), text(dv), text(b.qty), text(b.value), text(after_rate), at));
                }
                let mut p = 1;
                for i in 0..n {
                    if i > 0 { mv.push(','); }
                    mv.push_str(&format!("({}, {}, {}, {}, {}, {}, 'bench', {})", ph(p), ph(p + 1), ph(p + 2), ph(p + 3), ph(p + 4), ph(p + 5), ph(p + 6)));
                    p += 7;
                }
                let mut q = sqlx::query(sqlx::AssertSqlSafe(mv));
                for v in &vals {
                    q = q.bind(&v.0).bind(v.1).bind(&v.2).bind(v.3).bind(&v.4).bind(&v.5).bind(v.10);
                }
                q.execute(&mut *tx).await?;
                let mut p = 1;
                for i in 0..n {
                    if i > 0 { lg.push(','); }
                    let cells: Vec<String> = (p..p + 11).map(ph).collect();
                    lg.push_str(&format!("({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, 'seed', 'bench', {})",
                        cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7], cells[8], cells[9], cells[10]));
                    p += 11;
                }
                let mut q = sqlx::query(sqlx::AssertSqlSafe(lg));
                for v in &vals {
                    q = q.bind(&v.0).bind(v.1).bind(&v.2).bind(v.3).bind(&v.4).bind(&v.5).bind(&v.6)
                        .bind(&v.7).bind(&v.8).bind(&v.9).bind(v.10);
                }
                q.execute(&mut *tx).await?;
                done += n;
            }
            for (k, b) in bal.iter().enumerate() {
                let level = malaka_inventory::AlertLevel::of(b.qty, Decimal::from(20));
                let rate = if b.qty.is_zero() { Decimal::ZERO } else { (b.value / b.qty).round_dp(6) };
                sqlx::query("INSERT INTO inv_balances (sku, warehouse, qty, value, rate, layers, level, updated_at) VALUES ($1, $2, $3, $4, $5, '[]', $6, $7)")
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
