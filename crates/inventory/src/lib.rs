//! Malaka's inventory domain: articles, warehouses, stock movements, the append-only ledger,
//! per-warehouse balances, moving-average and FIFO valuation, alert levels, and the outbox the
//! events of every posting are written to. It knows nothing about HTTP.
//!
//! Inputs are parsed into domain types first (`NewArticle`, `NewMovement`, `Sku`, `Quantity`,
//! `Money`), so the store only ever sees valid values. `Inventory` posts a movement in one
//! transaction: its ledger rows, the balances they leave, and its events (`movement.posted`,
//! and `stock.level_changed` when a level crosses) in `malaka_outbox`.
//!
//! ```no_run
//! use malaka_inventory::{Inventory, NewArticle, NewMovement, WarehouseCode};
//! use rust_decimal::dec;
//!
//! # async fn demo(pool: sqlx::SqlitePool) -> Result<(), malaka_inventory::InventoryError> {
//! let inv = Inventory::sqlite(pool);
//! inv.migrate().await?;
//! inv.create_warehouse(&WarehouseCode::parse("MAIN")?, "Main store").await?;
//! inv.create_article(&NewArticle::parse("BOLT-M8", "M8 bolt", None, Some("fifo"), Some(dec!(50)), None, None)?).await?;
//! let receipt = NewMovement::parse("receipt", "BOLT-M8", "MAIN", None, dec!(100), Some(dec!(0.12)), Some("PO-1"), None)?;
//! let posted = inv.post(&receipt, "clerk").await?;
//! assert_eq!(posted.rows[0].qty_after, dec!(100));
//! # Ok(()) }
//! ```

mod alerts;
mod error;
mod gate;
mod group;
mod inbox;
mod inventory;
mod outbox;
#[doc(hidden)]
pub mod plan;
mod posting;
mod reports;
pub mod storage;
pub mod topics;
mod types;
mod valuation;

pub use alerts::{
    Alert, AlertAction, AlertChange, AlertEffects, AlertFilter, Alerts, LevelChange, SweepReport,
    TOPIC_ALERT,
};
pub use error::InventoryError;
pub use gate::{WriteGate, WriteTurn, sqlite_turn};
pub use inbox::{
    Disposition, InboxAttempt, InboxEntry, InboxFilter, InboxRecord, InboxState, Recorded,
};
pub use inventory::{
    Discrepancy, Inventory, LedgerPage, MAX_BATCH, OutboxEvent, TOPIC_LEVEL_CHANGED,
    TOPIC_MOVEMENT_POSTED, VerifyReport,
};
pub use malaka_db::Database;
pub use outbox::{Outbox, Published};
pub use posting::{BatchRow, BatchedHook, PostingHook};
pub use reports::{ReportKind, ReportParams, ReportSink, ReportSummary};
pub use types::{
    AlertLevel, Article, ArticlePatch, Balance, BalanceCursor, BalanceFilter, CODE_PATTERN, Layer,
    LedgerCursor, LedgerFilter, LedgerRow, MAX_DECIMAL_TEXT, MAX_QTY, MAX_UNIT_COST, MAX_VALUE,
    MONEY_SCALE, Money, Movement, MovementKind, MovementText, NAME_MAX,
    NON_NEGATIVE_DECIMAL_PATTERN, NOTE_MAX, NewArticle, NewMovement, OPTIONAL_TEXT_PATTERN,
    POSITIVE_DECIMAL_PATTERN, QTY_SCALE, Quantity, REFERENCE_MAX, SKU_MAX, Sku, TEXT_PATTERN,
    UNIT_MAX, ValuationMethod, WAREHOUSE_CODE_MAX, Warehouse, WarehouseCode, parse_decimal,
    round_money,
};
pub use valuation::{Change, Stock, ValuationError};
