//! Reports on PostgreSQL: one repeatable-read, read-only snapshot; the ledger export streamed.

use super::*;

pub(super) async fn run(
    pool: &sqlx::PgPool,
    kind: ReportKind,
    p: &ReportParams,
    sink: &mut dyn ReportSink,
) -> Result<ReportSummary, InventoryError> {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?;
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
                line = "id::text || chr(31) || to_char(posted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') || \
        chr(31) || movement_id || chr(31) || kind || chr(31) || sku || chr(31) || warehouse || chr(31) || \
        qty_change || chr(31) || unit_cost || chr(31) || value_change || chr(31) || qty_after || chr(31) || \
        value_after || chr(31) || coalesce(reference, '') || chr(31) || posted_by",
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

            s.rows = out.done;
        }
        ReportKind::StockBalance
        | ReportKind::Valuation
        | ReportKind::LowStock
        | ReportKind::Ageing => {
            let low = kind == ReportKind::LowStock;
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT b.sku, a.name, b.warehouse, b.qty, b.rate, b.value, b.level, \
                        a.min_qty, a.reorder_qty, a.valuation, \
                        CASE WHEN $4 THEN {} ELSE '[]' END AS layers \
                 FROM inv_balances b JOIN inv_articles a ON a.sku = b.sku \
                 WHERE ($1 IS NULL OR b.sku = $1) AND ($2 IS NULL OR b.warehouse = $2) \
                   AND (NOT $3 OR b.level <> 'NORMAL') \
                 ORDER BY b.sku, b.warehouse",
                crate::storage::postgres::LAYERS_JSON
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
                let (qty_s, rate_s, value_s, level) =
                    (g("qty")?, g("rate")?, g("value")?, g("level")?);
                let value = dec("value", &value_s)?;
                let method: ValuationMethod = g("valuation")?
                    .parse()
                    .map_err(|e: InventoryError| InventoryError::Corrupt(e.to_string()))?;
                let row = match kind {
                    ReportKind::StockBalance => {
                        plus(&mut total_value, value)?;
                        vec![
                            sku,
                            name,
                            warehouse,
                            qty_s,
                            rate_s,
                            value_s,
                            g("min_qty")?,
                            level,
                        ]
                    }
                    ReportKind::Valuation => {
                        plus(&mut total_value, value)?;
                        vec![
                            sku,
                            name,
                            warehouse,
                            method.as_str().to_owned(),
                            qty_s,
                            rate_s,
                            value_s,
                        ]
                    }
                    ReportKind::LowStock => {
                        let qty = dec("qty", &qty_s)?;
                        let min = dec("min_qty", &g("min_qty")?)?;
                        let reorder = dec("reorder_qty", &g("reorder_qty")?)?;
                        let suggested = reorder
                            .max(minus(times(min, Decimal::TWO)?, qty)?)
                            .max(Decimal::ZERO);
                        vec![
                            sku,
                            name,
                            warehouse,
                            qty_s,
                            text(min),
                            text(reorder),
                            level,
                            text(suggested),
                        ]
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
                                        qty: dec(
                                            "qty_change",
                                            &l.try_get::<String, _>("qty_change")?,
                                        )?,
                                        at: l.try_get("posted_at")?,
                                        movement: l.try_get("movement_id")?,
                                    });
                                }
                                replayed = Some((sku.clone(), replay(steps)?));
                            }
                            let slots = replayed
                                .as_ref()
                                .and_then(|(_, by_wh)| by_wh.get(&warehouse))
                                .map(|q| {
                                    q.slots
                                        .iter()
                                        .rev()
                                        .map(|(q, at)| (*q, Decimal::ZERO, *at))
                                        .collect()
                                })
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
                        let mut row =
                            vec![sku, warehouse, method.as_str().to_owned(), qty_s, value_s];
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
