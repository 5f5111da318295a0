//! Alerts on SQLite: writes take this process's write turn (`crate::WriteGate`).

use super::*;
use sqlx::Row;

use super::ALERT_COLS;

/// Moves the alert of (sku, warehouse) to `to` as of watermark `event`.
pub(super) async fn apply(
    pool: &SqlitePool,
    effects: Option<&dyn AlertEffects>,
    event: i64,
    change: &LevelChange,
    cause: Option<i64>,
) -> Result<Option<AlertChange>, InventoryError> {
    let _turn = sqlite_write_turn(pool).await;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let latest = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ALERT_COLS}, last_event FROM inv_alerts WHERE sku = $1 AND warehouse = $2 \
         ORDER BY id DESC LIMIT 1",
    )))
    .bind(&change.sku)
    .bind(&change.warehouse)
    .fetch_optional(&mut *tx)
    .await?;
    let mut open = None;
    if let Some(r) = &latest {
        let last: i64 = r.try_get("last_event")?;
        if last >= event {
            return Ok(None);
        }
        let a = alert_of(r)?;
        if a.cleared_at.is_none() {
            open = Some(a);
        }
    }
    let Some((action, from)) = transition(open.as_ref().map(|a| a.level), change.to) else {
        if let Some(a) = &open {
            // Same level: keep the figures current, and the watermark.
            sqlx::query(
                "UPDATE inv_alerts SET qty = $1, min_qty = $2, last_event = $3 WHERE id = $4",
            )
            .bind(text(change.qty))
            .bind(text(change.min_qty))
            .bind(event)
            .bind(a.id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        return Ok(None);
    };
    let now = Utc::now();
    let row = match (&open, action) {
        (None, _) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO inv_alerts (sku, warehouse, level, qty, min_qty, raised_at, \
                 updated_at, last_event) VALUES ($1, $2, $3, $4, $5, $6, $6, $7) \
                 RETURNING {ALERT_COLS}"
            )))
            .bind(&change.sku)
            .bind(&change.warehouse)
            .bind(change.to.as_str())
            .bind(text(change.qty))
            .bind(text(change.min_qty))
            .bind(now)
            .bind(event)
            .fetch_one(&mut *tx)
            .await?
        }
        (Some(a), AlertAction::Cleared) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE inv_alerts SET qty = $1, min_qty = $2, updated_at = $3, \
                 cleared_at = $3, last_event = $4 WHERE id = $5 RETURNING {ALERT_COLS}"
            )))
            .bind(text(change.qty))
            .bind(text(change.min_qty))
            .bind(now)
            .bind(event)
            .bind(a.id)
            .fetch_one(&mut *tx)
            .await?
        }
        (Some(a), _) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE inv_alerts SET level = $1, qty = $2, min_qty = $3, updated_at = $4, \
                 last_event = $5 WHERE id = $6 RETURNING {ALERT_COLS}"
            )))
            .bind(change.to.as_str())
            .bind(text(change.qty))
            .bind(text(change.min_qty))
            .bind(now)
            .bind(event)
            .bind(a.id)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    let out = AlertChange {
        action,
        from,
        alert: alert_of(&row)?,
        cause,
    };
    write_event(&mut tx, &out, now).await?;
    if let Some(fx) = effects {
        fx.sqlite(&mut tx, &out).await?;
    }
    tx.commit().await?;
    Ok(Some(out))
}

async fn write_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    change: &AlertChange,
    now: DateTime<Utc>,
) -> Result<(), InventoryError> {
    sqlx::query("INSERT INTO malaka_outbox (topic, payload, created_at) VALUES ($1, $2, $3)")
        .bind(TOPIC_ALERT)
        .bind(change.payload().to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(super) async fn sweep(
    pool: &SqlitePool,
    effects: Option<&dyn AlertEffects>,
) -> Result<(SweepReport, Vec<AlertChange>), InventoryError> {
    // Everything up to the newest event is reflected in what is read next, so an
    // older event still on its way must not undo a repair.
    let watermark: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM malaka_outbox")
        .fetch_one(pool)
        .await?;
    let watermark = watermark.unwrap_or(0);
    let balances = sqlx::query(
        "SELECT b.sku, b.warehouse, b.qty, a.min_qty FROM inv_balances b \
         JOIN inv_articles a ON a.sku = b.sku ORDER BY b.sku, b.warehouse",
    )
    .fetch_all(pool)
    .await?;
    let open: BTreeMap<(String, String), AlertLevel> =
        sqlx::query("SELECT sku, warehouse, level FROM inv_alerts WHERE cleared_at IS NULL")
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    (
                        r.try_get::<String, _>("sku")?,
                        r.try_get::<String, _>("warehouse")?,
                    ),
                    AlertLevel::from_str(&r.try_get::<String, _>("level")?)
                        .map_err(|e| InventoryError::Corrupt(e.to_string()))?,
                ))
            })
            .collect::<Result<_, InventoryError>>()?;
    let mut report = SweepReport::default();
    let mut changes = Vec::new();
    for b in &balances {
        report.balances += 1;
        let sku: String = b.try_get("sku")?;
        let warehouse: String = b.try_get("warehouse")?;
        let qty = dec("qty", &b.try_get::<String, _>("qty")?)?;
        let min_qty = dec("min_qty", &b.try_get::<String, _>("min_qty")?)?;
        let to = AlertLevel::of(qty, min_qty);
        let current = open.get(&(sku.clone(), warehouse.clone())).copied();
        if transition(current, to).is_none() {
            continue;
        }
        let change = LevelChange {
            sku,
            warehouse,
            to,
            qty,
            min_qty,
        };
        if let Some(c) = apply(pool, effects, watermark, &change, None).await? {
            report.repaired += 1;
            changes.push(c);
        }
    }
    Ok((report, changes))
}

pub(super) async fn list(pool: &SqlitePool, f: &AlertFilter) -> Result<Vec<Alert>, InventoryError> {
    let mut q = sqlx::QueryBuilder::new("");
    super::alerts_query!(q, f);
    let rows = q.build().fetch_all(pool).await?;
    rows.iter().map(alert_of).collect()
}

pub(super) async fn acknowledge(
    pool: &SqlitePool,
    id: i64,
    by: &str,
) -> Result<Alert, InventoryError> {
    let _turn = sqlite_write_turn(pool).await;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let now = Utc::now();
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE inv_alerts SET acknowledged_by = $1, acknowledged_at = $2 \
         WHERE id = $3 AND acknowledged_at IS NULL RETURNING {ALERT_COLS}"
    )))
    .bind(by)
    .bind(now)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        let existing = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLS} FROM inv_alerts WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| InventoryError::NotFound {
            what: "alert",
            key: id.to_string(),
        })?;
        return alert_of(&existing);
    };
    let alert = alert_of(&row)?;
    let change = AlertChange {
        action: AlertAction::Acknowledged,
        from: Some(alert.level),
        alert: alert.clone(),
        cause: None,
    };
    write_event(&mut tx, &change, now).await?;
    tx.commit().await?;
    Ok(alert)
}
