//! The migration that made FIFO layers rows carries the layers of existing balances over, in
//! order, with their dates, on both backends.

use std::str::FromStr;

use malaka_inventory::{BalanceFilter, Inventory, NewMovement};
use rust_decimal::Decimal;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

/// The first migration with layers as rows.
const LAYERS_AS_ROWS: i64 = 20261205100000;

const OLD_LAYERS: &str =
    r#"[{"qty":"2","rate":"1.5","received_at":"2026-01-02T03:04:05Z"},{"qty":"3","rate":"2"}]"#;

/// Writes, as the schema before layers were rows held them, a FIFO article with 5 units in two
/// layers.
macro_rules! seed_old {
    ($pool:expr, $now:expr) => {{
        sqlx::query(
            "INSERT INTO inv_articles (sku, name, unit, valuation, min_qty, reorder_qty, \
             allow_negative, archived, created_at, updated_at) \
             VALUES ('F', 'F', 'pcs', 'fifo', '0', '0', FALSE, FALSE, $1, $1)",
        )
        .bind($now)
        .execute($pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO inv_warehouses (code, name, archived, created_at, updated_at) \
             VALUES ('W', 'W', FALSE, $1, $1)",
        )
        .bind($now)
        .execute($pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO inv_balances (sku, warehouse, qty, value, rate, layers, level, updated_at) \
             VALUES ('F', 'W', '5', '9', '1.8', $1, 'NORMAL', $2)",
        )
        .bind(OLD_LAYERS)
        .bind($now)
        .execute($pool)
        .await
        .unwrap();
    }};
}

async fn check(inv: &Inventory) {
    let b = inv.balances(&BalanceFilter::default()).await.unwrap();
    let layers: Vec<(Decimal, Decimal, bool)> = b[0]
        .layers
        .iter()
        .map(|l| (l.qty, l.rate, l.received_at.is_some()))
        .collect();
    let d = |s: &str| Decimal::from_str(s).unwrap();
    assert_eq!(layers, [(d("2"), d("1.5"), true), (d("3"), d("2"), false)]);
    assert_eq!(
        b[0].layers[0].received_at.unwrap().to_rfc3339(),
        "2026-01-02T03:04:05+00:00"
    );
    // Postings go on from the carried-over layers: 3 out = 2 @ 1.5 + 1 @ 2.
    let m = NewMovement::parse("issue", "F", "W", None, d("3"), None, None, None).unwrap();
    let posted = inv.post(&m, "test").await.unwrap();
    assert_eq!(posted.rows[0].value_change, d("-5"));
    let b = inv.balances(&BalanceFilter::default()).await.unwrap();
    assert_eq!(b[0].layers.len(), 1);
    assert_eq!((b[0].qty, b[0].value), (d("2"), d("4")));
}

#[tokio::test]
async fn sqlite_layers_are_carried_over() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteConnectOptions::from_str(&format!(
        "sqlite://{}",
        dir.path().join("inv.db").display()
    ))
    .unwrap()
    .create_if_missing(true);
    let pool = SqlitePoolOptions::new().connect_with(opts).await.unwrap();
    let mut before = sqlx::migrate!("./migrations/sqlite");
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < LAYERS_AS_ROWS)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(&pool).await.unwrap();
    seed_old!(&pool, chrono::Utc::now());
    let inv = Inventory::sqlite(pool);
    inv.migrate().await.unwrap();
    check(&inv).await;
}

#[tokio::test]
async fn postgres_layers_are_carried_over() {
    let admin = std::env::var("MALAKA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let fresh = match malaka_db::FreshPostgres::create(&admin, "malaka_inv_test").await {
        Ok(f) => f,
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipping PostgreSQL case: {admin} unreachable ({e})");
            return;
        }
        Err(e) => panic!("PostgreSQL at {admin} is required under CI: {e}"),
    };
    let pool = sqlx::PgPool::connect(&fresh.url).await.unwrap();
    let mut before = sqlx::migrate!("./migrations/postgres");
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < LAYERS_AS_ROWS)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(&pool).await.unwrap();
    seed_old!(&pool, chrono::Utc::now());
    let inv = Inventory::postgres(pool.clone());
    inv.migrate().await.unwrap();
    check(&inv).await;
    pool.close().await;
    fresh.drop_database().await;
}
