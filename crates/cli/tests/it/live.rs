//! The outbox relay of `malaka serve` after a SIGKILL: every event published, and every side
//! effect (stock alerts) applied exactly once.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_malaka");
const BOOT: &str = "mlk_relaycrashtestrelaycrashtestrelaycrashtest1";

fn serve(dir: &std::path::Path) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(BIN)
        .current_dir(dir)
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .env("MALAKA_BOOTSTRAP_TOKEN", BOOT)
        .env("MALAKA_LIVE__SWEEP_EVERY", "0s")
        .env("MALAKA_API__RATE_LIMIT_PER_SECOND", "0")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["message"] == "malaka is listening"
            {
                let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_resumes_after_a_crash_without_losing_or_repeating_side_effects() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = serve(dir.path());
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        http.post(format!("http://{addr}/api/v1{path}"))
            .bearer_auth(BOOT)
            .json(&body)
            .send()
    };
    assert_eq!(
        post("/warehouses", json!({"code": "W", "name": "W"}))
            .await
            .unwrap()
            .status(),
        201
    );
    for sku in ["S1", "S2", "S3"] {
        let r = post(
            "/articles",
            json!({"sku": sku, "name": sku, "min_qty": "10"}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 201);
    }
    // Every movement crosses a level: 20 (NORMAL), 8 (LOW), 20, 8, ... on three articles.
    let mut batches = 0;
    for round in 0..30 {
        let movements: Vec<Value> = ["S1", "S2", "S3"]
            .iter()
            .map(|sku| {
                if round % 2 == 0 {
                    json!({"type": "receipt", "sku": sku, "warehouse": "W", "qty": if round == 0 { "20" } else { "12" }, "unit_cost": "1"})
                } else {
                    json!({"type": "issue", "sku": sku, "warehouse": "W", "qty": "12"})
                }
            })
            .collect();
        let r = post("/movements/batch", json!({"movements": movements}))
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        batches += 1;
    }
    assert_eq!(batches, 30);
    // Killed while the relay is likely still at work.
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, _addr) = serve(dir.path());
    let url = format!(
        "sqlite://{}",
        dir.path().join("malaka-data/malaka.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // Every event published, and every listener (the stock monitor) past the last one.
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM malaka_outbox WHERE published_at IS NULL) \
                  + (SELECT COUNT(*) FROM malaka_listener_cursors \
                     WHERE seq < (SELECT COALESCE(MAX(seq), 0) FROM malaka_outbox))",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} events never published or delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every level change was applied exactly once: 15 drops to LOW per article, each raising
    // one alert that the next receipt cleared; one `raised` and one `cleared` event each.
    let alerts: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT sku, cleared_at FROM inv_alerts ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(alerts.len(), 45, "one alert per drop: {alerts:?}");
    let open = alerts.iter().filter(|a| a.1.is_none()).count();
    assert_eq!(open, 3, "the last drop of each article is still open");
    let events: Vec<(String,)> =
        sqlx::query_as("SELECT payload FROM malaka_outbox WHERE topic = 'stock.alert' ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut raised = BTreeSet::new();
    let mut cleared = BTreeSet::new();
    for (p,) in &events {
        let v: Value = serde_json::from_str(p).unwrap();
        let id = v["alert"]["id"].as_i64().unwrap();
        match v["action"].as_str().unwrap() {
            "raised" => assert!(raised.insert(id), "alert {id} raised twice"),
            "cleared" => assert!(cleared.insert(id), "alert {id} cleared twice"),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((raised.len(), cleared.len()), (45, 42));
    // Publication numbers are gapless and each event has one.
    let (n, min, max): (i64, i64, i64) =
        sqlx::query_as("SELECT COUNT(*), MIN(seq), MAX(seq) FROM malaka_outbox")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((min, max), (1, n));
    pool.close().await;
    child.kill().unwrap();
    child.wait().unwrap();
}
