//! Exactly once through a crash, with the real binary: 2,000 postings, each with its own
//! `Idempotency-Key`, while the server is killed with SIGKILL in the middle; after a restart
//! every key is sent again. The ledger then holds exactly one posting per key, every answer
//! names the posting it made, and the balance is their sum.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use crate::common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Backend;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_malaka");
const TOKEN: &str = "mlk_crashtestcrashtestcrashtestcrashtest0123";
const KEYS: usize = 2000;
const CLIENTS: usize = 16;

fn start(dir: &std::path::Path, database_url: Option<&str>) -> (Child, String) {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .env("MALAKA_BOOTSTRAP_TOKEN", TOKEN)
        .env("MALAKA_API__RATE_LIMIT_PER_SECOND", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(url) = database_url {
        cmd.args(["--database-url", url]);
    }
    let mut child = cmd.spawn().expect("spawn malaka");
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
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("malaka reports its address");
    (child, format!("http://{addr}"))
}

fn qty(i: usize) -> u64 {
    (i % 9) as u64 + 1
}

fn body(i: usize) -> String {
    format!(
        r#"{{"type":"receipt","sku":"K","warehouse":"W","qty":"{}","unit_cost":"1"}}"#,
        qty(i)
    )
}

async fn post(client: &reqwest::Client, base: &str, i: usize) -> reqwest::Result<(u16, Value)> {
    let r = client
        .post(format!("{base}/api/v1/movements"))
        .bearer_auth(TOKEN)
        .header("idempotency-key", format!("crash-{i}"))
        .header("content-type", "application/json")
        .body(body(i))
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

async fn crash_and_retry(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => match common::fresh_postgres().await {
            Some(pg) => Some(pg),
            None => return,
        },
    };
    let url = pg.as_ref().map(|(url, _)| url.as_str());
    let (mut child, base) = start(dir.path(), url);
    let client = reqwest::Client::new();
    for (path, b) in [
        ("/api/v1/warehouses", json!({"code": "W", "name": "W"})),
        ("/api/v1/articles", json!({"sku": "K", "name": "K"})),
    ] {
        let r = client
            .post(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .json(&b)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }

    // The load, and SIGKILL once 800 answers are in (with 16 requests in flight).
    let answered: Arc<Mutex<HashMap<usize, String>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (client, base, answered, next) = (
            client.clone(),
            base.clone(),
            Arc::clone(&answered),
            Arc::clone(&next),
        );
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= KEYS {
                    return;
                }
                match post(&client, &base, i).await {
                    Ok((201, v)) => {
                        let id = v["id"].as_str().unwrap().to_owned();
                        answered.lock().unwrap().insert(i, id);
                    }
                    Ok((s, v)) => panic!("crash-{i}: {s} {v}"),
                    // The server is gone.
                    Err(_) => return,
                }
            }
        }));
    }
    while answered.lock().unwrap().len() < 800 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let killed = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = child.wait();
    for c in clients {
        c.await.unwrap();
    }
    let before: HashMap<usize, String> = answered.lock().unwrap().clone();
    assert!(
        before.len() >= 800 && before.len() < KEYS,
        "{}",
        before.len()
    );

    // Restart; every key again.
    let (mut child, base) = start(dir.path(), url);
    let next = Arc::new(AtomicUsize::new(0));
    let ids: Arc<Mutex<HashMap<usize, String>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (client, base, ids, next) = (
            client.clone(),
            base.clone(),
            Arc::clone(&ids),
            Arc::clone(&next),
        );
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= KEYS {
                    return;
                }
                let (s, v) = post(&client, &base, i).await.unwrap();
                assert_eq!(s, 201, "crash-{i}: {v}");
                ids.lock()
                    .unwrap()
                    .insert(i, v["id"].as_str().unwrap().to_owned());
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let ids = ids.lock().unwrap().clone();
    for (i, id) in &before {
        assert_eq!(
            &ids[i], id,
            "crash-{i} was answered before the crash: the same answer"
        );
    }
    let distinct: HashSet<&String> = ids.values().collect();
    assert_eq!(distinct.len(), KEYS, "one posting per key");

    // The ledger: exactly these postings; the balance: their sum.
    let mut in_ledger = HashSet::new();
    let mut cursor = String::new();
    loop {
        let v: Value = client
            .get(format!("{base}/api/v1/ledger?sku=K&limit=1000{cursor}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for row in v["items"].as_array().unwrap() {
            assert!(in_ledger.insert(row["movement_id"].as_str().unwrap().to_owned()));
        }
        match v["next"].as_str() {
            Some(n) => cursor = format!("&cursor={n}"),
            None => break,
        }
    }
    let answered_ids: HashSet<String> = ids.values().cloned().collect();
    assert_eq!(
        in_ledger, answered_ids,
        "the ledger holds exactly the answered postings"
    );
    let v: Value = client
        .get(format!("{base}/api/v1/balances?sku=K"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let total: u64 = (0..KEYS).map(qty).sum();
    assert_eq!(v["items"][0]["qty"], total.to_string(), "{v}");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    if let Some((_, name)) = pg {
        common::drop_postgres(&name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyed_postings_survive_sigkill_exactly_once_on_sqlite() {
    crash_and_retry(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyed_postings_survive_sigkill_exactly_once_on_postgres() {
    crash_and_retry(Backend::Postgres).await;
}
