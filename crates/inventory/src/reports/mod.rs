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

mod postgres;
mod sqlite;

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
