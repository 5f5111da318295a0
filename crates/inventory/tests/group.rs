//! SQLite group commit: many concurrent postings, some refused, share transactions; exactly the
//! accepted ones are in the ledger, and the ledger rebuilds every balance.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::str::FromStr;

use malaka_inventory::{
    BalanceFilter, Inventory, InventoryError, NewArticle, NewMovement, WarehouseCode,
};
use rust_decimal::Decimal;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

async fn inventory(dir: &tempfile::TempDir) -> Inventory {
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
    let inv = Inventory::sqlite(pool);
    inv.migrate().await.unwrap();
    inv
}

fn movement(kind: &str, sku: &str, qty: i64, cost: Option<i64>) -> NewMovement {
    NewMovement::parse(
        kind,
        sku,
        "W",
        None,
        Decimal::from(qty),
        cost.map(Decimal::from),
        None,
        None,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_inside_a_group_leave_the_rest_committed() {
    let dir = tempfile::tempdir().unwrap();
    let inv = inventory(&dir).await;
    inv.create_warehouse(&WarehouseCode::parse("W").unwrap(), "W")
        .await
        .unwrap();
    for sku in ["A", "B"] {
        inv.create_article(
            &NewArticle::parse(sku, sku, None, Some("fifo"), None, None, None).unwrap(),
        )
        .await
        .unwrap();
    }
    inv.post(&movement("receipt", "A", 100, Some(3)), "t")
        .await
        .unwrap();

    // 200 issues of 1 race for 100 units of A, while 100 receipts of B run alongside.
    let mut tasks = Vec::new();
    for i in 0..300 {
        let inv = inv.clone();
        tasks.push(tokio::spawn(async move {
            if i % 3 == 2 {
                inv.post(&movement("receipt", "B", 2, Some(5)), "t").await
            } else {
                inv.post(&movement("issue", "A", 1, None), "t").await
            }
        }));
    }
    let (mut issued, mut refused, mut received) = (0, 0, 0);
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(m) if i % 3 == 2 => {
                assert_eq!(m.rows.len(), 1);
                received += 1;
            }
            Ok(_) => issued += 1,
            Err(InventoryError::InsufficientStock { available, .. }) => {
                assert_eq!(available, Decimal::ZERO);
                refused += 1;
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!((issued, refused, received), (100, 100, 100));

    let balances = inv.balances(&BalanceFilter::default()).await.unwrap();
    let qty = |sku: &str| balances.iter().find(|b| b.sku.as_str() == sku).unwrap().qty;
    assert_eq!(qty("A"), Decimal::ZERO);
    assert_eq!(qty("B"), Decimal::from(200));
    let report = inv.verify().await.unwrap();
    assert!(
        report.discrepancies.is_empty(),
        "{:?}",
        report.discrepancies
    );
    assert_eq!(report.ledger_rows, 1 + 100 + 100);
    // One movement.posted per accepted posting (plus level changes), none for the refused.
    let posted = inv
        .outbox(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.topic == "movement.posted")
        .count();
    assert_eq!(posted, 201);
}
