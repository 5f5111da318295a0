//! Reads that are the same SQL on both backends (the lists, the outbox, `verify`),
//! written once over a [`Database`].

use std::collections::BTreeMap;

use malaka_db::{Database, on_pool};
use rust_decimal::Decimal;
use sqlx::Row;

use super::{ARTICLE_COLS, INBOX_COLS, article_of, dec, inbox_of, ledger_of, stored, warehouse_of};
use crate::error::InventoryError;
use crate::inbox::{InboxFilter, InboxRecord};
use crate::inventory::{Discrepancy, LedgerPage, OutboxEvent, VerifyReport};
use crate::types::{
    AlertLevel, Article, Balance, BalanceFilter, LedgerCursor, LedgerFilter, LedgerRow, Sku,
    ValuationMethod, Warehouse, WarehouseCode,
};

/// Appends `AND column = value` for each filter given, so each query shape names only the
/// columns it filters on and the index for them serves it (a `(? IS NULL OR column = ?)` form
/// would keep SQLite from using any).
macro_rules! and_eq {
    ($q:expr, $($col:literal => $val:expr),+ $(,)?) => {
        $(if let Some(v) = $val {
            $q.push(concat!(" AND ", $col, " = ")).push_bind(v);
        })+
    };
}

/// Pushes the balances query for filter `$f` onto `$q` (shared by [`balances`] and [`explain`]).
macro_rules! balances_query {
    ($q:ident, $f:expr, $layers_json:expr) => {{
        let f = $f;
        $q.push(format!(
            "SELECT b.sku, a.name, b.warehouse, b.qty, b.value, b.rate, {} AS layers, b.level, \
                    b.updated_at, a.min_qty \
             FROM inv_balances b JOIN inv_articles a ON a.sku = b.sku WHERE 1 = 1",
            $layers_json
        ));
        and_eq!($q,
            "b.sku" => f.sku.as_ref().map(Sku::as_str),
            "b.warehouse" => f.warehouse.as_ref().map(WarehouseCode::as_str),
            "b.level" => f.level.map(AlertLevel::as_str),
        );
        if let Some(c) = &f.after {
            $q.push(" AND (b.sku, b.warehouse) > (")
                .push_bind(c.sku.as_str())
                .push(", ")
                .push_bind(c.warehouse.as_str())
                .push(")");
        }
        $q.push(" ORDER BY b.sku, b.warehouse");
        if let Some(limit) = f.limit {
            $q.push(" LIMIT ").push_bind(i64::from(limit.clamp(1, 1000)));
        }
    }};
}

/// Pushes the ledger query for filter `$f` onto `$q` (shared by [`ledger`] and [`explain`]).
macro_rules! ledger_query {
    ($q:ident, $f:expr, $limit:expr) => {{
        let f = $f;
        $q.push(LEDGER_COLS);
        and_eq!($q,
            "sku" => f.sku.as_ref().map(Sku::as_str),
            "warehouse" => f.warehouse.as_ref().map(WarehouseCode::as_str),
        );
        if let Some(t) = f.from {
            $q.push(" AND posted_at >= ").push_bind(t);
        }
        if let Some(t) = f.to {
            $q.push(" AND posted_at < ").push_bind(t);
        }
        match f.after {
            Some(LedgerCursor { id, posted_at: Some(t) }) => {
                $q.push(" AND (posted_at, id) > (").push_bind(t).push(", ").push_bind(id).push(")");
            }
            Some(LedgerCursor { id, posted_at: None }) => {
                $q.push(" AND id > ").push_bind(id);
            }
            None => {}
        }
        $q.push(if f.in_time_order() { " ORDER BY posted_at, id" } else { " ORDER BY id" });
        $q.push(" LIMIT ").push_bind(i64::from($limit));
    }};
}

pub(crate) use {and_eq, balances_query, ledger_query};

pub(crate) async fn balances(
    db: &Database,
    f: &BalanceFilter,
) -> Result<Vec<Balance>, InventoryError> {
    let layers_json = match db {
        Database::Sqlite(_) => super::sqlite::LAYERS_JSON,
        Database::Postgres(_) => super::postgres::LAYERS_JSON,
    };
    on_pool!(db, pool => {
        let mut q = sqlx::QueryBuilder::new("");
        balances_query!(q, f, layers_json);
        let rows = q.build().fetch_all(pool).await?;
        rows.iter()
            .map(|r| {
                Ok(Balance {
                    sku: Sku::parse(&r.try_get::<String, _>("sku")?)
                        .map_err(|e| InventoryError::Corrupt(e.to_string()))?,
                    name: r.try_get("name")?,
                    warehouse: WarehouseCode::parse(&r.try_get::<String, _>("warehouse")?)
                        .map_err(|e| InventoryError::Corrupt(e.to_string()))?,
                    qty: dec("qty", &r.try_get::<String, _>("qty")?)?,
                    value: dec("value", &r.try_get::<String, _>("value")?)?,
                    rate: dec("rate", &r.try_get::<String, _>("rate")?)?,
                    min_qty: dec("min_qty", &r.try_get::<String, _>("min_qty")?)?,
                    level: stored(&r.try_get::<String, _>("level")?)?,
                    layers: serde_json::from_str(&r.try_get::<String, _>("layers")?)?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    })
}

pub(crate) const LEDGER_COLS: &str = "SELECT id, movement_id, kind, sku, warehouse, qty_change, unit_cost, \
     value_change, qty_after, value_after, rate_after, reference, posted_by, posted_at \
     FROM inv_ledger WHERE 1 = 1";

pub(crate) async fn ledger(db: &Database, f: &LedgerFilter) -> Result<LedgerPage, InventoryError> {
    let limit = f.limit.unwrap_or(100).clamp(1, 1000);
    let by_time = f.in_time_order();
    if f.after.is_some_and(|c| c.posted_at.is_some() != by_time) {
        return Err(InventoryError::invalid(
            "cursor",
            "cursor belongs to a page with other filters",
        ));
    }
    on_pool!(db, pool => {
        let mut q = sqlx::QueryBuilder::new("");
        ledger_query!(q, f, limit);
        let rows = q.build().fetch_all(pool).await?;
        let rows = rows.iter().map(ledger_of).collect::<Result<Vec<_>, _>>()?;
        let next = if rows.len() == limit as usize {
            rows.last().map(|r| LedgerCursor {
                id: r.id,
                posted_at: by_time.then_some(r.posted_at),
            })
        } else {
            None
        };
        Ok(LedgerPage { rows, next })
    })
}

pub(crate) async fn recent_ledger(
    db: &Database,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<LedgerRow>, InventoryError> {
    on_pool!(db, pool => {
        let mut q = sqlx::QueryBuilder::new(LEDGER_COLS);
        if let Some(id) = before {
            q.push(" AND id < ").push_bind(id);
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit.clamp(1, 1000)));
        let rows = q.build().fetch_all(pool).await?;
        rows.iter().map(ledger_of).collect()
    })
}

/// A page of articles by SKU: after `after`, archived ones when asked, and when `search` is
/// given only those whose SKU starts with it or whose name holds it (any case).
pub(crate) async fn articles(
    db: &Database,
    after: Option<&Sku>,
    limit: u32,
    include_archived: bool,
    search: Option<&str>,
) -> Result<Vec<Article>, InventoryError> {
    // SQLite's LIKE ignores ASCII case; PostgreSQL needs ILIKE, and for the SKU prefix the
    // form its b-tree over lower(sku) answers (SKUs are ASCII: the same matches).
    let (like, sku_like, close) = match db {
        Database::Sqlite(_) => ("LIKE", "sku LIKE ", ""),
        Database::Postgres(_) => ("ILIKE", "lower(sku) LIKE lower(", ")"),
    };
    on_pool!(db, pool => {
        let mut q = sqlx::QueryBuilder::new(format!("SELECT {ARTICLE_COLS} FROM inv_articles WHERE 1 = 1"));
        if let Some(s) = after {
            q.push(" AND sku > ").push_bind(s.as_str());
        }
        if !include_archived {
            q.push(" AND NOT archived");
        }
        if let Some(text) = search {
            // SQLite: the trigram index names the candidates (a superset: the text anywhere in
            // the SKU or the name), the LIKEs below keep the exact ones. It needs 3 characters;
            // shorter text is common and fills a page early in SKU order.
            if matches!(db, Database::Sqlite(_)) && text.chars().count() >= 3 {
                q.push(
                    " AND sku IN (SELECT r.sku FROM inv_article_search s \
                     JOIN inv_article_search_rows r ON r.id = s.rowid \
                     WHERE inv_article_search MATCH ",
                )
                .push_bind(fts_phrase(text))
                .push(")");
            }
            let text = like_escape(text);
            q.push(format!(" AND ({sku_like}"))
                .push_bind(format!("{text}%"))
                .push(format!("{close} ESCAPE '\\' OR name {like} "))
                .push_bind(format!("%{text}%"))
                .push(" ESCAPE '\\')");
        }
        q.push(" ORDER BY sku LIMIT ").push_bind(i64::from(limit));
        // Planned for its own text each time: a statement kept prepared on PostgreSQL soon gets
        // a generic plan, which cannot use a trigram index for a pattern it does not know.
        let rows = q.build().persistent(search.is_none()).fetch_all(pool).await?;
        rows.iter().map(article_of).collect()
    })
}

/// `text` as one FTS5 phrase: in double quotes, a double quote doubled. With the trigram
/// tokenizer a phrase matches wherever the text occurs, in any case.
fn fts_phrase(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// `text` with LIKE's wildcards (and the escape character) escaped by `\`.
fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A page of warehouses by code, after `after`.
pub(crate) async fn warehouses(
    db: &Database,
    after: Option<&WarehouseCode>,
    limit: u32,
    include_archived: bool,
    search: Option<&str>,
) -> Result<Vec<Warehouse>, InventoryError> {
    // A business has tens or hundreds of warehouses: a read of them all is cheap.
    let like = match db {
        Database::Sqlite(_) => "LIKE",
        Database::Postgres(_) => "ILIKE",
    };
    on_pool!(db, pool => {
        let mut q = sqlx::QueryBuilder::new(
            "SELECT code, name, archived, created_at, updated_at FROM inv_warehouses WHERE 1 = 1",
        );
        if let Some(c) = after {
            q.push(" AND code > ").push_bind(c.as_str());
        }
        if !include_archived {
            q.push(" AND NOT archived");
        }
        if let Some(text) = search {
            let text = like_escape(text);
            q.push(format!(" AND (code {like} "))
                .push_bind(format!("{text}%"))
                .push(format!(" ESCAPE '\\' OR name {like} "))
                .push_bind(format!("%{text}%"))
                .push(" ESCAPE '\\')");
        }
        q.push(" ORDER BY code LIMIT ").push_bind(i64::from(limit));
        let rows = q.build().fetch_all(pool).await?;
        rows.iter().map(warehouse_of).collect()
    })
}

/// Inbox records matching `f`, newest first.
pub(crate) async fn inbox_list(
    db: &Database,
    f: &InboxFilter,
) -> Result<Vec<InboxRecord>, InventoryError> {
    on_pool!(db, pool => {
        let mut q = sqlx::QueryBuilder::new(format!("SELECT {INBOX_COLS} FROM malaka_inbox WHERE 1 = 1"));
        if let Some(v) = f.state {
            q.push(" AND state = ").push_bind(v.as_str());
        }
        if let Some(v) = f.source.as_deref() {
            q.push(" AND source = ").push_bind(v);
        }
        if let Some(v) = f.before {
            q.push(" AND id < ").push_bind(v);
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(f.limit.unwrap_or(100).clamp(1, 1000)));
        let rows = q.build().fetch_all(pool).await?;
        rows.iter().map(inbox_of).collect()
    })
}

pub(crate) async fn outbox(
    db: &Database,
    after: i64,
    limit: u32,
) -> Result<Vec<OutboxEvent>, InventoryError> {
    on_pool!(db, pool => {
        let rows = sqlx::query(
            "SELECT id, topic, payload, created_at, published_at FROM malaka_outbox \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxEvent {
                    id: r.try_get("id")?,
                    topic: r.try_get("topic")?,
                    payload: serde_json::from_str(&r.try_get::<String, _>("payload")?)?,
                    created_at: r.try_get("created_at")?,
                    published_at: r.try_get("published_at")?,
                })
            })
            .collect()
    })
}

pub(crate) async fn verify(db: &Database) -> Result<VerifyReport, InventoryError> {
    on_pool!(db, pool => {
        let mut report = VerifyReport::default();
        let mut sums: BTreeMap<(String, String), (Decimal, Decimal, Decimal, Decimal)> =
            BTreeMap::new();
        let mut after = 0i64;
        loop {
            let rows = sqlx::query(
                "SELECT id, sku, warehouse, qty_change, value_change, qty_after, value_after \
                 FROM inv_ledger WHERE id > $1 ORDER BY id LIMIT 10000",
            )
            .bind(after)
            .fetch_all(pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                after = r.try_get("id")?;
                report.ledger_rows += 1;
                let key = (
                    r.try_get::<String, _>("sku")?,
                    r.try_get::<String, _>("warehouse")?,
                );
                let e = sums.entry(key).or_default();
                e.0 += dec("qty_change", &r.try_get::<String, _>("qty_change")?)?;
                e.1 += dec("value_change", &r.try_get::<String, _>("value_change")?)?;
                e.2 = dec("qty_after", &r.try_get::<String, _>("qty_after")?)?;
                e.3 = dec("value_after", &r.try_get::<String, _>("value_after")?)?;
            }
        }
        // The open FIFO layers of each balance hold its stock.
        let mut layered: BTreeMap<(String, String), Decimal> = BTreeMap::new();
        let mut after = (String::new(), String::new(), -1i64);
        loop {
            let rows = sqlx::query(
                "SELECT sku, warehouse, seq, qty FROM inv_layers \
                 WHERE qty <> '0' AND (sku, warehouse, seq) > ($1, $2, $3) \
                 ORDER BY sku, warehouse, seq LIMIT 10000",
            )
            .bind(&after.0)
            .bind(&after.1)
            .bind(after.2)
            .fetch_all(pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                after = (
                    r.try_get("sku")?,
                    r.try_get("warehouse")?,
                    r.try_get("seq")?,
                );
                let e = layered
                    .entry((after.0.clone(), after.1.clone()))
                    .or_default();
                *e += dec("qty", &r.try_get::<String, _>("qty")?)?;
            }
        }
        let balances = sqlx::query(
            "SELECT b.sku, b.warehouse, b.qty, b.value, a.valuation \
             FROM inv_balances b JOIN inv_articles a ON a.sku = b.sku ORDER BY b.sku, b.warehouse",
        )
        .fetch_all(pool)
        .await?;
        for b in &balances {
            report.balances += 1;
            let key = (
                b.try_get::<String, _>("sku")?,
                b.try_get::<String, _>("warehouse")?,
            );
            let bal = (
                dec("qty", &b.try_get::<String, _>("qty")?)?,
                dec("value", &b.try_get::<String, _>("value")?)?,
            );
            let fifo = stored::<ValuationMethod>(&b.try_get::<String, _>("valuation")?)?
                == ValuationMethod::Fifo;
            let held = layered.remove(&key).unwrap_or_default();
            let want = if fifo {
                bal.0.max(Decimal::ZERO)
            } else {
                Decimal::ZERO
            };
            let layers = (held != want).then_some(held);
            let (q, v, qa, va) = sums.remove(&key).unwrap_or_default();
            if (q, v) != bal || (qa, va) != bal || layers.is_some() {
                report.discrepancies.push(Discrepancy {
                    sku: key.0,
                    warehouse: key.1,
                    ledger: (q, v),
                    balance: bal,
                    layers,
                });
            }
        }
        for ((sku, warehouse), (q, v, _, _)) in sums {
            let layers = layered.remove(&(sku.clone(), warehouse.clone()));
            report.discrepancies.push(Discrepancy {
                sku,
                warehouse,
                ledger: (q, v),
                balance: (Decimal::ZERO, Decimal::ZERO),
                layers,
            });
        }
        for ((sku, warehouse), held) in layered {
            report.discrepancies.push(Discrepancy {
                sku,
                warehouse,
                ledger: (Decimal::ZERO, Decimal::ZERO),
                balance: (Decimal::ZERO, Decimal::ZERO),
                layers: Some(held),
            });
        }
        Ok(report)
    })
}
