//! The OpenAPI document as a contract, checked from outside by tools that know only the
//! document: Schemathesis (a pinned version in the virtualenv `scripts/test` makes) generates
//! requests from it against a live server and checks every answer against it, and a client
//! generated from it (openapi-python-client, pinned there too) posts a movement.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::Command;

use crate::common::{TestApp, in_ci_pub, on_both};

/// Generated cases per operation and phase: enough to reach every constraint in the document,
/// few enough for about a minute per backend on two cores.
const MAX_EXAMPLES: u32 = 30;

/// The longest a Schemathesis run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(420);

/// The virtualenv's Python when it has `modules`; `None` (the test is skipped) outside CI when
/// it has not, a failure under CI.
fn python_with(modules: &str) -> Option<PathBuf> {
    let py = std::env::var("MALAKA_TEST_PYTHON").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"),
        PathBuf::from,
    );
    let ok = std::process::Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    let why = format!(
        "{} cannot import {modules} (scripts/test installs it in .venv)",
        py.display()
    );
    assert!(!in_ci_pub(), "contract tests must run under CI: {why}");
    eprintln!("skipping a contract test: {why}");
    None
}

/// Runs `cmd` to its end (or kills it at `limit`) and gives its exit success and output.
async fn run(mut cmd: Command, limit: Duration) -> (bool, String) {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn");
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => {
            let out = out.expect("wait");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        }
        Err(_) => (false, format!("still running after {limit:?}; killed")),
    }
}

fn contract_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/contract")
        .join(name)
}

/// The server's configuration for a contract run: no per-token rate limit and a generous
/// allowance of failed authentications, so the generated requests reach the handlers instead of
/// being answered 429 (which the document lists all the same).
fn unthrottled(c: &mut malaka_server::Config) {
    c.api.rate_limit_per_second = 0;
    c.api.failed_auth_per_minute = 100_000;
    c.api.failed_auth_burst = 100_000;
}

async fn schemathesis(app: &TestApp) {
    let Some(py) = python_with("schemathesis") else {
        return;
    };
    let new = app
        .state
        .auth()
        .tokens
        .create("contract", malaka_server::auth::Role::Admin)
        .await
        .expect("token");
    let token = new.token.expose().to_owned();
    // The document as the server serves it, read the way any client reads it.
    let dir = tempfile::tempdir().expect("temp dir");
    let doc = served_document(app, &token, dir.path()).await;
    let started = Instant::now();
    let mut cmd = Command::new(py.with_file_name("schemathesis"));
    let seed = std::env::var("MALAKA_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".to_owned());
    cmd.current_dir(dir.path())
        .env("SCHEMATHESIS_HOOKS", contract_file("hooks.py"))
        .env("MALAKA_CONTRACT_TOKEN", &token)
        .env("MALAKA_CONTRACT_TOKEN_ID", new.info.id.to_string())
        .arg("--config-file")
        .arg(contract_file("schemathesis.toml"))
        .arg("--no-color")
        .arg("run")
        .arg(&doc)
        .args(["--url", &app.url("")])
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        .args(["--seed", &seed])
        .args(["--workers", "2", "--generation-database", "none"])
        .args(["--request-timeout", "20"]);
    let (ok, out) = run(cmd, RUN_LIMIT).await;
    eprintln!(
        "schemathesis on {:?}: {:.0?}\n{}",
        app.backend,
        started.elapsed(),
        tail(&out, 40)
    );
    assert!(ok, "Schemathesis found failures:\n{out}");
}

/// `GET /api/v1/openapi.json`, written to `dir/openapi.json`.
async fn served_document(app: &TestApp, token: &str, dir: &Path) -> PathBuf {
    let r = app.get_as(token, "/api/v1/openapi.json").await;
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.expect("JSON");
    let path = dir.join("openapi.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).expect("JSON")).expect("write");
    path
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

on_both!(schemathesis, super::unthrottled);
