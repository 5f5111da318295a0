//! The bootstrap admin token of `malaka serve` and the `malaka token` commands, through the
//! binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_malaka");

/// A running `malaka serve` with its stdout lines.
struct Served {
    child: Child,
    addr: String,
    stdout: Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &std::path::Path, bootstrap: Option<&str>) -> Served {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .env_remove("MALAKA_BOOTSTRAP_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = bootstrap {
        cmd.env("MALAKA_BOOTSTRAP_TOKEN", t);
    }
    let mut child = cmd.spawn().expect("spawn malaka");
    let stderr = child.stderr.take().unwrap();
    let stdout = child.stdout.take().unwrap();
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
    let (out_tx, out_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out_tx.send(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("malaka reports its address");
    Served {
        child,
        addr,
        stdout: out_rx,
    }
}

async fn status_with(addr: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{addr}/api/v1/tokens"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn serve_prints_a_bootstrap_admin_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(dir.path(), None);
    // Printed before the server reports its address.
    let line = served
        .stdout
        .recv_timeout(Duration::from_secs(5))
        .expect("a bootstrap line on stdout");
    let token = line
        .strip_prefix("admin token (shown once): ")
        .unwrap_or_else(|| panic!("unexpected stdout line: {line}"))
        .to_owned();
    assert!(malaka_server::auth::is_well_formed(&token), "{token}");
    assert_eq!(status_with(&served.addr, &token).await, 200);
    drop(served);

    // A second start finds a token and prints nothing.
    let served = serve(dir.path(), None);
    assert!(
        served
            .stdout
            .recv_timeout(Duration::from_millis(300))
            .is_err()
    );
    assert_eq!(status_with(&served.addr, &token).await, 200);
}

#[tokio::test]
async fn serve_stores_the_bootstrap_token_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let token = format!("mlk_{}", "Ab3-_".repeat(8));
    let served = serve(dir.path(), Some(&token));
    assert!(
        served
            .stdout
            .recv_timeout(Duration::from_millis(300))
            .is_err(),
        "nothing is printed"
    );
    assert_eq!(status_with(&served.addr, &token).await, 200);
    drop(served);

    // A malformed one stops the server with an error naming the variable.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("MALAKA_BOOTSTRAP_TOKEN", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("MALAKA_BOOTSTRAP_TOKEN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn token_cli_creates_and_lists_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["token", "create", "--name", "ci", "--role", "viewer"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.trim();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(malaka_server::auth::is_well_formed(token), "{stdout}");

    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["token", "list"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let list = String::from_utf8(out.stdout).unwrap();
    assert!(list.contains("ci") && list.contains("viewer"), "{list}");
    assert!(!list.contains(token));

    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["token", "create", "--name", "x", "--role", "root"])
        .output()
        .unwrap();
    assert!(!out.status.success());

    // A token exists, so serve prints no bootstrap token; the viewer authenticates.
    let served = serve(dir.path(), None);
    assert!(
        served
            .stdout
            .recv_timeout(Duration::from_millis(300))
            .is_err()
    );
    assert_eq!(status_with(&served.addr, token).await, 403);
}
