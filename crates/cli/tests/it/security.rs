//! Secrets that never reach the logs, job errors or metrics of `malaka serve`, nor the
//! configuration `malaka config` prints.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_malaka");

/// A local HTTP receiver: counts requests per path; `/hook` answers `status`, `/redirect`
/// answers 302 to `/landed`.
async fn receiver(status: u16) -> (u16, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let s = Arc::clone(&s);
        async move {
            let path = req.uri().path().to_owned();
            s.lock().unwrap().push(path.clone());
            let code = if path == "/redirect" { 302 } else { status };
            axum::response::Response::builder()
                .status(code)
                .header("Location", "/landed")
                .body(axum::body::Body::empty())
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, seen)
}

const SMTP_PASSWORD: &str = "SmtpPw-9f2c41d7";
const SQS_SECRET: &str = "SqsKey-6b1e08aa";
const DB_PASSWORD: &str = "DbPw-41ac9e02";
const HOOK_SECRET: &str = "HookSig-7d3a55c0e1";
const HOOK_PATH: &str = "T0PathSecret-88e1";
const BOOTSTRAP: &str = "mlk_BootstrapSecretBootstrapSecretBootstrap0";

#[test]
fn printed_configuration_shows_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .arg("config")
        .env("MALAKA_NOTIFY__SMTP__PASSWORD", SMTP_PASSWORD)
        .env("MALAKA_SQS__SECRET_ACCESS_KEY", SQS_SECRET)
        .env(
            "MALAKA_DATABASE__URL",
            format!("postgres://malaka:{DB_PASSWORD}@127.0.0.1:5432/test"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for s in [SMTP_PASSWORD, SQS_SECRET, DB_PASSWORD] {
        assert!(!text.contains(s), "{s} printed:\n{text}");
    }
    assert!(text.contains("password = \"***\""), "{text}");
    assert!(text.contains("secret_access_key = \"***\""), "{text}");
    assert!(
        text.contains("postgres://malaka:***@127.0.0.1:5432/test"),
        "{text}"
    );
}

/// Runs `malaka serve` with every secret set and used (SMTP login, SQS signing, a bootstrap
/// token, a created token, a webhook's signing secret and secret path, a WebSocket ticket),
/// with debug logs; then looks for each secret in the logs, the jobs a viewer can read, and
/// the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_stay_out_of_logs_job_errors_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = closed.local_addr().unwrap().port();
    drop(closed);
    let (hook_port, seen) = receiver(500).await;
    let (smtp_port, logins) = smtp_that_asks_for_a_login().await;
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .env("MALAKA_LOG__FILTER", "debug")
        .env("MALAKA_BOOTSTRAP_TOKEN", BOOTSTRAP)
        .env("MALAKA_NOTIFY__ALLOW_PRIVATE_TARGETS", "true")
        .env("MALAKA_NOTIFY__MAX_ATTEMPTS", "1")
        .env("MALAKA_NOTIFY__SMTP__HOST", "127.0.0.1")
        .env("MALAKA_NOTIFY__SMTP__PORT", smtp_port.to_string())
        .env("MALAKA_NOTIFY__SMTP__USERNAME", "malaka")
        .env("MALAKA_NOTIFY__SMTP__PASSWORD", SMTP_PASSWORD)
        .env(
            "MALAKA_SQS__ENDPOINT_URL",
            format!("http://127.0.0.1:{dead_port}"),
        )
        .env("MALAKA_SQS__ACCESS_KEY_ID", "AKIDMALAKATEST")
        .env("MALAKA_SQS__SECRET_ACCESS_KEY", SQS_SECRET)
        .env(
            "MALAKA_SQS__OUTBOUND_URL",
            format!("http://127.0.0.1:{dead_port}/000000000000/events"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let l = Arc::clone(&logs);
    let out_reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            l.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    let l = Arc::clone(&logs);
    let err_reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["message"] == "malaka is listening"
            {
                let _ = addr_tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
            }
            l.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("listening");
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{addr}{p}");
    let post = |token: String, path: &'static str, body: Value| {
        let (http, u) = (http.clone(), url(path));
        async move {
            let r = http
                .post(u)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert!((200..300).contains(&s), "{path}: {s} {v}");
            v
        }
    };
    // A token made over the API (its secret is answered once).
    let created = post(
        BOOTSTRAP.into(),
        "/api/v1/tokens",
        json!({"name": "viewer", "role": "viewer"}),
    )
    .await;
    let viewer = created["token"].as_str().unwrap().to_owned();
    post(
        BOOTSTRAP.into(),
        "/api/v1/notification-rules",
        json!({
            "channel": "webhook", "secret": HOOK_SECRET,
            "url": format!("http://127.0.0.1:{hook_port}/hooks/{HOOK_PATH}?token={HOOK_PATH}"),
        }),
    )
    .await;
    post(
        BOOTSTRAP.into(),
        "/api/v1/notification-rules",
        json!({"channel": "email", "address": "ops@example.com"}),
    )
    .await;
    // A WebSocket ticket, used.
    let ticket = post(viewer.clone(), "/api/v1/ws/ticket", json!({})).await["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/ws?ticket={ticket}"))
            .await
            .unwrap();
    // An alert: one webhook delivery (answered 500) and one email (login refused).
    post(
        BOOTSTRAP.into(),
        "/api/v1/warehouses",
        json!({"code": "MAIN", "name": "Main"}),
    )
    .await;
    post(
        BOOTSTRAP.into(),
        "/api/v1/articles",
        json!({"sku": "SEC-1", "name": "Secret", "min_qty": "10"}),
    )
    .await;
    post(BOOTSTRAP.into(), "/api/v1/movements", json!({"type": "receipt", "sku": "SEC-1", "warehouse": "MAIN", "qty": "1", "unit_cost": "1"})).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
    let mut jobs = Value::Null;
    for _ in 0..400 {
        jobs = http
            .get(url(
                "/api/v1/jobs?queue=notifications&state=discarded&limit=100",
            ))
            .bearer_auth(&viewer)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if jobs["items"].as_array().is_some_and(|a| a.len() >= 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(jobs["items"].as_array().map(Vec::len), Some(2), "{jobs}");
    assert!(!seen.lock().unwrap().is_empty(), "the webhook was called");
    assert!(
        logins.load(Ordering::SeqCst) >= 1,
        "the SMTP login was tried"
    );
    let metrics = http
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Give the SQS publisher time to fail (and log) with its signed requests.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(ws);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    out_reader.join().unwrap();
    err_reader.join().unwrap();
    let logs = logs.lock().unwrap().clone();
    assert!(logs.contains("/api/v1/ws"), "the logs hold the requests");
    let jobs = jobs.to_string();
    for (name, secret) in [
        ("the SMTP password", SMTP_PASSWORD),
        ("the SQS secret key", SQS_SECRET),
        ("the webhook's signing secret", HOOK_SECRET),
        ("the webhook's secret path", HOOK_PATH),
        ("the bootstrap token", BOOTSTRAP),
        ("a created token", viewer.as_str()),
        ("a WebSocket ticket", ticket.as_str()),
    ] {
        assert!(!logs.contains(secret), "{name} is in the logs");
        assert!(
            !jobs.contains(secret),
            "{name} is in job errors or payloads: {jobs}"
        );
        assert!(!metrics.contains(secret), "{name} is in the metrics");
    }
}

/// A TCP server that speaks just enough SMTP to ask for AUTH PLAIN, and counts the logins it
/// was sent.
async fn smtp_that_asks_for_a_login() -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let h = Arc::clone(&h);
            tokio::spawn(async move {
                use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
                let (r, mut w) = sock.into_split();
                let mut lines = tokio::io::BufReader::new(r).lines();
                let _ = w.write_all(b"220 test ESMTP\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let up = line.to_ascii_uppercase();
                    let answer: &[u8] = if up.starts_with("EHLO") {
                        b"250-test\r\n250 AUTH PLAIN LOGIN\r\n"
                    } else if up.starts_with("AUTH") {
                        h.fetch_add(1, Ordering::SeqCst);
                        b"535 5.7.8 authentication failed\r\n"
                    } else if up.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    if w.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, hits)
}
