//! SQS and the binary: `malaka inbox list|show|replay` on a parked command, and a `malaka worker`
//! whose postings show in a server's cached balances.

use crate::common;

use std::time::Duration;

use common::sqs::{
    drained, inbox, issue, last_reason, ledger, moto, receipt, send, setup_with, until,
};
use common::{Backend, spawn_app_with};
use malaka_inventory::InboxState;
use malaka_sqs::{Outgoing, Publisher, admin};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_that_keeps_waiting_is_parked_and_replayed_by_a_person() {
    let Some(s) = setup_with(Backend::Sqlite, "malaka-in", None, |c| c.sqs.park_after = 3).await
    else {
        return;
    };
    send(&s, &[issue("evt-orphan", "B-1", 2)]).await;
    until(Duration::from_secs(40), "the issue parked", async || {
        inbox(&s, "evt-orphan")
            .await
            .is_some_and(|r| r.state == InboxState::Parked)
    })
    .await;
    let r = inbox(&s, "evt-orphan").await.unwrap();
    assert_eq!((r.attempts, r.errors.len()), (3, 3), "{r:?}");
    assert!(last_reason(&r).contains("insufficient stock of B-1"));
    // Parked by Malaka itself: the message is gone from the queue, its body kept.
    until(Duration::from_secs(20), "the queue drained", async || {
        drained(&s).await
    })
    .await;
    assert!(r.payload.contains("evt-orphan"));
    assert!(ledger(&s).await.is_empty(), "nothing posted");

    // A manager sees it with its reasons.
    let manager = s.app.token(malaka_server::auth::Role::Manager).await;
    let v: Value = s
        .app
        .get_as(&manager, "/api/v1/inbox?state=parked")
        .await
        .json()
        .await
        .unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(items[0]["message_id"], "evt-orphan");
    assert_eq!(items[0]["replayable"], true);
    assert_eq!(items[0]["errors"].as_array().unwrap().len(), 3);
    let id = items[0]["id"].as_i64().unwrap();
    // A clerk may not.
    let clerk = s.app.token(malaka_server::auth::Role::Clerk).await;
    assert_eq!(s.app.get_as(&clerk, "/api/v1/inbox").await.status(), 403);
    // Replayed while the stock is still missing: parked again, with the new reason.
    let r = s
        .app
        .post_json(&manager, &format!("/api/v1/inbox/{id}/replay"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["state"].as_str(), v["attempts"].as_i64()),
        (Some("parked"), Some(4)),
        "{v}"
    );
    // Stock arrives; the CLI replays it (on the same SQLite file): posted once.
    let r = s
        .app
        .post_json(&s.token, "/api/v1/movements", &json!({"type": "receipt", "sku": "B-1", "warehouse": "MAIN", "qty": "2", "unit_cost": "1"}))
        .await;
    assert_eq!(r.status(), 201);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_malaka"))
            .args(args)
            .args(["--database-url", &s.app.database_url])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["inbox", "list", "--state", "parked"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("evt-orphan") && out.contains("parked"),
        "{out}"
    );
    let (ok, out, err) = cli(&["inbox", "show", &id.to_string()]);
    assert!(ok, "{err}");
    assert!(out.contains("insufficient stock of B-1"), "{out}");
    let (ok, out, err) = cli(&["inbox", "replay", &id.to_string(), "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "processed", "{v}");
    assert_eq!(
        ledger(&s).await.len(),
        2,
        "the receipt and the replayed issue"
    );
    // Processed: no second replay.
    let r = s
        .app
        .post_json(&manager, &format!("/api/v1/inbox/{id}/replay"), &json!({}))
        .await;
    assert_eq!(r.status(), 409);
    let (ok, _, err) = cli(&["inbox", "replay", &id.to_string()]);
    assert!(
        !ok && err.contains("not_replayable") || err.contains("can be replayed"),
        "{err}"
    );
    assert_eq!(ledger(&s).await.len(), 2, "nothing posted twice");
    s.app.stop().await;
}

/// `malaka worker` consumes SQS and posts into the SQLite file `serve` answers reads from: a
/// posting of the worker shows in `serve`'s cached balances within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workers_postings_show_in_serves_cached_balances() {
    let Some(m) = moto() else {
        return;
    };
    let client =
        malaka_sqs::client_with("us-east-1", Some(&m.endpoint), Some(("test", "test"))).await;
    let inbound = admin::create(&client, "malaka-in", 5, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.clone();
    let app = spawn_app_with(Backend::Sqlite, move |c| c.data_dir = d)
        .await
        .unwrap();
    let token = app.admin_token().await;
    for (path, body) in [
        (
            "/api/v1/warehouses",
            json!({"code": "MAIN", "name": "Main"}),
        ),
        ("/api/v1/articles", json!({"sku": "A-1", "name": "A"})),
    ] {
        assert_eq!(app.post_json(&token, path, &body).await.status(), 201);
    }
    let qty = async || -> String {
        let v: Value = app
            .get_as(&token, "/api/v1/balances?sku=A-1")
            .await
            .json()
            .await
            .unwrap();
        v["items"][0]["qty"].as_str().unwrap_or("0").to_owned()
    };
    assert_eq!(qty().await, "0", "cached: nothing yet");
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n[sqs]\nendpoint_url = {endpoint:?}\naccess_key_id = \"test\"\n\
             secret_access_key = \"test\"\nwait = \"1s\"\n[[sqs.inbound]]\nurl = {inbound:?}\n",
            data = data.display().to_string(),
            endpoint = m.endpoint,
        ),
    )
    .unwrap();
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_malaka"))
        .args(["--config", config.to_str().unwrap(), "worker"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Publisher::new(client.clone(), &inbound)
        .send(&[Outgoing {
            id: "w-1".into(),
            group: "g".into(),
            body: receipt("w-1", "A-1", 7),
        }])
        .await
        .unwrap();
    until(Duration::from_secs(30), "the worker posted", async || {
        app.state
            .inventory()
            .inbox("pos-1", "w-1")
            .await
            .unwrap()
            .is_some_and(|r| r.state == InboxState::Processed)
    })
    .await;
    let posted = tokio::time::Instant::now();
    until(Duration::from_secs(1), "serve sees it", async || {
        qty().await == "7"
    })
    .await;
    eprintln!(
        "serve saw the worker's posting after {:?}",
        posted.elapsed()
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let _ = worker.wait();
    app.stop().await;
}
