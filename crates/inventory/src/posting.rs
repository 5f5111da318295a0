//! Planning a posting, the same on both backends: what a write transaction has loaded and
//! computed (`Session`, a `Working` balance per article and warehouse with its window of FIFO
//! layers), the movements computed against it (`plan_all`) within the documented limits, and
//! the hooks whose writes commit with a posting (`PostingHook`, `BatchedHook`). The storage
//! backends load, then write, what is planned here.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::json;

use crate::error::InventoryError;
use crate::storage::text;
use crate::topics::TOPIC_LEVEL_CHANGED;
use crate::types::{
    AlertLevel, Layer, Movement, MovementKind, NewMovement, Sku, ValuationMethod, WarehouseCode,
};
use crate::types::{MAX_QTY, MAX_UNIT_COST, MAX_VALUE};
use crate::valuation::{Change, Stock, ValuationError};

/// A balance being changed inside a posting transaction.
///
/// Its FIFO layers are stored as rows (`inv_layers`, numbered by `seq` in FIFO order), and only
/// a window of them is in memory: `stock.layers` holds the oldest open layers loaded so far
/// (enough for what the postings consume, see [`Working::demand_window`]), then the layers
/// received in this transaction. A receipt loads none.
#[derive(Debug, Clone)]
pub(crate) struct Working {
    pub(crate) stock: Stock,
    pub(crate) level: AlertLevel,
    pub(crate) min_qty: Decimal,
    pub(crate) changed: bool,
    pub(crate) layers: LayerWindow,
}

/// Which of a balance's stored layers are in memory, and what this transaction did to them.
#[derive(Debug, Clone, Default)]
pub(crate) struct LayerWindow {
    /// Stored open layers may follow the ones loaded.
    pub(crate) more: bool,
    /// The last stored layer loaded (-1: none yet).
    pub(crate) last_loaded: i64,
    /// The balance's next `seq` when it was loaded: stored layers are below it.
    pub(crate) stored_end: i64,
    /// The next `seq` to give a new layer.
    pub(crate) next_seq: i64,
    /// Stored layers loaded, by `seq`, with the quantity they had then.
    pub(crate) loaded: BTreeMap<i64, Decimal>,
    /// Layers received in this transaction, by `seq`, with the ledger row that brought each.
    pub(crate) created: BTreeMap<i64, (Layer, Option<i64>)>,
    /// The stock went to zero or below: every stored layer is consumed.
    pub(crate) cleared: bool,
}

impl LayerWindow {
    /// The window of a balance loaded with `next_seq` stored layers numbered, `qty` in stock.
    pub(crate) fn at_load(fifo: bool, qty: Decimal, next_seq: i64) -> Self {
        Self {
            more: fifo && qty > Decimal::ZERO && next_seq > 0,
            last_loaded: -1,
            stored_end: next_seq,
            next_seq,
            ..Self::default()
        }
    }
}

impl Working {
    /// A balance as loaded: its figures (no layers yet), level, the article's minimum and the
    /// balance's next layer number.
    pub(crate) fn loaded(
        stock: Stock,
        level: AlertLevel,
        facts: &ArticleFacts,
        next_seq: i64,
    ) -> Self {
        let fifo = facts.valuation == ValuationMethod::Fifo;
        Self {
            layers: LayerWindow::at_load(fifo, stock.qty, next_seq),
            stock,
            level,
            min_qty: facts.min_qty,
            changed: false,
        }
    }

    /// The quantity of the stored layers in memory (what postings may consume without loading
    /// more).
    pub(crate) fn window_qty(&self) -> Decimal {
        self.stock
            .layers
            .iter()
            .take_while(|l| l.seq.is_some_and(|s| s < self.layers.stored_end))
            .fold(Decimal::ZERO, |a, l| a.saturating_add(l.qty))
    }

    /// Whether more stored layers must be loaded before postings consume `demand`.
    pub(crate) fn demand_window(&self, demand: Decimal) -> bool {
        self.layers.more && self.window_qty() < demand
    }

    /// Adds stored layers read after the ones loaded (oldest first); `complete` when there are
    /// no more.
    pub(crate) fn extend_window(&mut self, read: Vec<Layer>, complete: bool) {
        let at = self
            .stock
            .layers
            .iter()
            .position(|l| l.seq.is_none_or(|s| s >= self.layers.stored_end))
            .unwrap_or(self.stock.layers.len());
        for (i, l) in read.into_iter().enumerate() {
            if let Some(seq) = l.seq {
                self.layers.last_loaded = self.layers.last_loaded.max(seq);
                self.layers.loaded.insert(seq, l.qty);
            }
            self.stock.layers.insert(at + i, l);
        }
        if complete {
            self.layers.more = false;
        }
    }

    /// After a posting changed `stock`: numbers its new layers (returned), and notes a stock
    /// that went to zero or below (every stored layer consumed).
    pub(crate) fn settle_layers(&mut self) -> Vec<i64> {
        let mut new = Vec::new();
        for l in &mut self.stock.layers {
            if l.seq.is_none() {
                let seq = self.layers.next_seq;
                self.layers.next_seq = seq.saturating_add(1);
                l.seq = Some(seq);
                self.layers.created.insert(seq, (*l, None));
                new.push(seq);
            }
        }
        if self.stock.qty <= Decimal::ZERO && self.layers.more {
            // The layers not loaded went with the rest (the ones loaded are written one by one).
            self.layers.cleared = true;
            self.layers.more = false;
        }
        new
    }
}

impl Session {
    /// Notes what ledger row `ledger_id` (written for `p`, of article `sku`) did to FIFO layers,
    /// for the backend's `write_balances` to store with the balances: the layers it
    /// consumed (a use each) and the ones it brought in (their ledger row).
    pub(crate) fn layers_of(&mut self, ledger_id: i64, sku: &Sku, p: &PendingRow) {
        if p.change.qty < Decimal::ZERO {
            self.uses.extend(p.change.consumed.iter().filter_map(|l| {
                Some(LayerUse {
                    ledger_id,
                    sku: sku.clone(),
                    warehouse: p.warehouse.clone(),
                    seq: l.seq?,
                    qty: l.qty,
                    rate: l.rate,
                })
            }));
        }
        if p.new_layers.is_empty() {
            return;
        }
        if let Some(w) = self.work.get_mut(&(sku.clone(), p.warehouse.clone())) {
            for seq in &p.new_layers {
                if let Some(c) = w.layers.created.get_mut(seq) {
                    c.1 = Some(ledger_id);
                }
            }
        }
    }
}

/// Stored layers read at a time when a posting needs more of them.
pub(crate) const LAYERS_PER_READ: usize = 16;

/// What the movements of one request may consume from each balance they take goods from: the
/// quantity issued or transferred out; a count may consume everything (`Decimal::MAX`).
pub(crate) fn demands(ms: &[NewMovement]) -> BTreeMap<(Sku, WarehouseCode), Decimal> {
    let mut out: BTreeMap<(Sku, WarehouseCode), Decimal> = BTreeMap::new();
    for m in ms {
        let want = match m.kind {
            MovementKind::Receipt => continue,
            MovementKind::Issue | MovementKind::Transfer => m.qty.get(),
            MovementKind::Count => Decimal::MAX,
        };
        let e = out.entry((m.sku.clone(), m.warehouse.clone())).or_default();
        *e = e.saturating_add(want);
    }
    out
}

/// A consumption of a stored layer, recorded against the ledger row that consumed it.
#[derive(Debug, Clone)]
pub(crate) struct LayerUse {
    pub(crate) ledger_id: i64,
    pub(crate) sku: Sku,
    pub(crate) warehouse: WarehouseCode,
    pub(crate) seq: i64,
    pub(crate) qty: Decimal,
    pub(crate) rate: Decimal,
}

/// An article's facts a posting needs.
#[derive(Debug, Clone)]
pub(crate) struct ArticleFacts {
    pub(crate) valuation: ValuationMethod,
    pub(crate) min_qty: Decimal,
    pub(crate) allow_negative: bool,
}

/// One ledger row about to be written.
#[derive(Debug, Clone)]
pub(crate) struct PendingRow {
    pub(crate) warehouse: WarehouseCode,
    pub(crate) change: Change,
    pub(crate) after: After,
    /// The layers it brought in (their `seq`).
    pub(crate) new_layers: Vec<i64>,
}

/// A balance's figures after a posting (what its ledger row records).
#[derive(Debug, Clone, Copy)]
pub(crate) struct After {
    pub(crate) qty: Decimal,
    pub(crate) value: Decimal,
    pub(crate) rate: Decimal,
}

impl After {
    pub(crate) fn of(s: &Stock) -> Self {
        Self {
            qty: s.qty,
            value: s.value,
            rate: s.rate,
        }
    }
}

/// What a write transaction has loaded and computed so far: article facts, checked warehouses and
/// the balances as postings left them. A group of SQLite postings shares one.
#[derive(Debug, Default)]
pub(crate) struct Session {
    pub(crate) facts: BTreeMap<Sku, ArticleFacts>,
    pub(crate) warehouses: std::collections::BTreeSet<WarehouseCode>,
    pub(crate) work: BTreeMap<(Sku, WarehouseCode), Working>,
    /// Layer consumptions written since the balances were last written.
    pub(crate) uses: Vec<LayerUse>,
    /// Set while a posting writes (after it was planned, until it returned): a posting that
    /// fails with this set has left writes in the transaction.
    pub(crate) writing: bool,
}

/// Writes that must commit with a posting, inside its transaction: an idempotency record, an
/// order's or an import's own rows. It runs after the posting's movements, ledger rows and inbox
/// record are written (balances and events may follow); an error rolls the posting back and is
/// its caller's answer. On SQLite it runs inside the group committer (see `BatchedHook` for
/// hooks that write for the whole group at once).
#[async_trait::async_trait]
pub trait PostingHook: Send + Sync + 'static {
    /// On SQLite.
    ///
    /// # Errors
    /// Any error rolls the posting back.
    async fn sqlite(
        &self,
        conn: &mut sqlx::SqliteConnection,
        posted: &[Movement],
    ) -> Result<(), InventoryError>;
    /// On PostgreSQL.
    ///
    /// # Errors
    /// Any error rolls the posting back.
    async fn postgres(
        &self,
        conn: &mut sqlx::PgConnection,
        posted: &[Movement],
    ) -> Result<(), InventoryError>;

    /// SQLite's group committer may, instead of calling [`Self::sqlite`] for each posting, have
    /// the hooks of one group write together at its end, in one statement (a statement is most
    /// of what a posting costs there). `None` (the default): one call per posting.
    fn batched(&self) -> Option<&dyn BatchedHook> {
        None
    }
}

/// A row a [`BatchedHook`] prepared for its posting, written with the group's others.
pub type BatchRow = Box<dyn std::any::Any + Send>;

/// The group-at-once form of a [`PostingHook`] on SQLite.
#[async_trait::async_trait]
pub trait BatchedHook: Send + Sync {
    /// What rows of one kind are written together by one [`Self::write_batch`].
    fn kind(&self) -> &'static str;
    /// This posting's row, computed from what it posted (nothing written yet).
    ///
    /// # Errors
    /// Any error rolls the posting back.
    fn prepare(&self, posted: &[Movement]) -> Result<BatchRow, InventoryError>;
    /// Writes the rows of one group in one go, inside its transaction, and returns the rows
    /// refused (by index, with why): their postings are rolled back and answered with that
    /// error, and the group runs again without them.
    ///
    /// # Errors
    /// A failure of the whole write (the group fails).
    async fn write_batch(
        &self,
        conn: &mut sqlx::SqliteConnection,
        rows: Vec<BatchRow>,
    ) -> Result<Vec<(usize, InventoryError)>, InventoryError>;
}

/// A movement computed but not written: its id, ledger rows to write and level events.
pub(crate) type Planned<'a> = (
    &'a NewMovement,
    String,
    Vec<PendingRow>,
    Vec<(&'static str, serde_json::Value)>,
);

/// Computes every movement of one request against `session`; a refusal puts `session` back as
/// it was.
pub(crate) fn plan_all<'a>(
    ms: &'a [NewMovement],
    by: &str,
    now: DateTime<Utc>,
    session: &mut Session,
    keys: &[(Sku, WarehouseCode)],
) -> Result<Vec<Planned<'a>>, InventoryError> {
    let snapshot: Vec<((Sku, WarehouseCode), Working)> = keys
        .iter()
        .filter_map(|k| session.work.get(k).map(|w| (k.clone(), w.clone())))
        .collect();
    let mut planned = Vec::with_capacity(ms.len());
    for (index, m) in ms.iter().enumerate() {
        let step = (|| {
            let f = session
                .facts
                .get(&m.sku)
                .ok_or_else(|| InventoryError::Corrupt("article facts missing".into()))?;
            let before: Vec<(WarehouseCode, AlertLevel)> = std::iter::once(&m.warehouse)
                .chain(m.to_warehouse.as_ref())
                .filter_map(|w| {
                    session
                        .work
                        .get(&(m.sku.clone(), w.clone()))
                        .map(|x| (w.clone(), x.level))
                })
                .collect();
            let pending = plan_movement(m, f, &mut session.work, now)?;
            let id = uuid::Uuid::now_v7().to_string();
            let mut levels = Vec::new();
            for (wh, from) in before {
                let Some(w) = session.work.get_mut(&(m.sku.clone(), wh.clone())) else {
                    continue;
                };
                let to = AlertLevel::of(w.stock.qty, w.min_qty);
                w.level = to;
                if to != from {
                    levels.push((
                        TOPIC_LEVEL_CHANGED,
                        json!({
                            "sku": m.sku, "warehouse": wh, "from": from, "to": to,
                            "qty": text(w.stock.qty), "min_qty": text(w.min_qty),
                            "movement_id": id, "cause": "movement", "by": by, "at": now,
                        }),
                    ));
                }
            }
            Ok::<_, InventoryError>((m, id, pending, levels))
        })();
        match step {
            Ok(p) => planned.push(p),
            Err(e) => {
                for (k, w) in snapshot {
                    session.work.insert(k, w);
                }
                return Err(e.at(index, None));
            }
        }
    }
    Ok(planned)
}

/// The first movement of `ms` naming warehouse `code`, and as which field: the movement a
/// refusal of that warehouse (unknown, archived) is reported against.
pub(crate) fn naming(ms: &[NewMovement], code: &WarehouseCode) -> (usize, &'static str) {
    ms.iter()
        .enumerate()
        .find_map(|(i, m)| {
            if m.warehouse == *code {
                Some((i, "warehouse"))
            } else if m.to_warehouse.as_ref() == Some(code) {
                Some((i, "to_warehouse"))
            } else {
                None
            }
        })
        .unwrap_or((0, "warehouse"))
}

/// The error for a posting whose figures would leave the limits.
pub(crate) fn beyond(
    field: &str,
    m: &NewMovement,
    wh: &WarehouseCode,
    what: String,
) -> InventoryError {
    InventoryError::OutOfRange {
        field: field.to_owned(),
        message: format!(
            "this {} of {} in {wh} would take {what}",
            m.kind.as_str(),
            m.sku
        ),
    }
}

/// Refuses a result that leaves the documented limits: quantities below [`MAX_QTY`], values
/// (of the balance and of the change) below [`MAX_VALUE`], rates below [`MAX_UNIT_COST`], in
/// magnitude. The field named is the input that carried it there: `qty`, or `unit_cost` for a
/// value reached at a given cost.
pub(crate) fn check_limits(
    m: &NewMovement,
    wh: &WarehouseCode,
    s: &Stock,
    change: &Change,
) -> Result<(), InventoryError> {
    let value_field = if m.unit_cost.is_some() {
        "unit_cost"
    } else {
        "qty"
    };
    if s.qty.abs() >= MAX_QTY {
        return Err(beyond(
            "qty",
            m,
            wh,
            format!(
                "the balance to {} units; a balance stays below 10^12",
                s.qty
            ),
        ));
    }
    if s.value.abs() >= MAX_VALUE || change.value.abs() >= MAX_VALUE {
        return Err(beyond(
            value_field,
            m,
            wh,
            format!(
                "the value to {} (a change of {}); values stay below 10^16",
                s.value, change.value
            ),
        ));
    }
    if s.rate.abs() >= MAX_UNIT_COST {
        return Err(beyond(
            value_field,
            m,
            wh,
            format!("the rate to {}; rates stay below 10^12", s.rate),
        ));
    }
    Ok(())
}

/// A valuation refusal as the store reports it.
pub(crate) fn refused(m: &NewMovement, wh: &WarehouseCode, e: ValuationError) -> InventoryError {
    match e {
        ValuationError::Insufficient { available } => InventoryError::InsufficientStock {
            sku: m.sku.to_string(),
            warehouse: wh.to_string(),
            available,
            requested: m.qty.get(),
        },
        ValuationError::OutOfRange => beyond(
            "qty",
            m,
            wh,
            "a figure beyond what can be computed; the balance is past the limits".to_owned(),
        ),
    }
}

/// Computes one movement posted `now` (the date of the layers it receives).
pub(crate) fn plan_movement(
    m: &NewMovement,
    facts: &ArticleFacts,
    work: &mut BTreeMap<(Sku, WarehouseCode), Working>,
    now: DateTime<Utc>,
) -> Result<Vec<PendingRow>, InventoryError> {
    let method = facts.valuation;
    let key = (m.sku.clone(), m.warehouse.clone());
    let w = work
        .get(&key)
        .ok_or_else(|| InventoryError::Corrupt("balance not locked".into()))?;
    let qty = m.qty.get();
    // Computed on a copy, kept only once every figure is within the limits.
    let mut next = w.stock.clone();
    let change = match m.kind {
        MovementKind::Receipt => {
            let cost = m
                .unit_cost
                .map(crate::types::Money::get)
                .unwrap_or_default();
            next.receive_at_into(method, qty, cost, now)
        }
        MovementKind::Issue | MovementKind::Transfer => {
            if qty > next.qty && !facts.allow_negative {
                Err(ValuationError::Insufficient {
                    available: next.qty.max(Decimal::ZERO),
                })
            } else {
                next.issue_into(method, qty)
            }
        }
        MovementKind::Count => {
            next.count_into(method, qty, m.unit_cost.map(crate::types::Money::get), now)
        }
    }
    .map_err(|e| refused(m, &m.warehouse, e))?;
    check_limits(m, &m.warehouse, &next, &change)?;
    let mut rows = Vec::with_capacity(2);
    let dest = match (m.kind, &m.to_warehouse) {
        (MovementKind::Transfer, Some(to)) => {
            let d = work
                .get(&(m.sku.clone(), to.clone()))
                .ok_or_else(|| InventoryError::Corrupt("balance not locked".into()))?;
            let mut d_next = d.stock.clone();
            // Exactly the value the source gave up: rounding must not make or lose value.
            let inn = d_next
                .receive_into(method, &change.consumed, -change.value, now)
                .map_err(|e| refused(m, to, e))?;
            check_limits(m, to, &d_next, &inn)?;
            Some((to.clone(), d_next, inn))
        }
        _ => None,
    };
    let after = After::of(&next);
    let mut new_layers = Vec::new();
    if let Some(w) = work.get_mut(&key) {
        w.stock = next;
        w.changed = true;
        new_layers = w.settle_layers();
    }
    rows.push(PendingRow {
        warehouse: m.warehouse.clone(),
        change,
        after,
        new_layers,
    });
    if let Some((to, d_next, inn)) = dest {
        let after = After::of(&d_next);
        let mut new_layers = Vec::new();
        if let Some(d) = work.get_mut(&(m.sku.clone(), to.clone())) {
            d.stock = d_next;
            d.changed = true;
            new_layers = d.settle_layers();
        }
        rows.push(PendingRow {
            warehouse: to,
            change: inn,
            after,
            new_layers,
        });
    }
    Ok(rows)
}

/// The `movement.posted` payload.
pub(crate) fn movement_event(m: &Movement) -> serde_json::Value {
    json!({
        "movement_id": m.id,
        "type": m.kind,
        "sku": m.sku,
        "warehouse": m.warehouse,
        "to_warehouse": m.to_warehouse,
        "qty": text(m.qty),
        "reference": m.reference,
        "note": m.note,
        "by": m.posted_by,
        "at": m.posted_at,
        "rows": m.rows.iter().map(|r| json!({
            "ledger_id": r.id,
            "warehouse": r.warehouse,
            "qty_change": text(r.qty_change),
            "value_change": text(r.value_change),
            "qty_after": text(r.qty_after),
            "value_after": text(r.value_after),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::dec;
    use std::collections::VecDeque;

    fn work_for(m: &NewMovement) -> BTreeMap<(Sku, WarehouseCode), Working> {
        BTreeMap::from([(
            (m.sku.clone(), m.warehouse.clone()),
            Working {
                stock: Stock::default(),
                level: AlertLevel::OutOfStock,
                min_qty: Decimal::ZERO,
                changed: false,
                layers: LayerWindow::default(),
            },
        )])
    }

    fn facts() -> ArticleFacts {
        ArticleFacts {
            valuation: ValuationMethod::MovingAverage,
            min_qty: Decimal::ZERO,
            allow_negative: false,
        }
    }

    fn field_of(e: InventoryError) -> String {
        match e {
            InventoryError::OutOfRange { field, .. } => field,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn postings_that_would_leave_the_limits_are_refused_and_change_nothing() {
        let big = dec!(999999999999);
        let m = NewMovement::parse("receipt", "A", "W", None, big, Some(dec!(1000)), None, None)
            .unwrap();
        let key = (m.sku.clone(), m.warehouse.clone());
        let mut work = work_for(&m);
        // ~10^15 of value fits; a second receipt takes the quantity past 10^12.
        assert!(plan_movement(&m, &facts(), &mut work, Utc::now()).is_ok());
        let err = plan_movement(&m, &facts(), &mut work, Utc::now()).unwrap_err();
        assert_eq!(field_of(err), "qty");
        // Values stay below 10^16: a costly receipt names its unit cost.
        let mut fresh = work_for(&m);
        let dear = NewMovement::parse(
            "receipt",
            "A",
            "W",
            None,
            dec!(100000),
            Some(dec!(999999999999)),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            field_of(plan_movement(&dear, &facts(), &mut fresh, Utc::now()).unwrap_err()),
            "unit_cost"
        );
        assert_eq!(fresh[&key].stock, Stock::default());
    }

    #[test]
    fn a_balance_past_the_limits_refuses_issues_instead_of_panicking() {
        // What an older version accepted: 10^12 units worth 5 x 10^23.
        let m =
            NewMovement::parse("issue", "A", "W", None, dec!(200000), None, None, None).unwrap();
        let mut work = work_for(&m);
        let key = (m.sku.clone(), m.warehouse.clone());
        if let Some(w) = work.get_mut(&key) {
            w.stock = Stock {
                qty: dec!(999999999999),
                value: dec!(499999999999500000000000),
                rate: dec!(500000000000),
                layers: VecDeque::new(),
            };
        }
        let before = work[&key].stock.clone();
        let err = plan_movement(&m, &facts(), &mut work, Utc::now()).unwrap_err();
        assert_eq!(field_of(err), "qty");
        assert_eq!(work[&key].stock, before);
    }
}
