//! SQLite group commit: many concurrent postings, some refused, share transactions; exactly the
//! accepted ones are in the ledger, and the ledger rebuilds every balance.

use std::str::FromStr;
use std::sync::Arc;

use malaka_inventory::{
    BalanceFilter, Inventory, InventoryError, Movement, NewArticle, NewMovement, PostingHook,
    WarehouseCode,
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

/// What a hook does to the posting it rides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Writes a row of its own, then panics.
    Panic,
    /// Writes a row of its own, then fails (a bug of the posting's own making).
    Fail,
}

#[derive(Debug)]
struct Hook(Fault, i64);

#[async_trait::async_trait]
impl PostingHook for Hook {
    async fn sqlite(
        &self,
        conn: &mut sqlx::SqliteConnection,
        _posted: &[Movement],
    ) -> Result<(), InventoryError> {
        sqlx::query("INSERT INTO scratch (n) VALUES ($1)")
            .bind(self.1)
            .execute(&mut *conn)
            .await?;
        match self.0 {
            Fault::None => Ok(()),
            Fault::Panic => panic!("a bug in posting {}", self.1),
            Fault::Fail => Err(InventoryError::Failed(format!("posting {} failed", self.1))),
        }
    }
    async fn postgres(
        &self,
        _conn: &mut sqlx::PgConnection,
        _posted: &[Movement],
    ) -> Result<(), InventoryError> {
        unreachable!("SQLite only")
    }
}

async fn scratch(inv: &Inventory, dir: &tempfile::TempDir) -> sqlx::SqlitePool {
    let _ = inv;
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}", dir.path().join("inv.db").display()))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS scratch (n INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_posting_that_panics_or_fails_is_rolled_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let inv = inventory(&dir).await;
    let side = scratch(&inv, &dir).await;
    inv.create_warehouse(&WarehouseCode::parse("W").unwrap(), "W")
        .await
        .unwrap();
    inv.create_article(&NewArticle::parse("A", "A", None, None, None, None, None).unwrap())
        .await
        .unwrap();
    inv.post(&movement("receipt", "A", 1000, Some(2)), "t")
        .await
        .unwrap();
    // 90 issues of 1 at once, a third of them with a panicking or failing hook; they share
    // groups with the good ones.
    let mut tasks = Vec::new();
    for i in 0..90i64 {
        let inv = inv.clone();
        let fault = match i % 3 {
            0 => Fault::None,
            1 => Fault::Panic,
            _ => Fault::Fail,
        };
        tasks.push(tokio::spawn(async move {
            let hook: Arc<dyn PostingHook> = Arc::new(Hook(fault, i));
            let r = inv
                .post_batch_with(&[movement("issue", "A", 1, None)], "t", None, Some(hook))
                .await;
            (fault, r)
        }));
    }
    for t in tasks {
        let (fault, r) = t.await.unwrap();
        match (fault, r) {
            (Fault::None, Ok(_)) => {}
            (Fault::Panic, Err(InventoryError::Failed(why))) => {
                assert!(why.contains("panicked"), "{why}")
            }
            (Fault::Fail, Err(InventoryError::Failed(why))) => {
                assert!(why.contains("failed"), "{why}")
            }
            (f, r) => panic!("{f:?}: {r:?}"),
        }
    }
    // Exactly the good postings and their hooks' rows were committed.
    let balances = inv.balances(&BalanceFilter::default()).await.unwrap();
    assert_eq!(balances[0].qty, Decimal::from(1000 - 30));
    let rows: Vec<i64> = sqlx::query_scalar("SELECT n FROM scratch ORDER BY n")
        .fetch_all(&side)
        .await
        .unwrap();
    assert_eq!(rows, (0..90).step_by(3).collect::<Vec<i64>>());
    let report = inv.verify().await.unwrap();
    assert!(
        report.discrepancies.is_empty(),
        "{:?}",
        report.discrepancies
    );
    assert_eq!(report.ledger_rows, 1 + 30);
    // The committer lives on.
    inv.post(&movement("issue", "A", 5, None), "t")
        .await
        .unwrap();
}

#[derive(Debug)]
struct DiskFull;

#[async_trait::async_trait]
impl PostingHook for DiskFull {
    async fn sqlite(
        &self,
        _conn: &mut sqlx::SqliteConnection,
        _posted: &[Movement],
    ) -> Result<(), InventoryError> {
        Err(InventoryError::Database(sqlx::Error::Io(
            std::io::Error::other("No space left on device"),
        )))
    }
    async fn postgres(
        &self,
        _conn: &mut sqlx::PgConnection,
        _posted: &[Movement],
    ) -> Result<(), InventoryError> {
        unreachable!("SQLite only")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_failure_fails_the_whole_group_as_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let inv = inventory(&dir).await;
    inv.create_warehouse(&WarehouseCode::parse("W").unwrap(), "W")
        .await
        .unwrap();
    inv.create_article(&NewArticle::parse("A", "A", None, None, None, None, None).unwrap())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let inv = inv.clone();
        tasks.push(tokio::spawn(async move {
            let hook: Option<Arc<dyn PostingHook>> =
                (i % 10 == 0).then(|| Arc::new(DiskFull) as Arc<dyn PostingHook>);
            inv.post_batch_with(&[movement("receipt", "A", 1, Some(1))], "t", None, hook)
                .await
        }));
    }
    let mut ok = 0i64;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert!(
                matches!(e, InventoryError::Unavailable(_)) && e.is_transient(),
                "{e}"
            ),
        }
    }
    assert!(ok < 40, "the failing postings' groups failed");
    // What was answered Ok is exactly what the ledger holds.
    let balances = inv.balances(&BalanceFilter::default()).await.unwrap();
    assert_eq!(
        balances.first().map_or(Decimal::ZERO, |b| b.qty),
        Decimal::from(ok)
    );
    assert!(inv.verify().await.unwrap().discrepancies.is_empty());
    inv.post(&movement("receipt", "A", 1, Some(1)), "t")
        .await
        .unwrap();
}
