//! Inventory storage on PostgreSQL. Postings lock the balance rows they touch (`FOR UPDATE`,
//! created first so that a first posting has a row to lock) in one order, and read articles
//! `FOR SHARE`, so an article change waits for the postings under way.

use std::collections::VecDeque;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::Row;
use sqlx::{PgConnection, PgPool};

use super::{
    ARTICLE_COLS, INBOX_COLS, Storage, article_of, dec, inbox_of, stored, text, warehouse_of,
};
use crate::error::InventoryError;
use crate::inbox::{
    Disposition, InboxAttempt, InboxEntry, InboxRecord, InboxState, Recorded, next_state,
};
use crate::posting::{
    ArticleFacts, LAYERS_PER_READ, LayerWindow, PostingHook, Session, Working, demands,
    movement_event, naming, plan_all,
};
use crate::topics::{TOPIC_LEVEL_CHANGED, TOPIC_MOVEMENT_POSTED};
use crate::types::{
    AlertLevel, Article, ArticlePatch, Layer, LedgerRow, Movement, NewArticle, NewMovement, Sku,
    Warehouse, WarehouseCode,
};
use crate::valuation::Stock;

/// A balance's open layers as a JSON array (oldest first) in a query over `inv_balances b`.
pub(crate) const LAYERS_JSON: &str = "(SELECT COALESCE(json_agg(json_build_object('qty', \
     l.qty, 'rate', l.rate, 'received_at', l.received_at) ORDER BY l.seq), '[]')::text \
     FROM inv_layers l WHERE l.sku = b.sku AND l.warehouse = b.warehouse AND l.qty <> '0')";

/// Inventory storage on one PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStorage {
    pool: PgPool,
}

impl PostgresStorage {
    /// The storage on `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl Storage for PostgresStorage {
    fn database(&self) -> malaka_db::Database {
        malaka_db::Database::Postgres(self.pool.clone())
    }

    async fn migrate(&self) -> Result<(), InventoryError> {
        let mut m = sqlx::migrate!("./migrations/postgres");
        // The other crates' migrations share the table.
        m.set_ignore_missing(true);
        m.run(&self.pool).await?;
        Ok(())
    }

    async fn create_article(&self, a: &NewArticle) -> Result<Article, InventoryError> {
        create_article(&self.pool, a).await
    }

    async fn article(&self, sku: &Sku) -> Result<Article, InventoryError> {
        article(&self.pool, sku).await
    }

    async fn update_article(
        &self,
        sku: &Sku,
        patch: &ArticlePatch,
        by: &str,
    ) -> Result<Article, InventoryError> {
        update_article(&self.pool, sku, patch, by).await
    }

    async fn delete_article(&self, sku: &Sku) -> Result<Option<Article>, InventoryError> {
        delete_article(&self.pool, sku).await
    }

    async fn create_warehouse(
        &self,
        code: &WarehouseCode,
        name: &str,
    ) -> Result<Warehouse, InventoryError> {
        create_warehouse(&self.pool, code, name).await
    }

    async fn warehouse(&self, code: &WarehouseCode) -> Result<Warehouse, InventoryError> {
        warehouse(&self.pool, code).await
    }

    async fn update_warehouse(
        &self,
        code: &WarehouseCode,
        name: Option<&str>,
        archived: Option<bool>,
    ) -> Result<Warehouse, InventoryError> {
        update_warehouse(&self.pool, code, name, archived).await
    }

    async fn post_batch(
        &self,
        ms: &[NewMovement],
        by: &str,
        inbox: Option<&InboxEntry>,
        hook: Option<&dyn PostingHook>,
    ) -> Result<Vec<Movement>, InventoryError> {
        post_batch(&self.pool, ms, by, inbox, hook).await
    }

    async fn record_inbox(
        &self,
        e: &InboxEntry,
        disposition: Disposition,
        error: Option<&str>,
    ) -> Result<Recorded, InventoryError> {
        record_inbox(&self.pool, e, disposition, error).await
    }

    async fn inbox_find(
        &self,
        source: &str,
        message_id: &str,
    ) -> Result<Option<InboxRecord>, InventoryError> {
        inbox_find(&self.pool, source, message_id).await
    }

    async fn inbox_get(&self, id: i64) -> Result<Option<InboxRecord>, InventoryError> {
        inbox_get(&self.pool, id).await
    }

    async fn inbox_reopen(&self, id: i64, was: InboxState) -> Result<(), InventoryError> {
        inbox_reopen(&self.pool, id, was).await
    }

    async fn inbox_prune(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, InventoryError> {
        inbox_prune(&self.pool, before, limit).await
    }

    async fn generation(&self) -> Result<i64, InventoryError> {
        generation(&self.pool).await
    }
}

async fn create_article(pool: &PgPool, a: &NewArticle) -> Result<Article, InventoryError> {
    let now = Utc::now();
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO inv_articles ({ARTICLE_COLS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, FALSE, $8, $8) \
         ON CONFLICT (sku) DO NOTHING RETURNING {ARTICLE_COLS}"
    )))
    .bind(a.sku.as_str())
    .bind(&a.name)
    .bind(&a.unit)
    .bind(a.valuation.as_str())
    .bind(text(a.min_qty.get()))
    .bind(text(a.reorder_qty.get()))
    .bind(a.allow_negative)
    .bind(now)
    .fetch_optional(pool)
    .await?;
    match row {
        Some(r) => article_of(&r),
        None => Err(InventoryError::Conflict {
            code: "duplicate_sku",
            message: format!("an article with sku {:?} already exists", a.sku.as_str()),
        }),
    }
}

async fn article(pool: &PgPool, sku: &Sku) -> Result<Article, InventoryError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ARTICLE_COLS} FROM inv_articles WHERE sku = $1"
    )))
    .bind(sku.as_str())
    .fetch_optional(pool)
    .await?;
    match row {
        Some(r) => article_of(&r),
        None => Err(InventoryError::NotFound {
            what: "article",
            key: sku.to_string(),
        }),
    }
}

async fn update_article(
    pool: &PgPool,
    sku: &Sku,
    p: &ArticlePatch,
    by: &str,
) -> Result<Article, InventoryError> {
    let mut tx = pool.begin_with("BEGIN").await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ARTICLE_COLS} FROM inv_articles WHERE sku = $1 FOR UPDATE",
    )))
    .bind(sku.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(InventoryError::NotFound {
            what: "article",
            key: sku.to_string(),
        });
    };
    let old = article_of(&row)?;
    if let Some(v) = p.valuation
        && v != old.valuation
    {
        let used: Option<i64> =
            sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM inv_ledger WHERE sku = $1 LIMIT 1")
                .bind(sku.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if used.is_some() {
            return Err(InventoryError::Conflict {
                code: "valuation_locked",
                message: format!(
                    "article {sku} has ledger rows; its valuation method stays {}",
                    old.valuation.as_str()
                ),
            });
        }
    }
    let now = Utc::now();
    let min_qty = p.min_qty.map_or(old.min_qty, |q| q.get());
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE inv_articles SET name = $2, unit = $3, valuation = $4, min_qty = $5, \
                reorder_qty = $6, allow_negative = $7, archived = $8, updated_at = $9 \
         WHERE sku = $1 RETURNING {ARTICLE_COLS}"
    )))
    .bind(sku.as_str())
    .bind(p.name.as_deref().unwrap_or(&old.name))
    .bind(p.unit.as_deref().unwrap_or(&old.unit))
    .bind(p.valuation.unwrap_or(old.valuation).as_str())
    .bind(text(min_qty))
    .bind(text(p.reorder_qty.map_or(old.reorder_qty, |q| q.get())))
    .bind(p.allow_negative.unwrap_or(old.allow_negative))
    .bind(p.archived.unwrap_or(old.archived))
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    let new = article_of(&row)?;
    if min_qty != old.min_qty {
        // The thresholds moved: levels may change without a posting.
        let rows = sqlx::query(
            "SELECT warehouse, qty, level FROM inv_balances WHERE sku = $1 ORDER BY warehouse",
        )
        .bind(sku.as_str())
        .fetch_all(&mut *tx)
        .await?;
        for r in rows {
            let warehouse: String = r.try_get("warehouse")?;
            let qty = dec("qty", &r.try_get::<String, _>("qty")?)?;
            let from: AlertLevel = stored(&r.try_get::<String, _>("level")?)?;
            let to = AlertLevel::of(qty, min_qty);
            if from == to {
                continue;
            }
            sqlx::query("UPDATE inv_balances SET level = $3 WHERE sku = $1 AND warehouse = $2")
                .bind(sku.as_str())
                .bind(&warehouse)
                .bind(to.as_str())
                .execute(&mut *tx)
                .await?;
            let payload = json!({
                "sku": sku.as_str(), "warehouse": warehouse, "from": from, "to": to,
                "qty": text(qty), "min_qty": text(min_qty), "movement_id": null,
                "cause": "min_qty_changed", "by": by, "at": now,
            });
            sqlx::query(
                "INSERT INTO malaka_outbox (topic, payload, created_at) VALUES ($1, $2, $3)",
            )
            .bind(TOPIC_LEVEL_CHANGED)
            .bind(payload.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
    }
    bump_generation(&mut tx).await?;
    tx.commit().await?;
    Ok(new)
}

async fn delete_article(pool: &PgPool, sku: &Sku) -> Result<Option<Article>, InventoryError> {
    let mut tx = pool.begin_with("BEGIN").await?;
    let used: Option<i64> =
        sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM inv_ledger WHERE sku = $1 LIMIT 1")
            .bind(sku.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    let out = if used.is_some() {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE inv_articles SET archived = TRUE, updated_at = $2 WHERE sku = $1 \
             RETURNING {ARTICLE_COLS}"
        )))
        .bind(sku.as_str())
        .bind(Utc::now())
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            Some(r) => Some(article_of(&r)?),
            None => {
                return Err(InventoryError::NotFound {
                    what: "article",
                    key: sku.to_string(),
                });
            }
        }
    } else {
        sqlx::query("DELETE FROM inv_balances WHERE sku = $1")
            .bind(sku.as_str())
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM inv_articles WHERE sku = $1")
            .bind(sku.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(InventoryError::NotFound {
                what: "article",
                key: sku.to_string(),
            });
        }
        None
    };
    bump_generation(&mut tx).await?;
    tx.commit().await?;
    Ok(out)
}

async fn create_warehouse(
    pool: &PgPool,
    code: &WarehouseCode,
    name: &str,
) -> Result<Warehouse, InventoryError> {
    let row = sqlx::query(
        "INSERT INTO inv_warehouses (code, name, archived, created_at, updated_at) \
         VALUES ($1, $2, FALSE, $3, $3) ON CONFLICT (code) DO NOTHING \
         RETURNING code, name, archived, created_at, updated_at",
    )
    .bind(code.as_str())
    .bind(name)
    .bind(Utc::now())
    .fetch_optional(pool)
    .await?;
    match row {
        Some(r) => warehouse_of(&r),
        None => Err(InventoryError::Conflict {
            code: "duplicate_warehouse",
            message: format!("a warehouse with code {:?} already exists", code.as_str()),
        }),
    }
}

async fn warehouse(pool: &PgPool, code: &WarehouseCode) -> Result<Warehouse, InventoryError> {
    let row = sqlx::query(
        "SELECT code, name, archived, created_at, updated_at FROM inv_warehouses WHERE code = $1",
    )
    .bind(code.as_str())
    .fetch_optional(pool)
    .await?;
    match row {
        Some(r) => warehouse_of(&r),
        None => Err(InventoryError::NotFound {
            what: "warehouse",
            key: code.to_string(),
        }),
    }
}

async fn update_warehouse(
    pool: &PgPool,
    code: &WarehouseCode,
    name: Option<&str>,
    archived: Option<bool>,
) -> Result<Warehouse, InventoryError> {
    let row = sqlx::query(
        "UPDATE inv_warehouses SET name = COALESCE($2, name), \
                archived = COALESCE($3, archived), updated_at = $4 \
         WHERE code = $1 RETURNING code, name, archived, created_at, updated_at",
    )
    .bind(code.as_str())
    .bind(name)
    .bind(archived)
    .bind(Utc::now())
    .fetch_optional(pool)
    .await?;
    match row {
        Some(r) => warehouse_of(&r),
        None => Err(InventoryError::NotFound {
            what: "warehouse",
            key: code.to_string(),
        }),
    }
}

async fn post_batch(
    pool: &PgPool,
    ms: &[NewMovement],
    by: &str,
    inbox: Option<&InboxEntry>,
    hook: Option<&dyn PostingHook>,
) -> Result<Vec<Movement>, InventoryError> {
    let mut tx = pool.begin_with("BEGIN").await?;
    let mut session = Session::default();
    let out = post_in(&mut tx, ms, by, &mut session, false, inbox, hook).await?;
    tx.commit().await?;
    Ok(out)
}

/// The message's record, read inside a write transaction (locked on PostgreSQL).
async fn inbox_locked(
    conn: &mut PgConnection,
    e: &InboxEntry,
) -> Result<Option<InboxRecord>, InventoryError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {INBOX_COLS} FROM malaka_inbox WHERE source = $1 AND message_id = $2 FOR UPDATE",
    )))
    .bind(&e.source)
    .bind(&e.id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(inbox_of).transpose()
}

/// Writes the message's record as `state` (a new row, or the `retrying` one
/// updated), with this attempt's error and the movements it posted; a `processed`
/// record also writes the entry's event to the outbox.
async fn inbox_write(
    conn: &mut PgConnection,
    e: &InboxEntry,
    had: Option<&InboxRecord>,
    state: InboxState,
    error: Option<&str>,
    movements: &[&str],
    now: DateTime<Utc>,
) -> Result<(), InventoryError> {
    let mut errors = had.map(|r| r.errors.clone()).unwrap_or_default();
    if let Some(why) = error {
        errors.push(InboxAttempt {
            at: now,
            error: why.to_owned(),
        });
    }
    let errors = serde_json::to_string(&errors)?;
    let movements = serde_json::to_string(movements)?;
    match had {
        Some(r) => {
            sqlx::query(
                "UPDATE malaka_inbox SET state = $2, attempts = attempts + 1, \
                        errors = $3, movements = $4, payload = $5, updated_at = $6 \
                 WHERE id = $1",
            )
            .bind(r.id)
            .bind(state.as_str())
            .bind(&errors)
            .bind(&movements)
            .bind(&e.payload)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
        None => {
            sqlx::query(
                "INSERT INTO malaka_inbox (source, message_id, kind, payload, state, \
                        attempts, errors, movements, received_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, $8)",
            )
            .bind(&e.source)
            .bind(&e.id)
            .bind(&e.kind)
            .bind(&e.payload)
            .bind(state.as_str())
            .bind(&errors)
            .bind(&movements)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
    }
    if state == InboxState::Processed
        && let Some(event) = &e.event
    {
        let payload = json!({
            "source": e.source, "message_id": e.id, "data": event,
        });
        sqlx::query("INSERT INTO malaka_outbox (topic, payload, created_at) VALUES ($1, $2, $3)")
            .bind(&e.kind)
            .bind(payload.to_string())
            .bind(now)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn record_inbox(
    pool: &PgPool,
    e: &InboxEntry,
    disposition: Disposition,
    error: Option<&str>,
) -> Result<Recorded, InventoryError> {
    let now = Utc::now();
    let mut tx = pool.begin_with("BEGIN").await?;
    let had = inbox_locked(&mut tx, e).await?;
    if let Some(r) = had.as_ref().filter(|r| r.state.is_final()) {
        return Ok(Recorded::Duplicate(r.clone()));
    }
    let attempts = had.as_ref().map_or(1, |r| r.attempts + 1);
    let state = next_state(disposition, attempts);
    inbox_write(&mut tx, e, had.as_ref(), state, error, &[], now).await?;
    let r = inbox_locked(&mut tx, e).await?.ok_or_else(|| {
        InventoryError::Corrupt("an inbox record vanished in its transaction".into())
    })?;
    tx.commit().await?;
    Ok(Recorded::Now(r))
}

async fn inbox_find(
    pool: &PgPool,
    source: &str,
    message_id: &str,
) -> Result<Option<InboxRecord>, InventoryError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {INBOX_COLS} FROM malaka_inbox WHERE source = $1 AND message_id = $2"
    )))
    .bind(source)
    .bind(message_id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(inbox_of).transpose()
}

async fn inbox_get(pool: &PgPool, id: i64) -> Result<Option<InboxRecord>, InventoryError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {INBOX_COLS} FROM malaka_inbox WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(inbox_of).transpose()
}

async fn inbox_reopen(pool: &PgPool, id: i64, was: InboxState) -> Result<(), InventoryError> {
    let n = sqlx::query(
        "UPDATE malaka_inbox SET state = 'retrying', updated_at = $3 \
         WHERE id = $1 AND state = $2",
    )
    .bind(id)
    .bind(was.as_str())
    .bind(Utc::now())
    .execute(pool)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(InventoryError::Conflict {
            code: "not_replayable",
            message: format!("inbox record {id} changed meanwhile; look again"),
        });
    }
    Ok(())
}

async fn inbox_prune(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: u32,
) -> Result<u64, InventoryError> {
    Ok(sqlx::query(
        "DELETE FROM malaka_inbox WHERE id IN (SELECT id FROM malaka_inbox \
         WHERE received_at < $1 AND state <> 'retrying' ORDER BY id LIMIT $2)",
    )
    .bind(before)
    .bind(i64::from(limit))
    .execute(pool)
    .await?
    .rows_affected())
}

/// Posts `ms` (1 to [`MAX_BATCH`](crate::MAX_BATCH) movements) inside the caller's transaction
/// on `conn`, so that an order, an import or an audit record commits with the postings it
/// causes (as `malaka_jobs` offers `enqueue_in`): the movements, ledger rows, balances, layers
/// and outbox events are written, and nothing is durable until the caller commits.
/// On PostgreSQL the balances it touches stay locked (`FOR UPDATE`) until the caller commits.
/// After the commit, [`Inventory::posted`](crate::Inventory::posted) wakes the outbox relay.
///
/// # Errors
/// As [`Inventory::post_batch`](crate::Inventory::post_batch). After an error the transaction
/// may hold part of the writes: roll it back.
pub async fn post_in_tx(
    conn: &mut PgConnection,
    ms: &[NewMovement],
    by: &str,
) -> Result<Vec<Movement>, InventoryError> {
    crate::inventory::check_batch(ms)?;
    let mut session = Session::default();
    post_in(conn, ms, by, &mut session, false, None, None).await
}

/// Posts `ms` through `conn`, which is inside a write transaction, in two phases:
/// load and compute (a refusal returns here, having written nothing and left
/// `session` as it was), then write the movements, ledger rows and events. Balances
/// are written now, or, with `defer_balances`, left changed in `session` for
/// [`write_balances`].
pub(crate) async fn post_in(
    conn: &mut PgConnection,
    ms: &[NewMovement],
    by: &str,
    session: &mut Session,
    defer_balances: bool,
    inbox: Option<&InboxEntry>,
    hook: Option<&dyn PostingHook>,
) -> Result<Vec<Movement>, InventoryError> {
    let now = Utc::now();
    let mut inbox_had = None;
    if let Some(e) = inbox {
        inbox_had = inbox_locked(&mut *conn, e).await?;
        if let Some(r) = inbox_had.as_ref().filter(|r| r.state.is_final()) {
            return Err(InventoryError::Conflict {
                code: "duplicate_message",
                message: format!(
                    "message {} from {} was already received ({})",
                    e.id,
                    e.source,
                    r.state.as_str()
                ),
            });
        }
    }
    // Articles and warehouses: they exist and take movements.
    let mut keys: Vec<(Sku, WarehouseCode)> = Vec::new();
    let mut codes: Vec<WarehouseCode> = Vec::new();
    for (index, m) in ms.iter().enumerate() {
        keys.push((m.sku.clone(), m.warehouse.clone()));
        codes.push(m.warehouse.clone());
        if let Some(to) = &m.to_warehouse {
            keys.push((m.sku.clone(), to.clone()));
            codes.push(to.clone());
        }
        if session.facts.contains_key(&m.sku) {
            continue;
        }
        // Shared lock on PostgreSQL: an article change (valuation, min_qty) waits
        // for the postings under way, and they for it.
        let row = sqlx::query(
            "SELECT valuation, min_qty, allow_negative, archived FROM inv_articles \
             WHERE sku = $1 FOR SHARE",
        )
        .bind(m.sku.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else {
            return Err(InventoryError::NotFound {
                what: "article",
                key: m.sku.to_string(),
            }
            .at(index, Some("sku")));
        };
        if row.try_get::<bool, _>("archived")? {
            return Err(InventoryError::Conflict {
                code: "article_archived",
                message: format!("article {} is archived and takes no movements", m.sku),
            }
            .at(index, Some("sku")));
        }
        session.facts.insert(
            m.sku.clone(),
            ArticleFacts {
                valuation: stored(&row.try_get::<String, _>("valuation")?)?,
                min_qty: dec("min_qty", &row.try_get::<String, _>("min_qty")?)?,
                allow_negative: row.try_get("allow_negative")?,
            },
        );
    }
    codes.sort();
    codes.dedup();
    for code in &codes {
        if session.warehouses.contains(code) {
            continue;
        }
        let archived: Option<bool> =
            sqlx::query_scalar("SELECT archived FROM inv_warehouses WHERE code = $1")
                .bind(code.as_str())
                .fetch_optional(&mut *conn)
                .await?;
        // The first movement naming it is the one refused.
        let (index, field) = naming(ms, code);
        match archived {
            None => {
                return Err(InventoryError::NotFound {
                    what: "warehouse",
                    key: code.to_string(),
                }
                .at(index, Some(field)));
            }
            Some(true) => {
                return Err(InventoryError::Conflict {
                    code: "warehouse_archived",
                    message: format!("warehouse {code} is archived and takes no movements"),
                }
                .at(index, Some(field)));
            }
            Some(false) => {
                session.warehouses.insert(code.clone());
            }
        }
    }
    // Lock every balance the batch touches, in one order: no deadlock.
    keys.sort();
    keys.dedup();
    for key in &keys {
        if session.work.contains_key(key) {
            continue;
        }
        let (sku, wh) = key;
        let f = session
            .facts
            .get(sku)
            .ok_or_else(|| InventoryError::Corrupt("article facts missing".into()))?;
        // A row to lock, even for a first posting (rolled back with a refusal).
        sqlx::query(
            "INSERT INTO inv_balances (sku, warehouse, qty, value, rate, layer_seq, level, updated_at) \
             VALUES ($1, $2, '0', '0', '0', 0, $3, $4) ON CONFLICT (sku, warehouse) DO NOTHING",
        )
        .bind(sku.as_str())
        .bind(wh.as_str())
        .bind(AlertLevel::OutOfStock.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?;
        let row = sqlx::query(
            "SELECT qty, value, rate, layer_seq, level FROM inv_balances \
             WHERE sku = $1 AND warehouse = $2 FOR UPDATE",
        )
        .bind(sku.as_str())
        .bind(wh.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        let working = match row {
            Some(row) => Working::loaded(
                Stock {
                    qty: dec("qty", &row.try_get::<String, _>("qty")?)?,
                    value: dec("value", &row.try_get::<String, _>("value")?)?,
                    rate: dec("rate", &row.try_get::<String, _>("rate")?)?,
                    layers: VecDeque::new(),
                },
                stored(&row.try_get::<String, _>("level")?)?,
                f,
                row.try_get("layer_seq")?,
            ),
            None => Working::loaded(Stock::default(), AlertLevel::OutOfStock, f, 0),
        };
        session.work.insert(key.clone(), working);
    }
    // FIFO: the oldest stored layers, as many as these postings may consume.
    for (key, demand) in demands(ms) {
        let Some(w) = session.work.get_mut(&key) else {
            continue;
        };
        while w.demand_window(demand) {
            let read = load_layers(&mut *conn, &key, &w.layers).await?;
            let complete = read.len() < LAYERS_PER_READ;
            w.extend_window(read, complete);
        }
    }
    let planned = match plan_all(ms, by, now, session, &keys) {
        Ok(p) => p,
        Err(e) => return Err(e),
    };
    // From here on a failure leaves writes behind (see `Session::writing`).
    session.writing = true;
    let mut out = Vec::with_capacity(planned.len());
    let mut events: Vec<(&str, serde_json::Value)> = Vec::new();
    for (m, id, pending, levels) in planned {
        sqlx::query(
            "INSERT INTO inv_movements (id, kind, sku, warehouse, to_warehouse, qty, \
             unit_cost, reference, note, posted_by, posted_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&id)
        .bind(m.kind.as_str())
        .bind(m.sku.as_str())
        .bind(m.warehouse.as_str())
        .bind(m.to_warehouse.as_ref().map(WarehouseCode::as_str))
        .bind(text(m.qty.get()))
        .bind(m.unit_cost.map(|c| text(c.get())))
        .bind(m.reference.as_deref())
        .bind(m.note.as_deref())
        .bind(by)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        let mut rows = Vec::with_capacity(pending.len());
        for p in pending {
            let ledger_id: i64 = sqlx::query_scalar(
                "INSERT INTO inv_ledger (movement_id, kind, sku, warehouse, qty_change, \
                 unit_cost, value_change, qty_after, value_after, rate_after, reference, \
                 posted_by, posted_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
            )
            .bind(&id)
            .bind(m.kind.as_str())
            .bind(m.sku.as_str())
            .bind(p.warehouse.as_str())
            .bind(text(p.change.qty))
            .bind(text(p.change.unit_cost))
            .bind(text(p.change.value))
            .bind(text(p.after.qty))
            .bind(text(p.after.value))
            .bind(text(p.after.rate))
            .bind(m.reference.as_deref())
            .bind(by)
            .bind(now)
            .fetch_one(&mut *conn)
            .await?;
            session.layers_of(ledger_id, &m.sku, &p);
            rows.push(LedgerRow {
                id: ledger_id,
                movement_id: id.clone(),
                kind: m.kind,
                sku: m.sku.clone(),
                warehouse: p.warehouse,
                qty_change: p.change.qty.normalize(),
                unit_cost: p.change.unit_cost.normalize(),
                value_change: p.change.value.normalize(),
                qty_after: p.after.qty.normalize(),
                value_after: p.after.value.normalize(),
                rate_after: p.after.rate.normalize(),
                reference: m.reference.clone(),
                posted_by: by.to_owned(),
                posted_at: now,
            });
        }
        let movement = Movement {
            id,
            kind: m.kind,
            sku: m.sku.clone(),
            warehouse: m.warehouse.clone(),
            to_warehouse: m.to_warehouse.clone(),
            qty: m.qty.get(),
            unit_cost: m.unit_cost.map(crate::types::Money::get),
            reference: m.reference.clone(),
            note: m.note.clone(),
            posted_by: by.to_owned(),
            posted_at: now,
            rows,
        };
        // Level changes follow the posting that caused them.
        events.push((TOPIC_MOVEMENT_POSTED, movement_event(&movement)));
        events.extend(levels);
        out.push(movement);
    }
    if let Some(e) = inbox {
        let ids: Vec<&str> = out.iter().map(|m: &Movement| m.id.as_str()).collect();
        inbox_write(
            &mut *conn,
            e,
            inbox_had.as_ref(),
            InboxState::Processed,
            None,
            &ids,
            now,
        )
        .await?;
    }
    if let Some(h) = hook {
        h.postgres(&mut *conn, &out).await?;
    }
    if !defer_balances {
        write_balances(&mut *conn, session, now).await?;
    }
    for (topic, payload) in events {
        sqlx::query("INSERT INTO malaka_outbox (topic, payload, created_at) VALUES ($1, $2, $3)")
            .bind(topic)
            .bind(payload.to_string())
            .bind(now)
            .execute(&mut *conn)
            .await?;
    }
    session.writing = false;
    Ok(out)
}

/// Bumps the balances' generation (SQLite; see `inv_generation`).
async fn bump_generation(conn: &mut PgConnection) -> Result<(), InventoryError> {
    // PostgreSQL nodes learn of changes from the outbox's NOTIFY instead.
    let _ = conn;
    Ok(())
}

async fn generation(pool: &PgPool) -> Result<i64, InventoryError> {
    Ok(
        sqlx::query_scalar("SELECT n FROM inv_generation WHERE id = 1")
            .fetch_optional(pool)
            .await?
            .unwrap_or(0),
    )
}

/// The next stored open layers of a balance after the ones `window` loaded, oldest
/// first, at most [`LAYERS_PER_READ`].
async fn load_layers(
    conn: &mut PgConnection,
    (sku, wh): &(Sku, WarehouseCode),
    window: &LayerWindow,
) -> Result<Vec<Layer>, InventoryError> {
    let rows = sqlx::query(
        "SELECT seq, qty, rate, received_at FROM inv_layers \
         WHERE sku = $1 AND warehouse = $2 AND qty <> '0' AND seq > $3 AND seq < $4 \
         ORDER BY seq LIMIT $5",
    )
    .bind(sku.as_str())
    .bind(wh.as_str())
    .bind(window.last_loaded)
    .bind(window.stored_end)
    .bind(LAYERS_PER_READ as i64)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let mut l = Layer::new(
                dec("qty", &r.try_get::<String, _>("qty")?)?,
                dec("rate", &r.try_get::<String, _>("rate")?)?,
                r.try_get("received_at")?,
            );
            l.seq = Some(r.try_get("seq")?);
            Ok(l)
        })
        .collect()
}

/// Writes the balances `session` changed, their layers and the layer consumptions
/// recorded (and marks them written).
pub(crate) async fn write_balances(
    conn: &mut PgConnection,
    session: &mut Session,
    now: DateTime<Utc>,
) -> Result<(), InventoryError> {
    if session.work.values().any(|w| w.changed) {
        bump_generation(&mut *conn).await?;
    }
    for ((sku, wh), w) in &mut session.work {
        if !w.changed {
            continue;
        }
        sqlx::query(
            "INSERT INTO inv_balances (sku, warehouse, qty, value, rate, layer_seq, level, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (sku, warehouse) DO UPDATE SET qty = excluded.qty, \
                value = excluded.value, rate = excluded.rate, layer_seq = excluded.layer_seq, \
                level = excluded.level, updated_at = excluded.updated_at",
        )
        .bind(sku.as_str())
        .bind(wh.as_str())
        .bind(text(w.stock.qty))
        .bind(text(w.stock.value))
        .bind(text(w.stock.rate))
        .bind(w.layers.next_seq)
        .bind(w.level.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?;
        write_layers(&mut *conn, sku, wh, w).await?;
        w.changed = false;
    }
    for chunk in session.uses.chunks(100) {
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO inv_layer_uses (ledger_id, sku, warehouse, seq, qty, rate) ",
        );
        q.push_values(chunk, |mut b, u| {
            b.push_bind(u.ledger_id)
                .push_bind(u.sku.as_str())
                .push_bind(u.warehouse.as_str())
                .push_bind(u.seq)
                .push_bind(text(u.qty))
                .push_bind(text(u.rate));
        });
        q.build().execute(&mut *conn).await?;
    }
    session.uses.clear();
    Ok(())
}

/// Writes what a posting transaction did to a balance's stored layers: the stored
/// ones it consumed (all of them when its stock went to zero or below), the new ones
/// it received; then takes the window as stored.
async fn write_layers(
    conn: &mut PgConnection,
    sku: &Sku,
    wh: &WarehouseCode,
    w: &mut Working,
) -> Result<(), InventoryError> {
    let now_qty = |stock: &Stock, seq: i64| {
        stock
            .layers
            .iter()
            .find(|l| l.seq == Some(seq))
            .map_or(Decimal::ZERO, |l| l.qty)
    };
    if w.layers.cleared {
        sqlx::query(
            "UPDATE inv_layers SET qty = '0' WHERE sku = $1 AND warehouse = $2 AND qty <> '0'",
        )
        .bind(sku.as_str())
        .bind(wh.as_str())
        .execute(&mut *conn)
        .await?;
    }
    for (&seq, &was) in &w.layers.loaded {
        let qty = now_qty(&w.stock, seq);
        if qty == was || (w.layers.cleared && qty.is_zero()) {
            continue;
        }
        sqlx::query(
            "UPDATE inv_layers SET qty = $4 WHERE sku = $1 AND warehouse = $2 AND seq = $3",
        )
        .bind(sku.as_str())
        .bind(wh.as_str())
        .bind(seq)
        .bind(text(qty))
        .execute(&mut *conn)
        .await?;
    }
    if !w.layers.created.is_empty() {
        let created: Vec<(i64, Layer, Option<i64>)> = w
            .layers
            .created
            .iter()
            .map(|(&seq, &(l, by))| (seq, l, by))
            .collect();
        for chunk in created.chunks(100) {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO inv_layers (sku, warehouse, seq, qty, rate, received_at, ledger_id) ",
            );
            q.push_values(chunk, |mut b, (seq, l, by)| {
                b.push_bind(sku.as_str())
                    .push_bind(wh.as_str())
                    .push_bind(*seq)
                    .push_bind(text(now_qty(&w.stock, *seq)))
                    .push_bind(text(l.rate))
                    .push_bind(l.received_at)
                    .push_bind(*by);
            });
            q.build().execute(&mut *conn).await?;
        }
    }
    // What is in memory is now what is stored.
    let end = w.layers.next_seq;
    w.layers.loaded = w
        .stock
        .layers
        .iter()
        .filter_map(|l| Some((l.seq?, l.qty)))
        .collect();
    w.layers.created.clear();
    w.layers.cleared = false;
    if w.layers.more {
        // Stored layers still follow the loaded ones; the new ones are stored after them.
        w.layers.stored_end = w.layers.stored_end.min(end);
    } else {
        w.layers.stored_end = end;
        w.layers.last_loaded = end.saturating_sub(1);
    }
    Ok(())
}
