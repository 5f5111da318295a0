//! SQS through the real server against a local SQS-compatible server (moto): commands become
//! postings exactly once, malformed and unknown messages are recorded and deleted, an order with
//! an unavailable line posts nothing, and outbox events arrive on the outbound queue in order
//! per article (`malaka inbox` and `malaka worker` on SQS: crates/cli/tests/it/sqs.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::sqs::{
    Setup, drained, envelope, inbox, issue, last_reason, ledger, receipt, send, setup, setup_with,
    until,
};
use common::{Backend, TestApp};
use malaka_inventory::InboxState;
use malaka_sqs::{Outgoing, Publisher, admin};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receipt_message_posts_once_however_often_it_arrives() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(s) = setup(backend).await else {
            continue;
        };
        let m = envelope(
            "evt-1",
            "stock.receipt",
            json!({"sku": "A-1", "warehouse": "MAIN", "qty": "12", "unit_cost": "2.5", "reference": "PO-7"}),
        );
        // The same event three times (a sender's retries, SQS redeliveries).
        send(&s, &[m.clone(), m.clone(), m]).await;
        until(Duration::from_secs(20), "the queue drained", async || {
            drained(&s).await
        })
        .await;
        let rows = ledger(&s).await;
        assert_eq!(rows.len(), 1, "posted once: {rows:?}");
        assert_eq!(rows[0]["qty_change"], "12");
        assert_eq!(rows[0]["reference"], "PO-7");
        assert_eq!(rows[0]["posted_by"], "sqs:pos-1");
        let rec = inbox(&s, "evt-1").await.unwrap();
        assert_eq!(rec.state, InboxState::Processed);
        assert_eq!(rec.movements.len(), 1);
        assert_eq!(rec.movements[0], rows[0]["movement_id"].as_str().unwrap());
        s.app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_unknown_and_refused_messages_are_recorded_and_deleted() {
    let Some(s) = setup(Backend::Sqlite).await else {
        return;
    };
    send(
        &s,
        &[
            "this is not JSON".to_owned(),
            envelope("evt-unknown", "customer.created", json!({"name": "Ada"})),
            envelope(
                "evt-bad",
                "stock.issue",
                json!({"sku": "A-1", "warehouse": "MAIN"}),
            ),
            // One line cannot be served: nothing of the sale is posted.
            envelope(
                "evt-sale",
                "sale.completed",
                json!({"reference": "POS-42", "lines": [
                {"sku": "A-1", "warehouse": "MAIN", "qty": "1"},
                {"sku": "B-1", "warehouse": "MAIN", "qty": "1"}]}),
            ),
        ],
    )
    .await;
    until(
        Duration::from_secs(20),
        "every message recorded",
        async || {
            let db = s.app.state.db().clone();
            let malaka_server::db::Database::Sqlite(pool) = &db else {
                unreachable!()
            };
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM malaka_inbox")
                .fetch_one(pool)
                .await
                .unwrap();
            n == 4
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(ledger(&s).await.is_empty(), "nothing posted");
    assert_eq!(
        inbox(&s, "evt-unknown").await.unwrap().state,
        InboxState::Ignored
    );
    let bad = inbox(&s, "evt-bad").await.unwrap();
    assert_eq!(bad.state, InboxState::Refused);
    assert!(last_reason(&bad).contains("data.qty"), "{bad:?}");
    // The sale waits for stock: not refused for good, tried again.
    let sale = inbox(&s, "evt-sale").await.unwrap();
    assert_eq!(sale.state, InboxState::Retrying);
    assert!(
        last_reason(&sale).contains("insufficient stock of A-1"),
        "{sale:?}"
    );
    // The malformed one is kept under its SQS id.
    let db = s.app.state.db().clone();
    let malaka_server::db::Database::Sqlite(pool) = &db else {
        unreachable!()
    };
    let (payload, state): (String, String) =
        sqlx::query_as("SELECT payload, state FROM malaka_inbox WHERE kind = 'malformed'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(
        (payload.as_str(), state.as_str()),
        ("this is not JSON", "malformed")
    );

    // A purchase whose lines all fit posts every line; then the waiting sale goes through.
    send(
        &s,
        &[envelope(
            "evt-po",
            "purchase.received",
            json!({"reference": "PO-1", "lines": [
        {"sku": "A-1", "warehouse": "MAIN", "qty": "10", "unit_cost": "1"},
        {"sku": "B-1", "warehouse": "MAIN", "qty": "4", "unit_cost": "3"}]}),
        )],
    )
    .await;
    until(
        Duration::from_secs(30),
        "the purchase and the sale posted",
        async || ledger(&s).await.len() == 4,
    )
    .await;
    assert_eq!(inbox(&s, "evt-po").await.unwrap().movements.len(), 2);
    let sale = inbox(&s, "evt-sale").await.unwrap();
    assert_eq!(sale.state, InboxState::Processed);
    assert!(sale.attempts >= 2, "{sale:?}");
    assert_eq!(sale.movements.len(), 2);
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_events_arrive_on_the_outbound_queue_in_order_per_article() {
    let Some(s) = setup(Backend::Sqlite).await else {
        return;
    };
    // Interleaved postings on two articles through the API.
    let mut posted: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..12 {
        let sku = if i % 2 == 0 { "A-1" } else { "B-1" };
        let r = s
            .app
            .post_json(&s.token, "/api/v1/movements", &json!({"type": "receipt", "sku": sku, "warehouse": "MAIN", "qty": "1", "unit_cost": "1"}))
            .await;
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        posted
            .entry(sku.to_owned())
            .or_default()
            .push(v["id"].as_str().unwrap().to_owned());
    }
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    let mut types: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.values().map(Vec::len).sum::<usize>() < 12 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbound events missing: {got:?}"
        );
        let out = s
            .client
            .receive_message()
            .queue_url(&s.outbound)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in out.messages.unwrap_or_default() {
            let v: Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
            *types
                .entry(v["type"].as_str().unwrap().to_owned())
                .or_default() += 1;
            if v["type"] == "movement.posted" {
                got.entry(v["data"]["sku"].as_str().unwrap().to_owned())
                    .or_default()
                    .push(v["data"]["movement_id"].as_str().unwrap().to_owned());
            }
            s.client
                .delete_message()
                .queue_url(&s.outbound)
                .receipt_handle(m.receipt_handle.unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    assert_eq!(got, posted, "each article's movements in posting order");
    // The first receipt took A-1 from nothing to CRITICAL (min 5): a level change and an alert.
    assert!(
        types.get("stock.level_changed").copied().unwrap_or(0) >= 1,
        "{types:?}"
    );
    s.app.stop().await;
}

async fn ready(app: &TestApp) -> (u16, Value) {
    let r = app.get("/readyz").await;
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_supervised_task_restarts_after_a_panic_and_the_node_works_on() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(s) = setup(backend).await else {
            continue;
        };
        let (status, v) = ready(&s.app).await;
        assert_eq!(status, 200, "{v}");
        let names: Vec<String> = v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        let mut expected = vec![
            "live.relay",
            "live.hub",
            "live.job_updates",
            "sqs.malaka-in.poller.0",
            "sqs.malaka-in.poller.1",
            "sqs.malaka-in.deleter",
            "sqs.publisher",
            "jobs.claimer.default.0",
            "jobs.claimer.notifications.0",
            "jobs.wakeups",
            "jobs.heartbeat",
            "jobs.completer",
            "jobs.maintenance.rescuer",
            "jobs.maintenance.promoter",
            "jobs.maintenance.pruner",
            "reports.pruner",
        ];
        expected.push(match backend {
            Backend::Sqlite => "inventory.committer",
            Backend::Postgres => "live.listener",
        });
        for e in &expected {
            assert!(names.iter().any(|n| n == e), "{e} is supervised: {names:?}");
        }
        // A panic in every task at once.
        for n in &names {
            assert!(s.app.state.supervisor().inject_panic(n), "{n}");
        }
        until(
            Duration::from_secs(20),
            "every task restarted",
            async || {
                s.app
                    .state
                    .supervisor()
                    .snapshot()
                    .iter()
                    .all(|t| t.restarts >= 1 && t.state == malaka_runtime::TaskState::Running)
            },
        )
        .await;
        let (status, v) = ready(&s.app).await;
        assert_eq!((status, v["status"].as_str()), (200, Some("ready")), "{v}");
        // The killed pollers' long polls (1 s) are still open at the queue, which would hand a
        // message to them (to come back after its visibility timeout, as with any lost
        // receive): let them expire first.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Everything works on, without restarting the process: SQS commands post, the API
        // posts, events go out.
        send(
            &s,
            &[envelope(
                "evt-after",
                "stock.receipt",
                json!({"sku": "A-1", "warehouse": "MAIN", "qty": "4", "unit_cost": "1"}),
            )],
        )
        .await;
        until(Duration::from_secs(20), "the command posted", async || {
            ledger(&s).await.len() == 1
        })
        .await;
        let r = s
            .app
            .post_json(
                &s.token,
                "/api/v1/movements",
                &json!({"type": "issue", "sku": "A-1", "warehouse": "MAIN", "qty": "1"}),
            )
            .await;
        assert_eq!(r.status(), 201);
        until(Duration::from_secs(20), "events published", async || {
            admin::counts(&s.client, &s.outbound).await.unwrap().0 >= 2
        })
        .await;
        let metrics = s.app.get("/metrics").await.text().await.unwrap();
        assert!(
            metrics.contains("malaka_task_restarts_total{task=\"live.relay\"} 1"),
            "{metrics}"
        );
        s.app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_sqs_outage_degrades_the_node_but_keeps_it_ready() {
    let Some(s) = setup(Backend::Sqlite).await else {
        return;
    };
    let Setup {
        _moto: moto,
        app,
        token,
        ..
    } = s;
    drop(moto);
    until(
        Duration::from_secs(30),
        "the pollers degraded",
        async || {
            let (_, v) = ready(&app).await;
            v["status"] == "degraded"
                && v["tasks"].as_array().unwrap().iter().any(|t| {
                    t["name"] == "sqs.malaka-in.poller.0"
                        && t["state"] == "degraded"
                        && t["last_error"]
                            .as_str()
                            .unwrap_or_default()
                            .contains("receiving failed")
                })
        },
    )
    .await;
    let (status, _) = ready(&app).await;
    assert_eq!(
        status, 200,
        "an SQS outage does not take the node out of service"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("malaka_task_up{task=\"sqs.malaka-in.poller.0\"} 0"));
    let r = app
        .post_json(
            &token,
            "/api/v1/movements",
            &json!({"type": "receipt", "sku": "A-1", "warehouse": "MAIN", "qty": "1", "unit_cost": "1"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_issue_before_its_receipt_waits_and_posts_once_the_receipt_arrives() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(s) = setup(backend).await else {
            continue;
        };
        // A standard queue does not keep order: the issue comes first.
        send(&s, &[issue("evt-issue", "A-1", 5)]).await;
        until(Duration::from_secs(20), "the issue waiting", async || {
            inbox(&s, "evt-issue")
                .await
                .is_some_and(|r| r.state == InboxState::Retrying)
        })
        .await;
        assert!(ledger(&s).await.is_empty());
        send(&s, &[receipt("evt-receipt", "A-1", 5)]).await;
        until(Duration::from_secs(30), "the issue posted", async || {
            inbox(&s, "evt-issue")
                .await
                .is_some_and(|r| r.state == InboxState::Processed)
        })
        .await;
        let rows = ledger(&s).await;
        assert_eq!(rows.len(), 2, "each posted once: {rows:?}");
        assert_eq!(rows[0]["type"], "receipt");
        assert_eq!(rows[1]["type"], "issue");
        assert_eq!(rows[1]["qty_after"], "0");
        let r = inbox(&s, "evt-issue").await.unwrap();
        assert!(r.attempts >= 2, "{r:?}");
        assert!(
            r.errors
                .iter()
                .all(|a| a.error.contains("insufficient stock of A-1")),
            "every attempt's reason is kept: {r:?}"
        );
        until(Duration::from_secs(20), "the queue drained", async || {
            drained(&s).await
        })
        .await;
        s.app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_queues_dead_letter_policy_is_recorded_when_it_fires_first() {
    let Some(s) = setup_with(Backend::Sqlite, "malaka-in", Some(2), |_| {}).await else {
        return;
    };
    send(&s, &[issue("evt-dlq", "A-1", 1)]).await;
    until(Duration::from_secs(40), "dead-lettered", async || {
        inbox(&s, "evt-dlq")
            .await
            .is_some_and(|r| r.state == InboxState::DeadLettered)
    })
    .await;
    let dlq = s
        .client
        .get_queue_url()
        .queue_name("malaka-dlq")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    until(
        Duration::from_secs(30),
        "the message in the dead-letter queue",
        async || admin::counts(&s.client, &dlq).await.unwrap().0 == 1,
    )
    .await;
    assert!(ledger(&s).await.is_empty());
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_senders_numbering_alike_do_not_collide() {
    let Some(s) = setup(Backend::Sqlite).await else {
        return;
    };
    let from = |source: &str| {
        json!({"id": "1", "type": "stock.receipt", "source": source,
               "data": {"sku": "A-1", "warehouse": "MAIN", "qty": "3", "unit_cost": "1"}})
        .to_string()
    };
    send(
        &s,
        &[from("shop-east"), from("shop-west"), from("shop-east")],
    )
    .await;
    until(Duration::from_secs(20), "the queue drained", async || {
        drained(&s).await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ledger(&s).await.len(), 2, "one posting per sender");
    for source in ["shop-east", "shop-west"] {
        let r = s
            .app
            .state
            .inventory()
            .inbox(source, "1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.state, InboxState::Processed);
    }
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fifo_queue_keeps_each_groups_order() {
    // One poller: moto's receive is not atomic across concurrent calls (two receives racing can
    // both take messages of one group), which SQS itself never does.
    let Some(s) = setup_with(Backend::Sqlite, "malaka-in.fifo", None, |c| {
        c.sqs.inbound[0].pollers = 1;
    })
    .await
    else {
        return;
    };
    // 3 groups x 50 commands, interleaved; in each group a receipt and then an issue of the
    // same quantity, so an issue handled before its receipt would wait and come again.
    let skus = ["A-1", "B-1", "C-1"];
    let r = s
        .app
        .post_json(
            &s.token,
            "/api/v1/articles",
            &json!({"sku": "C-1", "name": "C"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let mut msgs = Vec::new();
    for i in 0..50u32 {
        for (g, sku) in skus.iter().enumerate() {
            let id = format!("g{g}-{i:02}");
            let qty = i % 7 + 1;
            let body = if i % 2 == 0 {
                receipt(&id, sku, qty)
            } else {
                issue(&id, sku, (i - 1) % 7 + 1)
            };
            msgs.push(Outgoing {
                id: id.clone(),
                group: format!("group-{g}"),
                body,
            });
        }
    }
    Publisher::new(s.client.clone(), &s.inbound)
        .send(&msgs)
        .await
        .unwrap();
    until(
        Duration::from_secs(60),
        "every command posted",
        async || ledger(&s).await.len() == 150,
    )
    .await;
    // Each received and handled once: no command ever waited.
    for m in &msgs {
        let r = inbox(&s, &m.id).await.unwrap();
        assert_eq!((r.state, r.attempts), (InboxState::Processed, 1), "{r:?}");
    }
    // The ledger shows each group's order.
    let rows = ledger(&s).await;
    for (g, sku) in skus.iter().enumerate() {
        let kinds: Vec<&str> = rows
            .iter()
            .filter(|r| r["sku"] == *sku)
            .map(|r| r["type"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = (0..50)
            .map(|i| if i % 2 == 0 { "receipt" } else { "issue" })
            .collect();
        assert_eq!(kinds, want, "group {g}");
    }
    s.app.stop().await;
}

/// Messages of other types go to their listeners through the outbox: a listener's failure is
/// kept and retried like any delivery's, and the message is not delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_sqs_event_a_listener_fails_is_kept_and_retried() {
    let Some(s) = setup_with(Backend::Sqlite, "malaka-in", None, |c| {
        c.live.delivery_backoff = Duration::from_millis(100);
    })
    .await
    else {
        return;
    };
    let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let (b, g) = (broken.clone(), got.clone());
    s.app.state.bus().on_named(
        "customer.created",
        "crm",
        malaka_runtime::ListenerOptions::default(),
        move |e| {
            let (b, g) = (b.clone(), g.clone());
            async move {
                if b.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(malaka_runtime::ListenerError::retryable("the CRM is down"));
                }
                g.lock().unwrap().push(e.data.clone());
                Ok(())
            }
        },
    );
    s.app
        .state
        .live()
        .deliveries()
        .ensure_cursors()
        .await
        .unwrap();
    send(
        &s,
        &[envelope(
            "cust-1",
            "customer.created",
            json!({"name": "Ada"}),
        )],
    )
    .await;
    until(
        Duration::from_secs(20),
        "the message processed",
        async || {
            inbox(&s, "cust-1")
                .await
                .is_some_and(|r| r.state == InboxState::Processed)
        },
    )
    .await;
    let failures = async || -> Vec<Value> {
        let v: Value = s
            .app
            .get_as(&s.token, "/api/v1/events/failures?listener=crm")
            .await
            .json()
            .await
            .unwrap();
        v["items"].as_array().unwrap().clone()
    };
    until(
        Duration::from_secs(10),
        "the failure recorded",
        async || failures().await.len() == 1,
    )
    .await;
    broken.store(false, std::sync::atomic::Ordering::SeqCst);
    until(
        Duration::from_secs(20),
        "retried and delivered",
        async || failures().await[0]["state"] == "resolved",
    )
    .await;
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["data"]["name"], "Ada");
    assert_eq!(got[0]["source"], "pos-1");
    until(Duration::from_secs(20), "the queue drained", async || {
        drained(&s).await
    })
    .await;
    s.app.stop().await;
}
