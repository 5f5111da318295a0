//! The OpenAPI document as a contract, checked from outside by tools that know only the
//! document: Schemathesis (a pinned version in the virtualenv `scripts/test` makes) generates
//! requests from it against a live server and checks every answer against it, and a client
//! generated from it (openapi-python-client, pinned there too) posts a movement.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
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
    // A fixed seed, so CI runs the same cases each time; set these to explore further.
    let seed = std::env::var("MALAKA_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".to_owned());
    let examples =
        std::env::var("MALAKA_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| MAX_EXAMPLES.to_string());
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
        // Every check but one: `use_after_free` wants a GET after a successful DELETE to answer
        // 404, and a ledger keeps what it recorded: DELETE /reports/{id} of a report still
        // queued or running cancels it and keeps it (`cancelled`), DELETE /articles/{sku} of an
        // article with ledger rows archives it, both documented.
        .args(["--checks", "all", "--exclude-checks", "use_after_free"])
        .args(["--max-examples", &examples])
        .args(["--seed", &seed])
        .args(["--workers", "1", "--generation-database", "none"])
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

/// Uses the client generated from the document: makes an article and a warehouse, posts a
/// receipt and reads the balance back. Prints the balance as JSON.
const CLIENT_SCRIPT: &str = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
from malaka_client import AuthenticatedClient
from malaka_client.api.articles import create_article
from malaka_client.api.warehouses import create_warehouse
from malaka_client.api.movements import post_movement
from malaka_client.api.stock import balances
from malaka_client.models import ArticleIn, WarehouseIn, ReceiptIn, ReceiptInType, ValuationMethod

client = AuthenticatedClient(base_url=sys.argv[2], token=sys.argv[3])
r = create_article.sync_detailed(client=client, body=ArticleIn(sku="GEN-1", name="Generated", valuation=ValuationMethod.FIFO))
assert r.status_code == 201, (r.status_code, r.content)
r = create_warehouse.sync_detailed(client=client, body=WarehouseIn(code="GEN", name="Generated"))
assert r.status_code == 201, (r.status_code, r.content)
r = post_movement.sync_detailed(
    client=client,
    body=ReceiptIn(type_=ReceiptInType.RECEIPT, sku="GEN-1", warehouse="GEN", qty="12.5", unit_cost="2.4"),
    idempotency_key="generated-client-1",
)
assert r.status_code == 201, (r.status_code, r.content)
movement = r.parsed
assert movement.qty == "12.5", movement
page = balances.sync(client=client, sku="GEN-1")
print(json.dumps([b.to_dict() for b in page.items]))
"#;

async fn generated_client(app: &TestApp) {
    let Some(py) = python_with("openapi_python_client, openapi_spec_validator") else {
        return;
    };
    let token = app.admin_token().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let doc = served_document(app, &token, dir.path()).await;

    let mut validate = Command::new(py.with_file_name("openapi-spec-validator"));
    validate.arg(&doc);
    let (ok, out) = run(validate, Duration::from_secs(120)).await;
    assert!(ok, "openapi-spec-validator refuses the document:\n{out}");

    let package = dir.path().join("malaka_client");
    // No formatter afterwards (ruff is not installed): any other warning fails the test.
    let config = dir.path().join("generator.yaml");
    std::fs::write(&config, "post_hooks: []\n").expect("write");
    let mut generate = Command::new(py.with_file_name("openapi-python-client"));
    generate
        .current_dir(dir.path())
        .args([
            "generate",
            "--meta",
            "none",
            "--fail-on-warning",
            "--config",
        ])
        .arg(&config)
        .arg("--path")
        .arg(&doc)
        .arg("--output-path")
        .arg(&package);
    let (ok, out) = run(generate, Duration::from_secs(180)).await;
    assert!(ok, "openapi-python-client cannot generate a client:\n{out}");
    if std::env::var_os("MALAKA_CONTRACT_KEEP").is_some() {
        eprintln!("generator said:\n{out}\nclient in {}", package.display());
        std::mem::forget(dir);
        return;
    }

    let mut script = Command::new(&py);
    script
        .args(["-c", CLIENT_SCRIPT])
        .arg(dir.path())
        .arg(app.url(""))
        .arg(&token);
    let (ok, out) = run(script, Duration::from_secs(120)).await;
    assert!(ok, "the generated client failed:\n{out}");
    let rows: Value = serde_json::from_str(out.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["sku"], "GEN-1");
    assert_eq!(rows[0]["warehouse"], "GEN");
    assert_eq!(rows[0]["qty"], "12.5");
    assert_eq!(rows[0]["value"], "30");
    assert_eq!(rows[0]["rate"], "2.4");
    // What the client posted is in the ledger as the server sees it.
    let ledger: Value = app
        .get_as(&token, "/api/v1/ledger?sku=GEN-1")
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(ledger["items"][0]["type"], "receipt");
    assert_eq!(ledger["items"][0]["qty_change"], "12.5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_client_posts_a_movement() {
    let app = crate::common::spawn_app().await;
    generated_client(&app).await;
    app.stop().await;
}
