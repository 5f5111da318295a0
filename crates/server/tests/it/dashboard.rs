//! The dashboard in headless Chromium (Debian's `/usr/bin/chromium`, driven by playwright-core
//! from `tests/browser`): sign in, panels filled, a movement posted through the API shows its
//! alert within 1 s without a reload, a failed job is retried from the page, and the page fits a
//! phone. Screenshots are kept in `target/test-artifacts/`. `scripts/test` installs Chromium and
//! the npm package; outside CI the test is skipped when they are missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use malaka_jobs::{JobState, NewJob};
use serde_json::{Value, json};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Why the browser test cannot run here, if it cannot.
fn missing(browser_dir: &std::path::Path) -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    if !std::path::Path::new(&chromium).exists() {
        return Some(format!("{chromium} is not installed"));
    }
    if !browser_dir.join("node_modules/playwright-core").exists() {
        return Some("playwright-core is not installed (npm ci in tests/browser)".to_owned());
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("node is not installed".to_owned());
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_a_new_alert_without_a_reload() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = manifest.join("tests/browser");
    if let Some(why) = missing(&browser_dir) {
        assert!(!in_ci(), "the browser test must run under CI: {why}");
        eprintln!("skipping the browser test: {why}");
        return;
    }
    let app = common::spawn_app().await;
    let t = app.token(malaka_server::auth::Role::Manager).await;
    for (path, body) in [
        (
            "/api/v1/warehouses",
            json!({"code": "MAIN", "name": "Main store"}),
        ),
        (
            "/api/v1/articles",
            json!({"sku": "DASH-1", "name": "Dashboard bolt", "min_qty": "10"}),
        ),
        (
            "/api/v1/movements",
            json!({"type": "receipt", "sku": "DASH-1", "warehouse": "MAIN", "qty": "20", "unit_cost": "0.5"}),
        ),
    ] {
        let r = app.post_json(&t, path, &body).await;
        assert_eq!(r.status(), 201, "{path}");
    }
    // A job that fails for good, for the jobs panel.
    let failed = app
        .state
        .jobs()
        .enqueue(NewJob::new("no.such.kind", json!({})).max_attempts(1))
        .await
        .unwrap()
        .id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let j = app.state.jobs().get(failed).await.unwrap().unwrap();
        if j.state == JobState::Discarded {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job not discarded: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A job waiting for tomorrow, for the Cancel button.
    let waiting = app
        .state
        .jobs()
        .enqueue(
            NewJob::new("noop", json!({})).run_at(chrono::Utc::now() + chrono::Duration::days(1)),
        )
        .await
        .unwrap()
        .id;

    // A command from another system, parked for lack of stock, for the Integrations card.
    let entry = malaka_inventory::InboxEntry {
        id: "pos-77".into(),
        source: "till-3".into(),
        kind: "stock.issue".into(),
        payload: json!({"id": "pos-77", "type": "stock.issue", "source": "till-3",
                        "data": {"sku": "DASH-1", "warehouse": "MAIN", "qty": "1"}})
        .to_string(),
        event: None,
    };
    app.state
        .inventory()
        .record_inbox(
            &entry,
            malaka_inventory::Disposition::Attempt { park_after: 1 },
            Some("insufficient stock of DASH-1 in MAIN"),
        )
        .await
        .unwrap();

    let shots = manifest.join("../../target/test-artifacts");
    std::fs::create_dir_all(&shots).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(format!("http://{}", app.addr))
        .arg(&t)
        .arg(&shots)
        .arg(app.token(malaka_server::auth::Role::Viewer).await)
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed (screenshot in {}): {stderr}\n{stdout}",
        shots.display()
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    eprintln!("dashboard: {result}");
    assert!(result["alert_ms"].as_u64().unwrap() <= 1000, "{result}");
    let r = app
        .state
        .inventory()
        .inbox("till-3", "pos-77")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r.state,
        malaka_inventory::InboxState::Processed,
        "replayed from the page"
    );
    for page in ["dashboard", "warehouses", "articles", "post", "article"] {
        for width in [1366, 390] {
            let shot = format!("{page}-{width}.png");
            assert!(shots.join(&shot).exists(), "{shot}");
        }
    }
    assert!(shots.join("dashboard-viewer.png").exists());
    assert_eq!(
        result["article_page"]["ledger"].as_array().map(Vec::len),
        Some(6),
        "{result}"
    );
    // The retry from the page reached the queue: the job ran again (and, its kind still
    // unknown, failed again).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let j = app.state.jobs().get(failed).await.unwrap().unwrap();
        if j.errors.len() == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not run again: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let j = app.state.jobs().get(waiting).await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Cancelled, "{j:?}");
    app.stop().await;
}
