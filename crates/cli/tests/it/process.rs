//! The `malaka` binary as a user runs it: zero-configuration start, SIGTERM, help texts, config
//! layering and the benchmark's JSON convention.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_malaka");

/// Starts `malaka serve` in `dir` with JSON logs and returns the child and its address.
fn start_serve(dir: &std::path::Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .current_dir(dir)
        .args(["--log-format", "json", "serve"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn malaka");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "malaka is listening"
            {
                let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("malaka reports its address");
    (child, addr)
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("malaka did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn zero_config_serve_answers_then_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // Port 0: the default 8080 may be taken on a test machine; everything else is default.
    let (mut child, addr) = start_serve(dir.path(), &["--listen", "127.0.0.1:0"]);
    let client = reqwest::Client::new();
    let r = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"malaka_pool_workers{pool="events""#),
        "{metrics}"
    );
    assert!(dir.path().join("malaka-data/malaka.db").exists());

    let start = Instant::now();
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(8));
    assert!(status.success(), "exit status {status}");
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn sigterm_with_an_open_keepalive_connection_still_exits_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start_serve(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--shutdown-timeout", "2s"],
    );
    // A raw connection that sends half a request and never finishes it.
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(6));
    assert!(status.success(), "exit status {status}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    drop(stream);
}

#[test]
fn environment_and_file_layers_reach_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("malaka.toml"),
        "listen = \"127.0.0.1:7001\"\nshutdown_timeout = \"9s\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["config", "--shutdown-timeout", "3s"])
        .env("MALAKA_LISTEN", "127.0.0.1:7002")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(v["listen"].as_str(), Some("127.0.0.1:7002"));
    assert_eq!(v["shutdown_timeout"].as_str(), Some("3s"));

    // A typo in the file is named, and the exit code says it failed.
    std::fs::write(dir.path().join("malaka.toml"), "listn = 1\n").unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .arg("config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listn"));
}

#[test]
fn help_says_what_each_command_does() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for cmd in ["serve", "migrate", "config", "bench"] {
        assert!(text.contains(cmd), "{text}");
    }
    for (cmd, phrase) in [
        ("serve", "SIGTERM"),
        ("bench", "--json"),
        ("migrate", "--database-url"),
    ] {
        let out = Command::new(BIN).args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains(phrase),
            "{cmd} --help lacks {phrase}:\n{text}"
        );
    }
}

#[test]
fn migrate_creates_the_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["migrate", "--data-dir", "d"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("d/malaka.db").exists());
}

#[test]
fn bench_json_prints_exactly_one_object_with_the_runtime_figures() {
    let out = Command::new(BIN)
        .args(["bench", "runtime", "--json", "--quick"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON value");
    let obj = v.as_object().expect("an object");
    for key in [
        "pool_overhead_ratio",
        "bus_deliveries_per_sec_1",
        "bus_deliveries_per_sec_4",
        "bus_deliveries_per_sec_16",
        "parallel_tasks_per_sec",
    ] {
        assert!(
            obj[key].as_f64().is_some_and(|x| x > 0.0),
            "{key} in {text}"
        );
    }
    assert_eq!(text.trim().lines().count(), 1);
}

#[test]
fn bench_jobs_json_prints_the_queue_figures() {
    let out = Command::new(BIN)
        .args(["bench", "jobs", "--backend", "sqlite", "--json", "--quick"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON value");
    for key in [
        "enqueue_per_sec",
        "jobs_per_sec",
        "latency_p50_ms",
        "latency_p99_ms",
    ] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {text}");
    }
    assert!(v["latency_p50_ms"].as_f64().unwrap() <= v["latency_p99_ms"].as_f64().unwrap());
}

#[tokio::test]
async fn verify_reports_a_balance_the_ledger_does_not_explain() {
    use malaka_inventory::{Inventory, NewArticle, NewMovement, WarehouseCode};
    use rust_decimal::Decimal;
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["migrate", "--data-dir", "d"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("d/malaka.db").display()
    ))
    .await
    .unwrap();
    let inv = Inventory::sqlite(pool.clone());
    inv.create_warehouse(&WarehouseCode::parse("W").unwrap(), "W")
        .await
        .unwrap();
    inv.create_article(&NewArticle::parse("A", "A", None, None, None, None, None).unwrap())
        .await
        .unwrap();
    for (kind, qty, cost) in [("receipt", 10, Some(Decimal::TEN)), ("issue", 4, None)] {
        let m =
            NewMovement::parse(kind, "A", "W", None, Decimal::from(qty), cost, None, None).unwrap();
        inv.post(&m, "test").await.unwrap();
    }
    let verify = || {
        Command::new(BIN)
            .current_dir(dir.path())
            .args(["verify", "--data-dir", "d"])
            .output()
            .unwrap()
    };
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("1 balances, 2 ledger rows checked: the ledger and the balances agree"),
        "{text}"
    );

    sqlx::query("UPDATE inv_balances SET qty = '7'")
        .execute(&pool)
        .await
        .unwrap();
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("A in W: ledger qty 6"), "{text}");
}

#[test]
fn serve_refuses_zero_intervals_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    for (var, key) in [
        ("MALAKA_LIVE__WS_PING_INTERVAL", "live.ws_ping_interval"),
        ("MALAKA_LIVE__POLL_INTERVAL", "live.poll_interval"),
        ("MALAKA_JOBS__POLL_INTERVAL", "jobs.poll_interval"),
    ] {
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .arg("serve")
            .env(var, "0s")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("`{key}` must be between")), "{err}");
        assert!(
            !dir.path().join("malaka-data").exists(),
            "nothing was started or created"
        );
    }
}
