//! SQS for tests: a local SQS-compatible server (moto, from the virtualenv `scripts/test` makes),
//! queues on it, a server consuming and publishing, and messages in the shape other systems send.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use malaka_sqs::{Outgoing, Publisher, admin};
use serde_json::{Value, json};

use super::{Backend, TestApp, spawn_app_with};

pub struct Moto {
    pub endpoint: String,
    child: Child,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn moto() -> Option<Moto> {
    let bin = std::env::var("MALAKA_TEST_PYTHON")
        .map(|p| PathBuf::from(p).with_file_name("moto_server"))
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/moto_server")
        });
    if !bin.exists() {
        assert!(
            !super::in_ci_pub(),
            "SQS tests must run under CI: {} is missing",
            bin.display()
        );
        eprintln!("skipping an SQS test: no moto_server");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "moto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Moto {
        endpoint: format!("http://127.0.0.1:{port}"),
        child,
    })
}

pub struct Setup {
    pub _moto: Moto,
    pub app: TestApp,
    pub client: malaka_sqs::Client,
    pub inbound: String,
    pub outbound: String,
    pub token: String,
}

pub async fn setup(backend: Backend) -> Option<Setup> {
    setup_with(backend, "malaka-in", None, |_| {}).await
}

/// A moto server, an inbound queue `inbound_name` (FIFO if it ends in `.fifo`; with a
/// dead-letter queue after `redrive` receives when given), an outbound FIFO queue, and the
/// server consuming and publishing, `tweak` applied to its configuration.
pub async fn setup_with(
    backend: Backend,
    inbound_name: &str,
    redrive: Option<u32>,
    tweak: impl FnOnce(&mut malaka_server::Config) + Send + 'static,
) -> Option<Setup> {
    let m = moto()?;
    let client =
        malaka_sqs::client_with("us-east-1", Some(&m.endpoint), Some(("test", "test"))).await;
    let dlq = match redrive {
        Some(n) => {
            let dlq = admin::create(&client, "malaka-dlq", 30, None)
                .await
                .unwrap();
            Some((admin::arn(&client, &dlq).await.unwrap(), n))
        }
        None => None,
    };
    let inbound = admin::create(
        &client,
        inbound_name,
        5,
        dlq.as_ref().map(|(arn, n)| (arn.as_str(), *n)),
    )
    .await
    .unwrap();
    let outbound = admin::create(&client, "malaka-out.fifo", 30, None)
        .await
        .unwrap();
    let (endpoint, inb, out) = (m.endpoint.clone(), inbound.clone(), outbound.clone());
    let app = spawn_app_with(backend, move |c| {
        c.api.rate_limit_per_second = 0;
        c.sqs.endpoint_url = endpoint;
        c.sqs.access_key_id = "test".into();
        c.sqs.secret_access_key = "test".into();
        c.sqs.wait = Duration::from_secs(1);
        c.sqs.inbound = vec![malaka_server::config::InboundQueue {
            url: inb,
            ..Default::default()
        }];
        c.sqs.outbound_url = out;
        c.supervision.min_backoff = Duration::from_millis(300);
        tweak(c);
    })
    .await?;
    let token = app.admin_token().await;
    for (path, body) in [
        (
            "/api/v1/warehouses",
            json!({"code": "MAIN", "name": "Main"}),
        ),
        (
            "/api/v1/articles",
            json!({"sku": "A-1", "name": "A", "min_qty": "5"}),
        ),
        ("/api/v1/articles", json!({"sku": "B-1", "name": "B"})),
    ] {
        assert_eq!(app.post_json(&token, path, &body).await.status(), 201);
    }
    Some(Setup {
        _moto: m,
        app,
        client,
        inbound,
        outbound,
        token,
    })
}

pub async fn send(s: &Setup, bodies: &[String]) {
    let msgs: Vec<Outgoing> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| Outgoing {
            id: i.to_string(),
            group: "g".into(),
            body: b.clone(),
        })
        .collect();
    Publisher::new(s.client.clone(), &s.inbound)
        .send(&msgs)
        .await
        .unwrap();
}

pub fn envelope(id: &str, kind: &str, data: Value) -> String {
    json!({"id": id, "type": kind, "source": "pos-1", "occurred_at": "2026-12-01T10:00:00Z", "data": data}).to_string()
}

pub async fn ledger(s: &Setup) -> Vec<Value> {
    let v: Value = s
        .app
        .get_as(&s.token, "/api/v1/ledger?limit=1000")
        .await
        .json()
        .await
        .unwrap();
    v["items"].as_array().unwrap().clone()
}

pub async fn until(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn drained(s: &Setup) -> bool {
    admin::counts(&s.client, &s.inbound).await.unwrap() == (0, 0)
}

/// The record of message `id` from `pos-1` (the sender of [`envelope`]).
pub async fn inbox(s: &Setup, id: &str) -> Option<malaka_inventory::InboxRecord> {
    s.app.state.inventory().inbox("pos-1", id).await.unwrap()
}

pub fn last_reason(r: &malaka_inventory::InboxRecord) -> String {
    r.errors.last().map(|a| a.error.clone()).unwrap_or_default()
}

pub fn receipt(id: &str, sku: &str, qty: u32) -> String {
    envelope(
        id,
        "stock.receipt",
        json!({"sku": sku, "warehouse": "MAIN", "qty": qty, "unit_cost": "1"}),
    )
}

pub fn issue(id: &str, sku: &str, qty: u32) -> String {
    envelope(
        id,
        "stock.issue",
        json!({"sku": sku, "warehouse": "MAIN", "qty": qty}),
    )
}
