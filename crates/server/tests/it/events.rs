//! Durable delivery of outbox events to the bus's named listeners, through the real server: a
//! failing listener's delivery is recorded, retried with backoff, parked and replayed, while its
//! cursor moves on; retries survive a restart; outbox pruning keeps what a durable reader has
//! not passed; cached balances agree across PostgreSQL nodes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Backend, TestApp, spawn_app_with, spawn_node_like};
use malaka_runtime::{ListenerError, ListenerOptions};
use malaka_server::db::DatabaseExt as _;
use serde_json::{Value, json};

async fn until(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn setup(app: &TestApp) -> String {
    let t = app.admin_token().await;
    for (path, body) in [
        ("/api/v1/warehouses", json!({"code": "W", "name": "W"})),
        ("/api/v1/articles", json!({"sku": "A", "name": "A"})),
    ] {
        let r = app.post_json(&t, path, &body).await;
        assert_eq!(r.status(), 201);
    }
    t
}

async fn receipt(app: &TestApp, t: &str, reference: &str) {
    let r = app
        .post_json(
            t,
            "/api/v1/movements",
            &json!({"type": "receipt", "sku": "A", "warehouse": "W", "qty": "1", "unit_cost": "1", "reference": reference}),
        )
        .await;
    assert_eq!(r.status(), 201);
}

/// What a test listener saw and whether it fails.
#[derive(Default)]
struct Mirror {
    /// References delivered successfully.
    seen: std::sync::Mutex<Vec<String>>,
    /// Deliveries tried.
    tries: AtomicUsize,
    /// Fail events whose reference is BAD while set.
    broken: AtomicBool,
}

/// Registers `ledger_mirror` on `movement.posted` and gives it its cursor now.
async fn mirror(app: &TestApp) -> Arc<Mirror> {
    let m = Arc::new(Mirror::default());
    m.broken.store(true, Ordering::SeqCst);
    let seen = Arc::clone(&m);
    app.state.bus().on_named(
        "movement.posted",
        "ledger_mirror",
        ListenerOptions::default(),
        move |e| {
            let m = Arc::clone(&seen);
            async move {
                m.tries.fetch_add(1, Ordering::SeqCst);
                let reference = e.data["reference"].as_str().unwrap_or_default().to_owned();
                if reference == "BAD" && m.broken.load(Ordering::SeqCst) {
                    return Err(ListenerError::retryable("the mirror is down"));
                }
                m.seen.lock().unwrap().push(reference);
                Ok(())
            }
        },
    );
    app.state
        .live()
        .deliveries()
        .ensure_cursors()
        .await
        .unwrap();
    m
}

async fn failures(app: &TestApp, t: &str, query: &str) -> Vec<Value> {
    let v: Value = app
        .get_as(t, &format!("/api/v1/events/failures{query}"))
        .await
        .json()
        .await
        .unwrap();
    v["items"].as_array().unwrap().clone()
}

async fn a_failing_listener_is_retried_parked_and_replayed(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.live.delivery_attempts = 3;
        c.live.delivery_backoff = Duration::from_millis(100);
    })
    .await
    else {
        return;
    };
    let t = setup(&app).await;
    let m = mirror(&app).await;
    receipt(&app, &t, "BAD").await;
    receipt(&app, &t, "GOOD").await;
    // The cursor moved on: the next event was delivered while the bad one waits.
    until(Duration::from_secs(10), "GOOD delivered", async || {
        m.seen.lock().unwrap().contains(&"GOOD".to_owned())
    })
    .await;
    until(Duration::from_secs(10), "the failure parked", async || {
        failures(&app, &t, "?state=parked").await.len() == 1
    })
    .await;
    let f = &failures(&app, &t, "?state=parked").await[0];
    assert_eq!(f["listener"], "ledger_mirror");
    assert_eq!(f["topic"], "movement.posted");
    assert_eq!(f["attempts"], 3, "{f}");
    assert_eq!(f["errors"].as_array().unwrap().len(), 3);
    assert!(
        f["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("the mirror is down")
    );
    assert_eq!(f["payload"]["reference"], "BAD");
    assert_eq!(
        failures(&app, &t, "").await.len(),
        1,
        "one row per failed event, not per attempt"
    );
    // Viewers and clerks may not see them.
    let clerk = app.token(malaka_server::auth::Role::Clerk).await;
    assert_eq!(
        app.get_as(&clerk, "/api/v1/events/failures").await.status(),
        403
    );
    // Replayed while still broken: parked again; fixed: resolved, delivered once.
    let id = f["id"].as_i64().unwrap();
    let manager = app.token(malaka_server::auth::Role::Manager).await;
    let r = app
        .post_json(
            &manager,
            &format!("/api/v1/events/failures/{id}/replay"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["state"].as_str(), v["attempts"].as_i64()),
        (Some("parked"), Some(4))
    );
    m.broken.store(false, Ordering::SeqCst);
    let v: Value = app
        .post_json(
            &manager,
            &format!("/api/v1/events/failures/{id}/replay"),
            &json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "resolved", "{v}");
    assert_eq!(
        *m.seen.lock().unwrap(),
        vec!["GOOD".to_owned(), "BAD".to_owned()]
    );
    let r = app
        .post_json(
            &manager,
            &format!("/api/v1/events/failures/{id}/replay"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 409, "resolved: nothing to replay");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    // (One recorder per test process: other tests count too.)
    assert!(
        metrics.contains("malaka_delivery_failures_total{listener=\"ledger_mirror\"}"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_listener_is_retried_parked_and_replayed_on_sqlite() {
    a_failing_listener_is_retried_parked_and_replayed(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_listener_is_retried_parked_and_replayed_on_postgres() {
    a_failing_listener_is_retried_parked_and_replayed(Backend::Postgres).await;
}

/// A node stops while a failed delivery waits for its next attempt; the node that starts next
/// on the same database retries it and delivers it.
async fn retries_survive_a_restart(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => match common::fresh_postgres().await {
            Some(pg) => Some(pg),
            None => return,
        },
    };
    let (data, url) = (dir.path().to_owned(), pg.as_ref().map(|(u, _)| u.clone()));
    let config = move |c: &mut malaka_server::Config| {
        c.data_dir = data.clone();
        if let Some(u) = &url {
            c.database.url = u.clone();
        }
        c.live.delivery_attempts = 20;
        c.live.delivery_backoff = Duration::from_millis(500);
    };
    let first = spawn_app_with(Backend::Sqlite, config.clone())
        .await
        .unwrap();
    let t = setup(&first).await;
    let m = mirror(&first).await;
    receipt(&first, &t, "BAD").await;
    until(
        Duration::from_secs(10),
        "the failure recorded",
        async || !failures(&first, &t, "?state=retrying").await.is_empty(),
    )
    .await;
    let tries = m.tries.load(Ordering::SeqCst);
    first.stop().await;
    assert!(tries >= 1);

    let second = spawn_app_with(Backend::Sqlite, config).await.unwrap();
    let m2 = mirror(&second).await;
    m2.broken.store(false, Ordering::SeqCst);
    until(
        Duration::from_secs(20),
        "the failure resolved",
        async || failures(&second, &t, "?state=resolved").await.len() == 1,
    )
    .await;
    assert_eq!(
        *m2.seen.lock().unwrap(),
        vec!["BAD".to_owned()],
        "delivered once"
    );
    second.stop().await;
    if let Some((_, name)) = pg {
        common::drop_postgres(&name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_survive_a_restart_on_sqlite() {
    retries_survive_a_restart(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_survive_a_restart_on_postgres() {
    retries_survive_a_restart(Backend::Postgres).await;
}

async fn min_cursor(app: &TestApp) -> i64 {
    const Q: &str = "SELECT COALESCE(MIN(seq), 0) FROM malaka_listener_cursors";
    match app.state.db() {
        malaka_server::db::Database::Sqlite(p) => sqlx::query_scalar(Q).fetch_one(p).await.unwrap(),
        malaka_server::db::Database::Postgres(p) => {
            sqlx::query_scalar(Q).fetch_one(p).await.unwrap()
        }
    }
}

async fn sql(app: &TestApp, q: &str) {
    match app.state.db() {
        malaka_server::db::Database::Sqlite(p) => {
            sqlx::query(sqlx::AssertSqlSafe(q.to_owned()))
                .execute(p)
                .await
                .unwrap();
        }
        malaka_server::db::Database::Postgres(p) => {
            sqlx::query(sqlx::AssertSqlSafe(q.to_owned()))
                .execute(p)
                .await
                .unwrap();
        }
    }
}

async fn outbox_seqs(app: &TestApp) -> Vec<i64> {
    let mut seqs: Vec<i64> = app
        .state
        .inventory()
        .outbox(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    seqs.sort_unstable();
    seqs
}

async fn pruning_keeps_what_a_reader_has_not_passed(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else {
        return;
    };
    let t = setup(&app).await;
    for i in 0..6 {
        receipt(&app, &t, &format!("R{i}")).await;
    }
    let outbox = malaka_inventory::Outbox::new(app.state.db().event_pool());
    until(
        Duration::from_secs(10),
        "every event published",
        async || outbox.unpublished(10).await.unwrap().is_empty(),
    )
    .await;
    let last = outbox.last_seq().await.unwrap();
    assert!(last >= 6);
    // The listeners write positions they passed in a hurry once caught up: wait for those
    // writes, or one could land after the rewind below.
    until(
        Duration::from_secs(10),
        "every listener's position saved",
        async || min_cursor(&app).await >= last,
    )
    .await;
    // Every event is past the retention; the stock monitor has only read up to 2.
    sql(
        &app,
        "UPDATE malaka_outbox SET published_at = '2020-01-01T00:00:00Z'",
    )
    .await;
    sql(&app, "UPDATE malaka_listener_cursors SET seq = 2").await;
    assert!(
        app.state.live().prune_outbox().await,
        "a reader held events back"
    );
    let left = outbox.published_after(0, 1000).await.unwrap();
    assert!(left.iter().all(|p| p.seq > 2), "{left:?}");
    assert_eq!(
        left.len() as i64,
        last - 2,
        "everything after the reader kept"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("malaka_outbox_retention_held 1"),
        "{metrics}"
    );
    // The SQS publisher's position counts too.
    sql(
        &app,
        &format!("UPDATE malaka_listener_cursors SET seq = {last}"),
    )
    .await;
    app.state
        .db()
        .set_meta("sqs_outbound_seq", "4")
        .await
        .unwrap();
    assert!(app.state.live().prune_outbox().await);
    let left = outbox.published_after(0, 1000).await.unwrap();
    assert!(left.iter().all(|p| p.seq > 4), "{left:?}");
    // Everyone caught up: everything past the retention goes.
    app.state
        .db()
        .set_meta("sqs_outbound_seq", &last.to_string())
        .await
        .unwrap();
    assert!(!app.state.live().prune_outbox().await);
    assert!(outbox_seqs(&app).await.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pruning_keeps_what_a_reader_has_not_passed_on_sqlite() {
    pruning_keeps_what_a_reader_has_not_passed(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pruning_keeps_what_a_reader_has_not_passed_on_postgres() {
    pruning_keeps_what_a_reader_has_not_passed(Backend::Postgres).await;
}

async fn qty(app: &TestApp, t: &str) -> String {
    let v: Value = app
        .get_as(t, "/api/v1/balances?sku=A")
        .await
        .json()
        .await
        .unwrap();
    v["items"][0]["qty"].as_str().unwrap_or("0").to_owned()
}

/// A posting on one node is seen by another node's cached balances within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_balances_agree_across_postgres_nodes() {
    let Some(a) = spawn_app_with(Backend::Postgres, |_| {}).await else {
        return;
    };
    let b = spawn_node_like(&a, |_| {}).await;
    let t = setup(&a).await;
    receipt(&a, &t, "first").await;
    // B caches the balance...
    until(
        Duration::from_secs(5),
        "B sees the first receipt",
        async || qty(&b, &t).await == "1",
    )
    .await;
    for _ in 0..5 {
        assert_eq!(qty(&b, &t).await, "1");
    }
    // ...and sees A's next posting within a second.
    receipt(&a, &t, "second").await;
    let posted = tokio::time::Instant::now();
    until(
        Duration::from_secs(1),
        "B sees the second receipt",
        async || qty(&b, &t).await == "2",
    )
    .await;
    eprintln!("seen on node B after {:?}", posted.elapsed());
    b.stop().await;
    a.stop().await;
}

/// Final inbox records are pruned after the retention; one still retrying is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn old_final_inbox_records_are_pruned_and_waiting_ones_kept() {
    use malaka_inventory::{Disposition, InboxEntry, InboxState};
    let app = common::spawn_app().await;
    let inv = app.state.inventory();
    for (id, d) in [
        ("done", Disposition::Final(InboxState::Ignored)),
        ("waits", Disposition::Attempt { park_after: 5 }),
    ] {
        let e = InboxEntry {
            id: id.into(),
            source: "s".into(),
            kind: "x".into(),
            payload: "{}".into(),
            event: None,
        };
        inv.record_inbox(&e, d, Some("why")).await.unwrap();
    }
    sql(
        &app,
        "UPDATE malaka_inbox SET received_at = '2020-01-01T00:00:00Z'",
    )
    .await;
    let n = inv
        .inbox_prune(chrono::Utc::now() - chrono::Duration::days(14), 100)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(inv.inbox("s", "done").await.unwrap().is_none());
    assert_eq!(
        inv.inbox("s", "waits").await.unwrap().unwrap().state,
        InboxState::Retrying
    );
    app.stop().await;
}
