//! Reports an accountant needs: stock balance, ledger, valuation, low stock and ageing. Each
//! reads one consistent snapshot (one read transaction) and streams its rows to a
//! [`ReportSink`] in batches, so memory stays bounded however long the ledger is.
//!
//! Ageing ages what is in stock, from the date its goods were received: a FIFO balance by its
//! open layers (each carries its receipt date; a transfer keeps it, a count gain is a new layer
//! dated at the count), a moving-average one (no layers) by replaying the article's ledger under
//! a FIFO assumption with the same rules (see `replay`), valued at the average rate.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::error::InventoryError;
use crate::inventory::Inventory;
use crate::storage::{dec, text};
use crate::types::{Layer, Sku, ValuationMethod, WarehouseCode};

/// Rows handed to the sink at a time.
pub(crate) const BATCH: usize = 1000;

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// Per article and warehouse, now: qty, rate, value, level; total value.
    StockBalance,
    /// Ledger rows between two times, with the running quantity and value.
    Ledger,
    /// Per article and warehouse: method, qty, rate, value; the grand total.
    Valuation,
    /// Every balance below NORMAL with a suggested order quantity.
    LowStock,
    /// Stock in hand by days since its goods were received: 0-30, 31-60, 61-90, over 90 days
    /// (a transfer keeps the receipt's date, a count gain is new).
    Ageing,
}

impl ReportKind {
    /// Every kind.
    pub const ALL: [Self; 5] = [
        Self::StockBalance,
        Self::Ledger,
        Self::Valuation,
        Self::LowStock,
        Self::Ageing,
    ];

    /// The name (`stock_balance`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StockBalance => "stock_balance",
            Self::Ledger => "ledger",
            Self::Valuation => "valuation",
            Self::LowStock => "low_stock",
            Self::Ageing => "ageing",
        }
    }

    /// The columns of its rows.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Self::StockBalance => &[
                "sku",
                "name",
                "warehouse",
                "qty",
                "rate",
                "value",
                "min_qty",
                "level",
            ],
            Self::Ledger => &[
                "id",
                "posted_at",
                "movement_id",
                "type",
                "sku",
                "warehouse",
                "qty_change",
                "unit_cost",
                "value_change",
                "running_qty",
                "running_value",
                "reference",
                "posted_by",
            ],
            Self::Valuation => &["sku", "name", "warehouse", "method", "qty", "rate", "value"],
            Self::LowStock => &[
                "sku",
                "name",
                "warehouse",
                "qty",
                "min_qty",
                "reorder_qty",
                "level",
                "suggested_order_qty",
            ],
            Self::Ageing => &[
                "sku",
                "warehouse",
                "method",
                "qty",
                "value",
                "qty_0_30",
                "qty_31_60",
                "qty_61_90",
                "qty_over_90",
                "value_0_30",
                "value_31_60",
                "value_61_90",
                "value_over_90",
            ],
        }
    }
}

impl FromStr for ReportKind {
    type Err = InventoryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                InventoryError::invalid(
                    "type",
                    format!(
                        "unknown report type {s:?}: use stock_balance, ledger, valuation, low_stock or ageing"
                    ),
                )
            })
    }
}

/// What a report covers; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportParams {
    /// One article.
    pub sku: Option<Sku>,
    /// One warehouse.
    pub warehouse: Option<WarehouseCode>,
    /// Ledger rows posted at or after.
    pub from: Option<DateTime<Utc>>,
    /// Ledger rows posted before.
    pub to: Option<DateTime<Utc>>,
}

/// What a report found besides its rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReportSummary {
    /// Rows written.
    pub rows: u64,
    /// Named totals (`total_value`, ...), as decimals in text.
    pub totals: BTreeMap<String, String>,
    /// Things the reader should know (how ageing treats moving-average articles).
    pub notes: Vec<String>,
    /// The moment the report's snapshot shows.
    pub as_of: DateTime<Utc>,
}

/// Where a report's rows go.
#[async_trait::async_trait]
pub trait ReportSink: Send {
    /// A batch of rows: their cells as text, row after row, each row as many cells as
    /// [`ReportKind::columns`] has, in that order.
    ///
    /// # Errors
    /// The sink failed or was cancelled: the report stops.
    async fn rows(&mut self, cells: &[&str]) -> Result<(), InventoryError>;
    /// How far along the report is.
    ///
    /// # Errors
    /// As for [`Self::rows`].
    async fn progress(&mut self, done: u64, total: u64) -> Result<(), InventoryError>;
}

/// Rows collected for the sink, flushed every [`BATCH`].
struct Batcher<'a> {
    sink: &'a mut dyn ReportSink,
    cells: Vec<String>,
    width: usize,
    done: u64,
    total: u64,
}

impl<'a> Batcher<'a> {
    fn new(sink: &'a mut dyn ReportSink, width: usize, total: u64) -> Self {
        Self {
            sink,
            cells: Vec::with_capacity(BATCH * width),
            width,
            done: 0,
            total,
        }
    }

    async fn push(&mut self, row: Vec<String>) -> Result<(), InventoryError> {
        debug_assert_eq!(row.len(), self.width);
        self.cells.extend(row);
        self.done += 1;
        if self.cells.len() >= BATCH * self.width {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), InventoryError> {
        if !self.cells.is_empty() {
            let cells: Vec<&str> = self.cells.iter().map(String::as_str).collect();
            self.sink.rows(&cells).await?;
            drop(cells);
            self.cells.clear();
            self.sink
                .progress(self.done, self.total.max(self.done))
                .await?;
        }
        Ok(())
    }

    /// Hands on rows packed by the database: rows separated by U+001E, cells by U+001F (text
    /// fields cannot hold control characters, so neither occurs in the data).
    async fn packed(&mut self, packed: &str, rows: u64) -> Result<(), InventoryError> {
        let mut cells: Vec<&str> = Vec::with_capacity(BATCH * self.width);
        for line in packed.split('\u{1e}') {
            cells.extend(line.split('\u{1f}'));
        }
        if cells.len() != rows as usize * self.width {
            return Err(InventoryError::Corrupt(format!(
                "a packed batch of {rows} rows held {} cells",
                cells.len()
            )));
        }
        // SQLite keeps the time as it was written (`+00:00`); both backends show `Z`.
        let fixed: Vec<String>;
        let cells: Vec<&str> = if cells
            .iter()
            .skip(1)
            .step_by(self.width)
            .any(|c| c.ends_with("+00:00"))
        {
            fixed = cells
                .iter()
                .skip(1)
                .step_by(self.width)
                .map(|c| format!("{}Z", c.trim_end_matches("+00:00")))
                .collect();
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i % self.width == 1 {
                        fixed[i / self.width].as_str()
                    } else {
                        c
                    }
                })
                .collect()
        } else {
            cells
        };
        self.sink.rows(&cells).await?;
        self.done += rows;
        self.sink
            .progress(self.done, self.total.max(self.done))
            .await
    }
}

/// The age buckets, in days: 0-30, 31-60, 61-90, over 90.
fn bucket(age_days: i64) -> usize {
    match age_days {
        ..=30 => 0,
        31..=60 => 1,
        61..=90 => 2,
        _ => 3,
    }
}

/// Splits `qty` in stock over the receipts it came from (newest first, as FIFO consumes the
/// oldest): quantities and values per age bucket. Each receipt is (qty, unit cost, posted at);
/// `rate` values the moving-average ones (`None`: FIFO, at each receipt's own cost).
fn age(
    qty: Decimal,
    receipts: &[(Decimal, Decimal, DateTime<Utc>)],
    rate: Option<Decimal>,
    now: DateTime<Utc>,
) -> Result<([Decimal; 4], [Decimal; 4]), InventoryError> {
    let mut q = [Decimal::ZERO; 4];
    let mut v = [Decimal::ZERO; 4];
    let mut left = qty;
    for (rq, cost, at) in receipts {
        if left <= Decimal::ZERO {
            break;
        }
        let take = (*rq).min(left);
        left = minus(left, take)?;
        let b = bucket((now - *at).num_days());
        plus(&mut q[b], take)?;
        plus(&mut v[b], times(take, rate.unwrap_or(*cost))?)?;
    }
    // Stock the receipts do not explain (negative stock allowed earlier, say): the oldest bucket.
    if left > Decimal::ZERO {
        plus(&mut q[3], left)?;
        plus(&mut v[3], times(left, rate.unwrap_or(Decimal::ZERO))?)?;
    }
    Ok((q, v))
}

/// One ledger row as the replay reads it.
struct Step {
    transfer: bool,
    warehouse: String,
    qty: Decimal,
    at: DateTime<Utc>,
    /// The movement, for a transfer (its two rows meet by it).
    movement: String,
}

/// One warehouse's stock as the replay finds it: dated quantities, oldest first, and what was
/// issued ahead of stock (covered by the next goods in).
#[derive(Debug, Default, PartialEq, Eq)]
struct Slots {
    slots: std::collections::VecDeque<(Decimal, DateTime<Utc>)>,
    short: Decimal,
}

impl Slots {
    fn put(&mut self, qty: Decimal, at: DateTime<Utc>) -> Result<(), InventoryError> {
        let cover = self.short.min(qty);
        self.short = minus(self.short, cover)?;
        let rest = minus(qty, cover)?;
        if rest > Decimal::ZERO {
            self.slots.push_back((rest, at));
        }
        Ok(())
    }

    /// Takes `qty`, oldest first; what was not there is dated `at`.
    fn take(
        &mut self,
        qty: Decimal,
        at: DateTime<Utc>,
    ) -> Result<Vec<(Decimal, DateTime<Utc>)>, InventoryError> {
        let mut want = qty;
        let mut taken = Vec::new();
        while want > Decimal::ZERO {
            let Some(front) = self.slots.front_mut() else {
                break;
            };
            let t = want.min(front.0);
            taken.push((t, front.1));
            front.0 = minus(front.0, t)?;
            want = minus(want, t)?;
            if front.0.is_zero() {
                self.slots.pop_front();
            }
        }
        if want > Decimal::ZERO {
            plus(&mut self.short, want)?;
            taken.push((want, at));
        }
        Ok(taken)
    }
}

/// Replays one article's ledger (in posting order) under a FIFO assumption: receipts and count
/// gains add stock dated at their posting, issues and count losses take the oldest, a transfer
/// moves what it took, with its dates, to the destination. The stock of each warehouse.
fn replay(steps: Vec<Step>) -> Result<BTreeMap<String, Slots>, InventoryError> {
    let mut by_wh: BTreeMap<String, Slots> = BTreeMap::new();
    let mut moving: BTreeMap<String, Vec<(Decimal, DateTime<Utc>)>> = BTreeMap::new();
    for s in steps {
        let q = by_wh.entry(s.warehouse).or_default();
        if s.qty < Decimal::ZERO {
            let taken = q.take(-s.qty, s.at)?;
            if s.transfer {
                moving.insert(s.movement, taken);
            }
        } else if s.qty > Decimal::ZERO {
            let mut left = s.qty;
            if s.transfer
                && let Some(carried) = moving.remove(&s.movement)
            {
                for (cq, cat) in carried {
                    let t = cq.min(left);
                    if t > Decimal::ZERO {
                        q.put(t, cat)?;
                        left = minus(left, t)?;
                    }
                }
            }
            if left > Decimal::ZERO {
                q.put(left, s.at)?;
            }
        }
    }
    Ok(by_wh)
}

fn overflow() -> InventoryError {
    InventoryError::OutOfRange {
        field: "total".to_owned(),
        message: "a report total is beyond what can be computed".to_owned(),
    }
}

/// `*total += x`, checked.
fn plus(total: &mut Decimal, x: Decimal) -> Result<(), InventoryError> {
    *total = total.checked_add(x).ok_or_else(overflow)?;
    Ok(())
}

fn minus(a: Decimal, b: Decimal) -> Result<Decimal, InventoryError> {
    a.checked_sub(b).ok_or_else(overflow)
}

fn times(a: Decimal, b: Decimal) -> Result<Decimal, InventoryError> {
    a.checked_mul(b).ok_or_else(overflow)
}

macro_rules! backend {
    ($module:ident, $pool:ty, begin = $begin:literal, agg = $agg:literal, line = $line:literal, stream = $stream:literal, layers = $layers:expr) => {
        mod $module {
            use super::*;

            pub(super) async fn run(
                pool: &$pool,
                kind: ReportKind,
                p: &ReportParams,
                sink: &mut dyn ReportSink,
            ) -> Result<ReportSummary, InventoryError> {
                let mut tx = pool.begin_with($begin).await?;
                // The snapshot starts with the first read: its time is the report's.
                let as_of = Utc::now();
                let sku = p.sku.as_ref().map(Sku::as_str);
                let wh = p.warehouse.as_ref().map(WarehouseCode::as_str);
                let mut s = ReportSummary {
                    as_of,
                    ..ReportSummary::default()
                };
                match kind {
                    ReportKind::Ledger => {
                        let total: i64 = sqlx::query_scalar(
                            "SELECT COUNT(*) FROM inv_ledger WHERE ($1 IS NULL OR sku = $1) \
                             AND ($2 IS NULL OR warehouse = $2) AND ($3 IS NULL OR posted_at >= $3) \
                             AND ($4 IS NULL OR posted_at < $4)",
                        )
                        .bind(sku)
                        .bind(wh)
                        .bind(p.from)
                        .bind(p.to)
                        .fetch_one(&mut *tx)
                        .await?;
                        let width = kind.columns().len();
                        let mut out = Batcher::new(sink, width, u64::try_from(total).unwrap_or(0));
                        if $stream {
                            // One query, its rows (each packed into one text by the database)
                            // streamed: the database makes the next rows while these are
                            // written, where pages would leave one side idle while the other
                            // works (pages of 1,000: 379k rows/s end to end on a quiet
                            // machine; pages of 100,000 were slower still; streamed: up to 394k
                            // on a busy one). Handed on 1,000 at a time. A large export runs
                            // past sqlx's slow-statement threshold and logs a warning.
                            let all = format!(
                                "SELECT {line} AS line FROM inv_ledger \
                                 WHERE ($1 IS NULL OR sku = $1) AND ($2 IS NULL OR warehouse = $2) \
                                   AND ($3 IS NULL OR posted_at >= $3) AND ($4 IS NULL OR posted_at < $4) \
                                 ORDER BY id",
                                line = $line,
                            );
                            let mut lines = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(all))
                                .bind(sku)
                                .bind(wh)
                                .bind(p.from)
                                .bind(p.to)
                                .fetch(&mut *tx);
                            let mut packed = String::with_capacity(BATCH * 160);
                            let mut n = 0u64;
                            while let Some(line) = futures::TryStreamExt::try_next(&mut lines).await? {
                                if n > 0 {
                                    packed.push('\u{1e}');
                                }
                                packed.push_str(&line);
                                n += 1;
                                if n == BATCH as u64 {
                                    out.packed(&packed, n).await?;
                                    packed.clear();
                                    n = 0;
                                }
                            }
                            if n > 0 {
                                out.packed(&packed, n).await?;
                            }
                        } else {
                            // Pages of 1,000 rows, each packed into one text by the database:
                            // one row crosses from the database per page, not one per ledger
                            // row (SQLite runs in process: a page costs no round trip).
                            let page = format!(
                                "SELECT max(id) AS last, count(*) AS n, {agg} AS packed FROM ( \
                                   SELECT id, {line} AS line FROM inv_ledger \
                                   WHERE id > $1 AND ($2 IS NULL OR sku = $2) AND ($3 IS NULL OR warehouse = $3) \
                                     AND ($4 IS NULL OR posted_at >= $4) AND ($5 IS NULL OR posted_at < $5) \
                                   ORDER BY id LIMIT {BATCH}) AS page",
                                agg = $agg,
                                line = $line,
                            );
                            let mut after = 0i64;
                            loop {
                                let r = sqlx::query(sqlx::AssertSqlSafe(page.clone()))
                                    .bind(after)
                                    .bind(sku)
                                    .bind(wh)
                                    .bind(p.from)
                                    .bind(p.to)
                                    .fetch_one(&mut *tx)
                                    .await?;
                                let n: i64 = r.try_get("n")?;
                                if n == 0 {
                                    break;
                                }
                                after = r.try_get("last")?;
                                let packed: String = r.try_get("packed")?;
                                out.packed(&packed, u64::try_from(n).unwrap_or(0)).await?;
                                if n < BATCH as i64 {
                                    break;
                                }
                            }
                        }
                        s.rows = out.done;
                    }
                    ReportKind::StockBalance | ReportKind::Valuation | ReportKind::LowStock | ReportKind::Ageing => {
                        let low = kind == ReportKind::LowStock;
                        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "SELECT b.sku, a.name, b.warehouse, b.qty, b.rate, b.value, b.level, \
                                    a.min_qty, a.reorder_qty, a.valuation, \
                                    CASE WHEN $4 THEN {} ELSE '[]' END AS layers \
                             FROM inv_balances b JOIN inv_articles a ON a.sku = b.sku \
                             WHERE ($1 IS NULL OR b.sku = $1) AND ($2 IS NULL OR b.warehouse = $2) \
                               AND (NOT $3 OR b.level <> 'NORMAL') \
                             ORDER BY b.sku, b.warehouse",
                            $layers
                        )))
                        .bind(sku)
                        .bind(wh)
                        .bind(low)
                        .bind(kind == ReportKind::Ageing)
                        .fetch_all(&mut *tx)
                        .await?;
                        let mut out = Batcher::new(sink, kind.columns().len(), rows.len() as u64);
                        let mut total_value = Decimal::ZERO;
                        let mut aged = [Decimal::ZERO; 8];
                        let mut any_ma = false;
                        let mut undated = 0u64;
                        // The last sku replayed from the ledger: its stock by warehouse.
                        let mut replayed: Option<(String, BTreeMap<String, Slots>)> = None;
                        for r in &rows {
                            let g = |c: &str| -> Result<String, InventoryError> { Ok(r.try_get(c)?) };
                            let (sku, name, warehouse) = (g("sku")?, g("name")?, g("warehouse")?);
                            let (qty_s, rate_s, value_s, level) = (g("qty")?, g("rate")?, g("value")?, g("level")?);
                            let value = dec("value", &value_s)?;
                            let method: ValuationMethod = g("valuation")?
                                .parse()
                                .map_err(|e: InventoryError| InventoryError::Corrupt(e.to_string()))?;
                            let row = match kind {
                                ReportKind::StockBalance => {
                                    plus(&mut total_value, value)?;
                                    vec![sku, name, warehouse, qty_s, rate_s, value_s, g("min_qty")?, level]
                                }
                                ReportKind::Valuation => {
                                    plus(&mut total_value, value)?;
                                    vec![sku, name, warehouse, method.as_str().to_owned(), qty_s, rate_s, value_s]
                                }
                                ReportKind::LowStock => {
                                    let qty = dec("qty", &qty_s)?;
                                    let min = dec("min_qty", &g("min_qty")?)?;
                                    let reorder = dec("reorder_qty", &g("reorder_qty")?)?;
                                    let suggested = reorder
                                        .max(minus(times(min, Decimal::TWO)?, qty)?)
                                        .max(Decimal::ZERO);
                                    vec![sku, name, warehouse, qty_s, text(min), text(reorder), level, text(suggested)]
                                }
                                ReportKind::Ageing => {
                                    let qty = dec("qty", &qty_s)?;
                                    if qty <= Decimal::ZERO {
                                        continue;
                                    }
                                    let layers: Vec<Layer> = serde_json::from_str(&g("layers")?)?;
                                    let dated = method == ValuationMethod::Fifo
                                        && layers.iter().all(|l| l.received_at.is_some());
                                    // Newest first: (qty, unit cost, received at).
                                    let (receipts, rate) = if dated {
                                        let open = layers
                                            .iter()
                                            .rev()
                                            .filter(|l| l.qty > Decimal::ZERO)
                                            .filter_map(|l| Some((l.qty, l.rate, l.received_at?)))
                                            .collect::<Vec<_>>();
                                        (open, None)
                                    } else {
                                        // Moving average (no layers), or layers stored before
                                        // their dates were kept: the sku's ledger replayed.
                                        if method == ValuationMethod::MovingAverage {
                                            any_ma = true;
                                        } else {
                                            undated += 1;
                                        }
                                        if replayed.as_ref().is_none_or(|(k, _)| *k != sku) {
                                            let rows = sqlx::query(
                                                "SELECT kind, warehouse, qty_change, posted_at, \
                                                        CASE WHEN kind = 'transfer' THEN movement_id ELSE '' END AS movement_id \
                                                 FROM inv_ledger WHERE sku = $1 ORDER BY id",
                                            )
                                            .bind(&sku)
                                            .fetch_all(&mut *tx)
                                            .await?;
                                            let mut steps = Vec::with_capacity(rows.len());
                                            for l in &rows {
                                                steps.push(Step {
                                                    transfer: l.try_get::<String, _>("kind")? == "transfer",
                                                    warehouse: l.try_get("warehouse")?,
                                                    qty: dec("qty_change", &l.try_get::<String, _>("qty_change")?)?,
                                                    at: l.try_get("posted_at")?,
                                                    movement: l.try_get("movement_id")?,
                                                });
                                            }
                                            replayed = Some((sku.clone(), replay(steps)?));
                                        }
                                        let slots = replayed
                                            .as_ref()
                                            .and_then(|(_, by_wh)| by_wh.get(&warehouse))
                                            .map(|q| q.slots.iter().rev().map(|(q, at)| (*q, Decimal::ZERO, *at)).collect())
                                            .unwrap_or_default();
                                        (slots, Some(dec("rate", &rate_s)?))
                                    };
                                    let (q, v) = age(qty, &receipts, rate, as_of)?;
                                    // Values per bucket are rounded; the last takes the rest so
                                    // the buckets add up to the balance's value.
                                    let mut v: Vec<Decimal> = v.iter().map(|x| x.round_dp(6)).collect();
                                    let mut sum = Decimal::ZERO;
                                    for x in &v {
                                        plus(&mut sum, *x)?;
                                    }
                                    let diff = minus(value, sum)?;
                                    let last = v.iter().rposition(|x| !x.is_zero()).unwrap_or(3);
                                    plus(&mut v[last], diff)?;
                                    for i in 0..4 {
                                        plus(&mut aged[i], q[i])?;
                                        plus(&mut aged[4 + i], v[i])?;
                                    }
                                    plus(&mut total_value, value)?;
                                    let mut row = vec![sku, warehouse, method.as_str().to_owned(), qty_s, value_s];
                                    row.extend(q.iter().map(|x| text(*x)));
                                    row.extend(v.iter().map(|x| text(*x)));
                                    row
                                }
                                ReportKind::Ledger => unreachable!("handled above"),
                            };
                            out.push(row).await?;
                        }
                        out.flush().await?;
                        s.rows = out.done;
                        if kind != ReportKind::LowStock {
                            s.totals.insert("total_value".into(), text(total_value));
                        }
                        if kind == ReportKind::Ageing {
                            for (i, name) in ["0_30", "31_60", "61_90", "over_90"].iter().enumerate() {
                                s.totals.insert(format!("qty_{name}"), text(aged[i]));
                                s.totals.insert(format!("value_{name}"), text(aged[4 + i]));
                            }
                            if any_ma {
                                s.notes.push(
                                    "Moving-average articles keep no layers: their ledger is replayed under a \
                                     FIFO assumption (receipts and count gains add stock dated at their posting, \
                                     issues and count losses take the oldest, a transfer moves what it took with \
                                     its dates to the destination) and the stock so found is valued at the \
                                     average rate."
                                        .to_owned(),
                                );
                            }
                            if undated > 0 {
                                s.notes.push(format!(
                                    "{undated} FIFO balances hold layers stored before receipt dates were \
                                     kept: they are aged as moving-average ones are, valued at their rate."
                                ));
                            }
                            s.notes.push(
                                "Ages are days since the goods were received, as of the report: FIFO \
                                 articles are aged by their open stock layers, each from its receipt date \
                                 (a transfer keeps the original receipt's date; a count gain is new stock \
                                 dated at the count)."
                                    .to_owned(),
                            );
                        }
                    }
                }
                s.totals.insert("rows".into(), s.rows.to_string());
                tx.rollback().await?;
                Ok(s)
            }
        }
    };
}

backend!(
    sqlite,
    sqlx::SqlitePool,
    begin = "BEGIN",
    agg = "group_concat(line, char(30) ORDER BY id)",
    line = "id || char(31) || posted_at || char(31) || movement_id || char(31) || kind || char(31) || \
            sku || char(31) || warehouse || char(31) || qty_change || char(31) || unit_cost || char(31) || \
            value_change || char(31) || qty_after || char(31) || value_after || char(31) || \
            coalesce(reference, '') || char(31) || posted_by",
    stream = false,
    layers = crate::storage::sqlite::LAYERS_JSON
);
backend!(
    postgres,
    sqlx::PgPool,
    begin = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    agg = "string_agg(line, chr(30) ORDER BY id)",
    line = "id::text || chr(31) || to_char(posted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') || \
            chr(31) || movement_id || chr(31) || kind || chr(31) || sku || chr(31) || warehouse || chr(31) || \
            qty_change || chr(31) || unit_cost || chr(31) || value_change || chr(31) || qty_after || chr(31) || \
            value_after || chr(31) || coalesce(reference, '') || chr(31) || posted_by",
    stream = true,
    layers = crate::storage::postgres::LAYERS_JSON
);

impl Inventory {
    /// Runs report `kind` over one snapshot, handing its rows to `sink` in batches.
    ///
    /// # Errors
    /// A database error, or the sink's.
    pub async fn report(
        &self,
        kind: ReportKind,
        params: &ReportParams,
        sink: &mut dyn ReportSink,
    ) -> Result<ReportSummary, InventoryError> {
        match self.database() {
            malaka_db::Database::Sqlite(p) => sqlite::run(p, kind, params, sink).await,
            malaka_db::Database::Postgres(p) => postgres::run(p, kind, params, sink).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::dec;

    #[test]
    fn stock_is_aged_by_the_newest_receipts() {
        let now = Utc::now();
        let days = |d: i64| now - chrono::Duration::days(d);
        // Newest first: 5 received 10 days ago, 10 received 45 days ago, 10 received 100 days ago.
        let receipts = [
            (dec!(5), dec!(2), days(10)),
            (dec!(10), dec!(1), days(45)),
            (dec!(10), dec!(1.5), days(100)),
        ];
        let (q, v) = age(dec!(18), &receipts, None, now).unwrap();
        assert_eq!(q, [dec!(5), dec!(10), dec!(0), dec!(3)]);
        assert_eq!(v, [dec!(10), dec!(10), dec!(0), dec!(4.5)]);
        // Moving average: same quantities, valued at the rate.
        let (q2, v2) = age(dec!(18), &receipts, Some(dec!(1)), now).unwrap();
        assert_eq!(q2, q);
        assert_eq!(v2, [dec!(5), dec!(10), dec!(0), dec!(3)]);
        // More stock than receipts explain: the rest is oldest.
        let (q3, _) = age(dec!(30), &receipts, Some(dec!(1)), now).unwrap();
        assert_eq!(q3[3], dec!(15));
    }

    #[test]
    fn the_replay_carries_dates_through_transfers_and_dates_gains_new() {
        let day = |d: i64| DateTime::from_timestamp(1_700_000_000 + d * 86_400, 0).unwrap();
        let step = |t: bool, w: &str, q: Decimal, d: i64, m: &str| Step {
            transfer: t,
            warehouse: w.into(),
            qty: q,
            at: day(d),
            movement: m.into(),
        };
        let stock = replay(vec![
            step(false, "MAIN", dec!(10), 0, ""),
            step(false, "MAIN", dec!(5), 10, ""),
            step(false, "MAIN", dec!(-3), 20, ""),
            step(true, "MAIN", dec!(-9), 30, "t1"),
            step(true, "SIDE", dec!(9), 30, "t1"),
            step(false, "MAIN", dec!(4), 40, ""),
            // Issued ahead of stock, then covered by the next goods in.
            step(false, "SIDE", dec!(-12), 45, ""),
            step(false, "SIDE", dec!(5), 50, ""),
        ])
        .unwrap();
        let main: Vec<_> = stock["MAIN"].slots.iter().copied().collect();
        assert_eq!(main, [(dec!(3), day(10)), (dec!(4), day(40))]);
        let side = &stock["SIDE"];
        assert_eq!(side.short, Decimal::ZERO);
        assert_eq!(
            side.slots.iter().copied().collect::<Vec<_>>(),
            [(dec!(2), day(50))]
        );
        // The 9 transferred kept their dates: 7 from day 0, 2 from day 10.
        let moved = replay(vec![
            step(false, "MAIN", dec!(10), 0, ""),
            step(false, "MAIN", dec!(5), 10, ""),
            step(true, "MAIN", dec!(-12), 30, "t"),
            step(true, "SIDE", dec!(12), 30, "t"),
        ])
        .unwrap();
        let side: Vec<_> = moved["SIDE"].slots.iter().copied().collect();
        assert_eq!(side, [(dec!(10), day(0)), (dec!(2), day(10))]);
    }

    #[test]
    fn kinds_parse_and_name_their_columns() {
        for k in ReportKind::ALL {
            assert_eq!(k.as_str().parse::<ReportKind>().unwrap(), k);
            assert!(!k.columns().is_empty());
        }
        assert!("balance".parse::<ReportKind>().is_err());
    }
}
