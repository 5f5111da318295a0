//! The storage conformance suite: each case runs on SQLite and on PostgreSQL through
//! `Inventory` (valuation, transfers, counts, refusals, outbox contents, concurrent postings).
//! PostgreSQL cases skip when no server answers, except under `CI=true`.

use std::str::FromStr;

use malaka_inventory::{
    Balance, BalanceFilter, Database, Inventory, InventoryError, NewArticle, NewMovement, Outbox,
    WarehouseCode,
};
use rust_decimal::Decimal;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

/// An inventory on a fresh database, with what keeps it alive.
struct Fixture {
    inv: Inventory,
    events: Database,
    _dir: Option<tempfile::TempDir>,
    pg: Option<malaka_db::FreshPostgres>,
}

impl Fixture {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteConnectOptions::from_str(&format!(
            "sqlite://{}",
            dir.path().join("inv.db").display()
        ))
        .unwrap()
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .unwrap();
        let inv = Inventory::sqlite(pool.clone());
        inv.migrate().await.unwrap();
        Self {
            inv,
            events: Database::Sqlite(pool),
            _dir: Some(dir),
            pg: None,
        }
    }

    async fn postgres() -> Option<Self> {
        let admin = std::env::var("MALAKA_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let fresh = match malaka_db::FreshPostgres::create(&admin, "malaka_inv_test").await {
            Ok(f) => f,
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("skipping PostgreSQL case: {admin} unreachable ({e})");
                return None;
            }
            Err(e) => panic!("PostgreSQL at {admin} is required under CI: {e}"),
        };
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&fresh.url)
            .await
            .unwrap();
        let inv = Inventory::postgres(pool.clone());
        inv.migrate().await.unwrap();
        Some(Self {
            inv,
            events: Database::Postgres(pool),
            _dir: None,
            pg: Some(fresh),
        })
    }

    async fn finish(self) {
        if let Some(pg) = &self.pg {
            if let Database::Postgres(pool) = &self.events {
                pool.close().await;
            }
            pg.drop_database().await;
        }
    }

    async fn setup(&self, articles: &[(&str, &str, i64)]) {
        for w in ["W", "X"] {
            self.inv
                .create_warehouse(&WarehouseCode::parse(w).unwrap(), w)
                .await
                .unwrap();
        }
        for (sku, valuation, min) in articles {
            let a = NewArticle::parse(
                sku,
                sku,
                None,
                Some(valuation),
                Some(Decimal::from(*min)),
                None,
                None,
            )
            .unwrap();
            self.inv.create_article(&a).await.unwrap();
        }
    }

    async fn post(
        &self,
        kind: &str,
        sku: &str,
        to: Option<&str>,
        qty: i64,
        cost: Option<i64>,
    ) -> Result<(), malaka_inventory::InventoryError> {
        let m = NewMovement::parse(
            kind,
            sku,
            "W",
            to,
            Decimal::from(qty),
            cost.map(Decimal::from),
            None,
            None,
        )
        .unwrap();
        self.inv.post(&m, "test").await.map(|_| ())
    }

    async fn balance(&self, sku: &str, warehouse: &str) -> Option<Balance> {
        self.inv
            .balances(&BalanceFilter::default())
            .await
            .unwrap()
            .into_iter()
            .find(|b| b.sku.as_str() == sku && b.warehouse.as_str() == warehouse)
    }

    async fn agrees(&self) {
        let report = self.inv.verify().await.unwrap();
        assert!(
            report.discrepancies.is_empty(),
            "the ledger rebuilds every balance"
        );
    }
}

fn d(n: i64) -> Decimal {
    Decimal::from(n)
}

/// Runs `$case` (an `async fn(&Fixture)`) on SQLite and on PostgreSQL.
macro_rules! on_both {
    ($case:ident) => {
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let f = super::Fixture::sqlite().await;
                super::$case(&f).await;
                f.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(f) = super::Fixture::postgres().await else {
                    return;
                };
                super::$case(&f).await;
                f.finish().await;
            }
        }
    };
}

on_both!(moving_average_issues_at_the_running_rate);
async fn moving_average_issues_at_the_running_rate(f: &Fixture) {
    f.setup(&[("M", "moving_average", 0)]).await;
    f.post("receipt", "M", None, 10, Some(2)).await.unwrap();
    f.post("receipt", "M", None, 10, Some(4)).await.unwrap();
    let b = f.balance("M", "W").await.unwrap();
    assert_eq!((b.qty, b.value, b.rate), (d(20), d(60), d(3)));
    f.post("issue", "M", None, 5, None).await.unwrap();
    let b = f.balance("M", "W").await.unwrap();
    assert_eq!((b.qty, b.value), (d(15), d(45)));
    assert!(b.layers.is_empty(), "moving average keeps no layers");
    f.agrees().await;
}

on_both!(fifo_issues_consume_the_oldest_layers_first);
async fn fifo_issues_consume_the_oldest_layers_first(f: &Fixture) {
    f.setup(&[("F", "fifo", 0)]).await;
    f.post("receipt", "F", None, 5, Some(1)).await.unwrap();
    f.post("receipt", "F", None, 5, Some(3)).await.unwrap();
    f.post("issue", "F", None, 7, None).await.unwrap();
    let b = f.balance("F", "W").await.unwrap();
    assert_eq!((b.qty, b.value), (d(3), d(9)), "5 @ 1 and 2 @ 3 went out");
    let layers: Vec<(Decimal, Decimal)> = b.layers.iter().map(|l| (l.qty, l.rate)).collect();
    assert_eq!(layers, [(d(3), d(3))]);
    f.agrees().await;
}

on_both!(a_transfer_moves_quantity_and_value);
async fn a_transfer_moves_quantity_and_value(f: &Fixture) {
    f.setup(&[("M", "moving_average", 0), ("F", "fifo", 0)])
        .await;
    f.post("receipt", "M", None, 10, Some(2)).await.unwrap();
    f.post("transfer", "M", Some("X"), 4, None).await.unwrap();
    let (w, x) = (
        f.balance("M", "W").await.unwrap(),
        f.balance("M", "X").await.unwrap(),
    );
    assert_eq!((w.qty, w.value, x.qty, x.value), (d(6), d(12), d(4), d(8)));
    f.post("receipt", "F", None, 2, Some(1)).await.unwrap();
    f.post("receipt", "F", None, 2, Some(5)).await.unwrap();
    f.post("transfer", "F", Some("X"), 3, None).await.unwrap();
    let (w, x) = (
        f.balance("F", "W").await.unwrap(),
        f.balance("F", "X").await.unwrap(),
    );
    assert_eq!((w.qty, w.value), (d(1), d(5)), "the oldest layers moved");
    assert_eq!((x.qty, x.value), (d(3), d(7)));
    f.agrees().await;
}

on_both!(a_count_sets_the_quantity);
async fn a_count_sets_the_quantity(f: &Fixture) {
    f.setup(&[("M", "moving_average", 0)]).await;
    f.post("receipt", "M", None, 10, Some(2)).await.unwrap();
    f.post("count", "M", None, 7, None).await.unwrap();
    let b = f.balance("M", "W").await.unwrap();
    assert_eq!(
        (b.qty, b.value),
        (d(7), d(14)),
        "a loss at the running rate"
    );
    f.post("count", "M", None, 9, None).await.unwrap();
    assert_eq!(f.balance("M", "W").await.unwrap().qty, d(9));
    f.agrees().await;
}

on_both!(an_issue_beyond_the_stock_is_refused_and_changes_nothing);
async fn an_issue_beyond_the_stock_is_refused_and_changes_nothing(f: &Fixture) {
    f.setup(&[("M", "moving_average", 0)]).await;
    f.post("receipt", "M", None, 3, Some(2)).await.unwrap();
    let rows = f.inv.verify().await.unwrap().ledger_rows;
    let e = f.post("issue", "M", None, 5, None).await.unwrap_err();
    assert!(e.is_refusal(), "{e}");
    let b = f.balance("M", "W").await.unwrap();
    assert_eq!((b.qty, b.value), (d(3), d(6)));
    assert_eq!(
        f.inv.verify().await.unwrap().ledger_rows,
        rows,
        "no ledger row"
    );
    f.agrees().await;
}

on_both!(every_posting_writes_its_events_to_the_outbox);
async fn every_posting_writes_its_events_to_the_outbox(f: &Fixture) {
    f.setup(&[("M", "moving_average", 10)]).await;
    f.post("receipt", "M", None, 20, Some(1)).await.unwrap();
    f.post("issue", "M", None, 12, None).await.unwrap();
    let events = Outbox::new(f.events.clone())
        .unpublished(100)
        .await
        .unwrap();
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    let posted = topics.iter().filter(|t| **t == "movement.posted").count();
    assert_eq!(posted, 2, "{topics:?}");
    assert!(
        topics.contains(&"stock.level_changed"),
        "20 -> 8 crosses the minimum of 10: {topics:?}"
    );
}

on_both!(concurrent_issues_never_oversell);
async fn concurrent_issues_never_oversell(f: &Fixture) {
    f.setup(&[("M", "moving_average", 0)]).await;
    f.post("receipt", "M", None, 10, Some(1)).await.unwrap();
    let issues = (0..30).map(|_| f.post("issue", "M", None, 1, None));
    let results = futures::future::join_all(issues).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 10, "exactly the stock was issued");
    assert!(results.iter().flatten().count() == 10);
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(e.is_refusal(), "{e}");
    }
    let b = f.balance("M", "W").await.unwrap();
    assert_eq!((b.qty, b.value), (d(0), d(0)));
    f.agrees().await;
}

/// Runs one query on the fixture's database, binding `$1` (an i64), returning rows of text.
macro_rules! rows {
    ($f:expr, $sql:expr, $arg:expr) => {
        match &$f.events {
            Database::Sqlite(p) => sqlx::query_as::<_, (String, String)>($sql)
                .bind($arg)
                .fetch_all(p)
                .await
                .unwrap(),
            Database::Postgres(p) => sqlx::query_as::<_, (String, String)>($sql)
                .bind($arg)
                .fetch_all(p)
                .await
                .unwrap(),
        }
    };
}

fn movement(kind: &str, sku: &str, to: Option<&str>, qty: i64, cost: Option<i64>) -> NewMovement {
    NewMovement::parse(
        kind,
        sku,
        "W",
        to,
        Decimal::from(qty),
        cost.map(Decimal::from),
        None,
        None,
    )
    .unwrap()
}

on_both!(fifo_layers_are_consumed_oldest_first_and_each_use_is_recorded);
async fn fifo_layers_are_consumed_oldest_first_and_each_use_is_recorded(f: &Fixture) {
    f.setup(&[("F", "fifo", 0)]).await;
    // 40 layers of 2 units at 1..=40: more than one read of stored layers.
    for cost in 1..=40 {
        f.post("receipt", "F", None, 2, Some(cost)).await.unwrap();
    }
    let m = f
        .inv
        .post(&movement("issue", "F", None, 71, None), "test")
        .await
        .unwrap();
    let ledger_id = m.rows[0].id;
    // 35 layers whole (2 each at 1..=35) and 1 of layer 36.
    let out: i64 = (1..=35).map(|c| 2 * c).sum::<i64>() + 36;
    assert_eq!(m.rows[0].value_change, -d(out));
    let b = f.balance("F", "W").await.unwrap();
    let layers: Vec<(Decimal, Decimal)> = b.layers.iter().map(|l| (l.qty, l.rate)).collect();
    assert_eq!(
        layers,
        [
            (d(1), d(36)),
            (d(2), d(37)),
            (d(2), d(38)),
            (d(2), d(39)),
            (d(2), d(40))
        ]
    );
    assert_eq!(b.qty, d(9));
    let uses = rows!(
        f,
        "SELECT qty, rate FROM inv_layer_uses WHERE ledger_id = $1 ORDER BY seq",
        ledger_id
    );
    assert_eq!(uses.len(), 36, "one record per layer it took from");
    let used: Decimal = uses
        .iter()
        .map(|(q, r)| Decimal::from_str(q).unwrap() * Decimal::from_str(r).unwrap())
        .sum();
    assert_eq!(used, d(out), "the records are what the issue was valued at");
    assert_eq!(uses.last().unwrap(), &("1".to_owned(), "36".to_owned()));
    f.agrees().await;
}

on_both!(a_refused_batch_names_the_refused_movement);
async fn a_refused_batch_names_the_refused_movement(f: &Fixture) {
    f.setup(&[("F", "fifo", 0)]).await;
    let batch = [
        movement("receipt", "F", None, 4, Some(2)),
        movement("issue", "F", None, 3, None),
        movement("receipt", "F", None, 1, Some(7)),
        movement("issue", "F", None, 3, None),
    ];
    match f.inv.post_batch(&batch, "test").await {
        Err(InventoryError::InBatch {
            index: 3, source, ..
        }) => assert!(
            matches!(*source, InventoryError::InsufficientStock { available, .. } if available == d(2)),
            "{source}"
        ),
        other => panic!("expected movement 3 refused, got {other:?}"),
    }
    assert!(f.balance("F", "W").await.is_none(), "nothing of it posted");
    let unknown = [
        movement("receipt", "F", None, 4, Some(2)),
        movement("transfer", "F", Some("NOWHERE"), 1, None),
    ];
    let e = f.inv.post_batch(&unknown, "test").await.unwrap_err();
    assert!(
        matches!(&e, InventoryError::InBatch { index: 1, source, .. } if matches!(**source, InventoryError::NotFound { what: "warehouse", .. })),
        "{e:?}"
    );
    assert!(e.is_refusal() && !e.is_transient());
    // One movement alone is never wrapped.
    let e = f.inv.post(&batch[1], "test").await.unwrap_err();
    assert!(
        matches!(e, InventoryError::InsufficientStock { .. }),
        "{e:?}"
    );
    f.agrees().await;
}

on_both!(a_batch_that_receives_then_issues_consumes_its_own_layer);
async fn a_batch_that_receives_then_issues_consumes_its_own_layer(f: &Fixture) {
    f.setup(&[("F", "fifo", 0)]).await;
    f.post("receipt", "F", None, 3, Some(1)).await.unwrap();
    let batch = [
        movement("receipt", "F", None, 4, Some(2)),
        movement("issue", "F", None, 5, None),
        movement("receipt", "F", None, 1, Some(7)),
        movement("transfer", "F", Some("X"), 2, None),
    ];
    let posted = f.inv.post_batch(&batch, "test").await.unwrap();
    let issue = posted[1].rows[0].id;
    let uses = rows!(
        f,
        "SELECT qty, rate FROM inv_layer_uses WHERE ledger_id = $1 ORDER BY seq",
        issue
    );
    assert_eq!(
        uses,
        [
            ("3".to_owned(), "1".to_owned()),
            ("2".to_owned(), "2".to_owned())
        ],
        "the stored layer, then the one received in the same batch"
    );
    let (w, x) = (
        f.balance("F", "W").await.unwrap(),
        f.balance("F", "X").await.unwrap(),
    );
    let of = |b: &Balance| b.layers.iter().map(|l| (l.qty, l.rate)).collect::<Vec<_>>();
    assert_eq!(of(&w), [(d(1), d(7))]);
    assert_eq!(
        of(&x),
        [(d(2), d(2))],
        "the transfer carried the layer it took"
    );
    assert_eq!((w.value, x.value), (d(7), d(4)));
    f.agrees().await;
}

on_both!(stock_counted_to_zero_closes_every_layer);
async fn stock_counted_to_zero_closes_every_layer(f: &Fixture) {
    f.setup(&[("F", "fifo", 0)]).await;
    for cost in 1..=20 {
        f.post("receipt", "F", None, 1, Some(cost)).await.unwrap();
    }
    f.post("count", "F", None, 0, None).await.unwrap();
    let b = f.balance("F", "W").await.unwrap();
    assert_eq!((b.qty, b.value), (d(0), d(0)));
    assert!(b.layers.is_empty());
    f.post("receipt", "F", None, 2, Some(5)).await.unwrap();
    let b = f.balance("F", "W").await.unwrap();
    assert_eq!(
        b.layers.iter().map(|l| (l.qty, l.rate)).collect::<Vec<_>>(),
        [(d(2), d(5))]
    );
    f.agrees().await;
}

on_both!(concurrent_fifo_issues_keep_the_layers_whole);
async fn concurrent_fifo_issues_keep_the_layers_whole(f: &Fixture) {
    f.setup(&[("F", "fifo", 0)]).await;
    for cost in 1..=10 {
        f.post("receipt", "F", None, 3, Some(cost)).await.unwrap();
    }
    let issues = (0..40).map(|_| f.post("issue", "F", None, 1, None));
    let results = futures::future::join_all(issues).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 30);
    let b = f.balance("F", "W").await.unwrap();
    assert_eq!((b.qty, b.value), (d(0), d(0)));
    let used = rows!(
        f,
        "SELECT CAST(count(*) AS TEXT), CAST(count(DISTINCT ledger_id) AS TEXT) FROM inv_layer_uses \
         WHERE seq >= $1",
        0i64
    );
    assert_eq!(used, [("30".to_owned(), "30".to_owned())]);
    f.agrees().await;
}

/// Posts a receipt inside a transaction that also writes a row of the caller's own; commits or
/// rolls back; returns what was posted.
macro_rules! post_with_own_row {
    ($pool:expr, $begin:literal, $module:ident, $commit:expr) => {{
        sqlx::query("CREATE TABLE IF NOT EXISTS test_orders (id TEXT PRIMARY KEY)")
            .execute($pool)
            .await
            .unwrap();
        let mut tx = $pool.begin_with($begin).await.unwrap();
        sqlx::query("INSERT INTO test_orders (id) VALUES ('SO-1')")
            .execute(&mut *tx)
            .await
            .unwrap();
        let posted = malaka_inventory::storage::$module::post_in_tx(
            &mut tx,
            &[movement("receipt", "M", None, 5, Some(2))],
            "orders",
        )
        .await
        .unwrap();
        if $commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM test_orders")
            .fetch_one($pool)
            .await
            .unwrap();
        (posted, orders)
    }};
}

on_both!(a_posting_commits_inside_the_callers_transaction);
async fn a_posting_commits_inside_the_callers_transaction(f: &Fixture) {
    f.setup(&[("M", "moving_average", 0)]).await;
    for commit in [false, true] {
        let (posted, orders) = match &f.events {
            Database::Sqlite(p) => {
                let _turn = malaka_inventory::sqlite_turn(p).await;
                post_with_own_row!(p, "BEGIN IMMEDIATE", sqlite, commit)
            }
            Database::Postgres(p) => post_with_own_row!(p, "BEGIN", postgres, commit),
        };
        assert_eq!(
            posted[0].rows[0].qty_after,
            d(5),
            "posted inside the transaction"
        );
        let b = f.balance("M", "W").await;
        if commit {
            f.inv.posted();
            assert_eq!(orders, 1);
            assert_eq!(
                b.map(|b| b.qty),
                Some(d(5)),
                "the posting and the order commit together"
            );
            let events = Outbox::new(f.events.clone()).unpublished(10).await.unwrap();
            let posted = events
                .iter()
                .filter(|e| e.topic == "movement.posted")
                .count();
            assert_eq!(posted, 1, "its event is in the outbox");
        } else {
            assert_eq!(orders, 0);
            assert!(
                b.is_none_or(|b| b.qty.is_zero()),
                "rolled back with the caller's row"
            );
            assert_eq!(f.inv.verify().await.unwrap().ledger_rows, 0);
        }
    }
    f.agrees().await;
}

on_both!(every_filtered_list_reads_an_index);
async fn every_filtered_list_reads_an_index(f: &Fixture) {
    use malaka_inventory::plan::{ListQuery, explain};
    use malaka_inventory::{
        AlertFilter, AlertLevel, BalanceCursor, LedgerCursor, LedgerFilter, Sku,
    };
    let t = chrono::Utc::now();
    let sku = || Some(Sku::parse("G-17").unwrap());
    let wh = || Some(WarehouseCode::parse("W").unwrap());
    let ledger = |g: fn(&mut LedgerFilter)| {
        let mut l = LedgerFilter::default();
        g(&mut l);
        l
    };
    let mut shapes: Vec<(&str, ListQuery, bool)> = vec![];
    for (name, l) in [
        (
            "ledger by article",
            ledger(|l| l.sku = Some(Sku::parse("G-17").unwrap())),
        ),
        (
            "ledger by warehouse",
            ledger(|l| l.warehouse = Some(WarehouseCode::parse("W").unwrap())),
        ),
        (
            "ledger by article and warehouse",
            LedgerFilter {
                sku: sku(),
                warehouse: wh(),
                ..LedgerFilter::default()
            },
        ),
        (
            "ledger from a date",
            LedgerFilter {
                from: Some(t),
                ..LedgerFilter::default()
            },
        ),
        (
            "ledger between dates",
            LedgerFilter {
                from: Some(t),
                to: Some(t),
                ..LedgerFilter::default()
            },
        ),
        (
            "ledger by article from a date",
            LedgerFilter {
                sku: sku(),
                from: Some(t),
                ..LedgerFilter::default()
            },
        ),
        (
            "ledger by warehouse before a date",
            LedgerFilter {
                warehouse: wh(),
                to: Some(t),
                ..LedgerFilter::default()
            },
        ),
        (
            "ledger by article, next page",
            LedgerFilter {
                sku: sku(),
                after: Some(LedgerCursor {
                    id: 5,
                    posted_at: None,
                }),
                ..LedgerFilter::default()
            },
        ),
        (
            "ledger from a date, next page",
            LedgerFilter {
                from: Some(t),
                after: Some(LedgerCursor {
                    id: 5,
                    posted_at: Some(t),
                }),
                ..LedgerFilter::default()
            },
        ),
    ] {
        shapes.push((name, ListQuery::Ledger(l), true));
    }
    let next = || {
        Some(BalanceCursor {
            sku: Sku::parse("A").unwrap(),
            warehouse: WarehouseCode::parse("W").unwrap(),
        })
    };
    for (name, b) in [
        (
            "balances by article",
            BalanceFilter {
                sku: sku(),
                limit: Some(100),
                ..BalanceFilter::default()
            },
        ),
        (
            "balances by warehouse",
            BalanceFilter {
                warehouse: wh(),
                limit: Some(100),
                ..BalanceFilter::default()
            },
        ),
        (
            "balances by level",
            BalanceFilter {
                level: Some(AlertLevel::Low),
                limit: Some(100),
                ..BalanceFilter::default()
            },
        ),
        (
            "balances by level, next page",
            BalanceFilter {
                level: Some(AlertLevel::Low),
                after: next(),
                limit: Some(100),
                ..BalanceFilter::default()
            },
        ),
        (
            "balances by warehouse, next page",
            BalanceFilter {
                warehouse: wh(),
                after: next(),
                limit: Some(100),
                ..BalanceFilter::default()
            },
        ),
    ] {
        shapes.push((name, ListQuery::Balances(b), true));
    }
    for (name, a) in [
        (
            "open alerts",
            AlertFilter {
                open: Some(true),
                ..AlertFilter::default()
            },
        ),
        (
            "cleared alerts",
            AlertFilter {
                open: Some(false),
                ..AlertFilter::default()
            },
        ),
        (
            "alerts by article",
            AlertFilter {
                sku: Some("G-17".into()),
                ..AlertFilter::default()
            },
        ),
        (
            "alerts by warehouse",
            AlertFilter {
                warehouse: Some("W".into()),
                ..AlertFilter::default()
            },
        ),
        (
            "alerts by level",
            AlertFilter {
                level: Some(AlertLevel::Critical),
                ..AlertFilter::default()
            },
        ),
        (
            "open alerts by level, next page",
            AlertFilter {
                open: Some(true),
                level: Some(AlertLevel::Low),
                before_id: Some(9),
                ..AlertFilter::default()
            },
        ),
    ] {
        shapes.push((name, ListQuery::Alerts(a), false));
    }
    for (name, q, in_order) in shapes {
        let plan = explain(&f.events, &q).await.unwrap();
        let text = plan.join("\n");
        match &f.events {
            Database::Sqlite(_) => {
                // A bare `SCAN t` reads the whole table; `SCAN t USING INDEX i` reads a
                // (partial) index in the order asked.
                assert!(
                    !plan
                        .iter()
                        .any(|l| l.starts_with("SCAN ") && !l.contains("USING")),
                    "{name}: reads a whole table:\n{text}"
                );
                if in_order {
                    assert!(
                        !text.contains("TEMP B-TREE FOR ORDER BY"),
                        "{name}: sorts:\n{text}"
                    );
                }
            }
            Database::Postgres(_) => {
                assert!(
                    !text.contains("Seq Scan"),
                    "{name}: reads a whole table:\n{text}"
                );
                // An index that only orders (a full index scan) shows no condition; only the
                // partial indexes of open and cleared alerts serve a filter without one.
                assert!(
                    text.contains("Index Cond")
                        || text.contains("inv_alerts_open_id")
                        || text.contains("inv_alerts_cleared_id"),
                    "{name}: no index serves the filters:\n{text}"
                );
            }
        }
    }
}
