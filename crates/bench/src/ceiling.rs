//! The ceiling of `bench movements`: what the database alone allows. The rows a posting writes
//! (its movement row, its ledger rows, the balances it touched, one outbox row, and per group
//! the balance generation bump on SQLite) for movements precomputed before the clock starts,
//! written with prepared statements on one connection in transactions of the committer's group
//! size (64, at the configured durability: on SQLite `synchronous = full`, one fsync a
//! commit). No HTTP, no JSON parsing, no valuation, no locking reads: the best a competent
//! engineer could hand-write for the same durable effect, and so the upper bound Malaka's
//! posting path is compared with (`ratio_to_ceiling`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use malaka_server::db::Database;

/// Movements per transaction: the SQLite committer's largest group.
pub const GROUP: usize = 64;

/// One precomputed movement: its rows as the posting path would write them.
#[derive(Debug, Clone)]
pub(crate) struct Rows {
    id: String,
    kind: &'static str,
    sku: String,
    warehouse: &'static str,
    to_warehouse: Option<&'static str>,
    qty: String,
    unit_cost: Option<String>,
    reference: String,
    /// (warehouse, qty change, unit cost, value change, qty after, value after, rate after).
    ledger: Vec<LedgerRow>,
    outbox: String,
}

#[derive(Debug, Clone)]
struct LedgerRow {
    warehouse: &'static str,
    qty_change: String,
    unit_cost: String,
    value_change: String,
    qty_after: String,
    value_after: String,
    rate_after: String,
}

/// A movement to precompute: kind, article, warehouse, destination, quantity, unit cost.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// `receipt`, `issue` or `transfer`.
    pub kind: &'static str,
    /// Article.
    pub sku: String,
    /// Warehouse.
    pub warehouse: &'static str,
    /// A transfer's destination.
    pub to_warehouse: Option<&'static str>,
    /// Units.
    pub qty: i64,
    /// A receipt's unit cost, in cents.
    pub unit_cost: Option<i64>,
    /// Reference.
    pub reference: String,
}

/// Running (qty, value) per balance, for the `*_after` columns.
#[derive(Debug, Default)]
pub(crate) struct Books(HashMap<(String, &'static str), (Decimal, Decimal)>);

impl Books {
    /// Starts every (article, warehouse) at `qty` units worth `rate` each.
    pub(crate) fn open(
        &mut self,
        skus: &[String],
        warehouses: &[&'static str],
        qty: i64,
        rate: Decimal,
    ) {
        for s in skus {
            for w in warehouses {
                let q = Decimal::from(qty);
                self.0.insert((s.clone(), *w), (q, q * rate));
            }
        }
    }

    fn change(
        &mut self,
        sku: &str,
        wh: &'static str,
        dq: Decimal,
        cost: Option<Decimal>,
    ) -> LedgerRow {
        let e = self.0.entry((sku.to_owned(), wh)).or_default();
        let rate = if e.0.is_zero() {
            Decimal::ZERO
        } else {
            e.1 / e.0
        };
        let unit = cost.unwrap_or(rate).round_dp(6);
        let dv = (dq * unit).round_dp(6);
        e.0 += dq;
        e.1 += dv;
        let rate_after = if e.0.is_zero() {
            Decimal::ZERO
        } else {
            (e.1 / e.0).round_dp(6)
        };
        LedgerRow {
            warehouse: wh,
            qty_change: dq.to_string(),
            unit_cost: unit.to_string(),
            value_change: dv.to_string(),
            qty_after: e.0.to_string(),
            value_after: e.1.to_string(),
            rate_after: rate_after.to_string(),
        }
    }

    /// The rows of `s`.
    pub(crate) fn rows(&mut self, s: &Spec) -> Rows {
        let qty = Decimal::from(s.qty);
        let cost = s.unit_cost.map(|c| Decimal::new(c, 2));
        let ledger = match s.kind {
            "receipt" => vec![self.change(&s.sku, s.warehouse, qty, cost)],
            "issue" => vec![self.change(&s.sku, s.warehouse, -qty, None)],
            _ => {
                let out = self.change(&s.sku, s.warehouse, -qty, None);
                let unit: Decimal = out.unit_cost.parse().unwrap_or_default();
                let to = s.to_warehouse.unwrap_or(s.warehouse);
                vec![out, self.change(&s.sku, to, qty, Some(unit))]
            }
        };
        let id = uuid::Uuid::now_v7().to_string();
        let outbox = serde_json::json!({
            "movement_id": id, "type": s.kind, "sku": s.sku, "warehouse": s.warehouse,
            "to_warehouse": s.to_warehouse, "qty": qty.to_string(), "reference": s.reference,
            "note": null, "by": "bench", "at": chrono::Utc::now(),
            "rows": ledger.iter().map(|r| serde_json::json!({
                "ledger_id": null, "warehouse": r.warehouse, "qty_change": r.qty_change,
                "value_change": r.value_change, "qty_after": r.qty_after, "value_after": r.value_after,
            })).collect::<Vec<_>>(),
        })
        .to_string();
        Rows {
            id,
            kind: s.kind,
            sku: s.sku.clone(),
            warehouse: s.warehouse,
            to_warehouse: s.to_warehouse,
            qty: qty.to_string(),
            unit_cost: cost.map(|c| c.to_string()),
            reference: s.reference.clone(),
            ledger,
            outbox,
        }
    }
}

const MOVEMENT: &str = "INSERT INTO inv_movements (id, kind, sku, warehouse, to_warehouse, qty, \
                        unit_cost, reference, note, posted_by, posted_at) \
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, 'bench', $9)";
const LEDGER: &str = "INSERT INTO inv_ledger (movement_id, kind, sku, warehouse, qty_change, \
                      unit_cost, value_change, qty_after, value_after, rate_after, reference, \
                      posted_by, posted_at) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'bench', $12)";
const BALANCE: &str = "INSERT INTO inv_balances (sku, warehouse, qty, value, rate, layer_seq, level, updated_at) \
                       VALUES ($1, $2, $3, $4, $5, 0, 'NORMAL', $6) \
                       ON CONFLICT (sku, warehouse) DO UPDATE SET qty = excluded.qty, \
                       value = excluded.value, rate = excluded.rate, updated_at = excluded.updated_at";
const OUTBOX: &str =
    "INSERT INTO malaka_outbox (topic, payload, created_at) VALUES ('movement.posted', $1, $2)";
const GENERATION: &str = "UPDATE inv_generation SET n = n + 1 WHERE id = 1";

macro_rules! write_group {
    ($tx:expr, $group:expr, $now:expr, $sqlite:expr) => {{
        let mut touched: HashMap<(&str, &str), &LedgerRow> = HashMap::new();
        for r in $group {
            sqlx::query(MOVEMENT)
                .bind(&r.id)
                .bind(r.kind)
                .bind(&r.sku)
                .bind(r.warehouse)
                .bind(r.to_warehouse)
                .bind(&r.qty)
                .bind(r.unit_cost.as_deref())
                .bind(&r.reference)
                .bind($now)
                .execute(&mut *$tx)
                .await?;
            for l in &r.ledger {
                sqlx::query(LEDGER)
                    .bind(&r.id)
                    .bind(r.kind)
                    .bind(&r.sku)
                    .bind(l.warehouse)
                    .bind(&l.qty_change)
                    .bind(&l.unit_cost)
                    .bind(&l.value_change)
                    .bind(&l.qty_after)
                    .bind(&l.value_after)
                    .bind(&l.rate_after)
                    .bind(&r.reference)
                    .bind($now)
                    .execute(&mut *$tx)
                    .await?;
                touched.insert((r.sku.as_str(), l.warehouse), l);
            }
        }
        if $sqlite {
            sqlx::query(GENERATION).execute(&mut *$tx).await?;
        }
        for ((sku, wh), l) in touched {
            sqlx::query(BALANCE)
                .bind(sku)
                .bind(wh)
                .bind(&l.qty_after)
                .bind(&l.value_after)
                .bind(&l.rate_after)
                .bind($now)
                .execute(&mut *$tx)
                .await?;
        }
        for r in $group {
            sqlx::query(OUTBOX)
                .bind(&r.outbox)
                .bind($now)
                .execute(&mut *$tx)
                .await?;
        }
    }};
}

/// Writes `rows` in transactions of [`GROUP`] on one connection of `db` (whose catalog must
/// hold their articles and warehouses); how long it took.
///
/// # Errors
/// A database error.
pub(crate) async fn write(db: &Database, rows: &[Rows]) -> Result<Duration, sqlx::Error> {
    let now = chrono::Utc::now();
    let start = Instant::now();
    match db {
        Database::Sqlite(pool) => {
            let mut conn = pool.acquire().await?;
            for group in rows.chunks(GROUP) {
                let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
                write_group!(tx, group, now, true);
                tx.commit().await?;
            }
        }
        Database::Postgres(pool) => {
            let mut conn = pool.acquire().await?;
            for group in rows.chunks(GROUP) {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                write_group!(tx, group, now, false);
                tx.commit().await?;
            }
        }
    }
    Ok(start.elapsed())
}
