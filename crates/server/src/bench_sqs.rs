//! `malaka bench sqs`: messages consumed into postings per second, end to end (a queue filled
//! with N `stock.receipt` envelopes, drained by the server's own consumer with its defaults),
//! against a bare aws-sdk-sqs receive-and-delete loop with as many pollers on the same server in
//! the same run. Needs an SQS-compatible server (`--sqs-endpoint`, e.g. moto, see
//! `scripts/bench-sqs`).

use std::time::{Duration, Instant};

use malaka_inventory::{NewArticle, WarehouseCode};
use malaka_sqs::{Outgoing, Publisher, admin};
use tokio::sync::oneshot;

use crate::Application;
use crate::bench::Figures;
use crate::bench_jobs::Backend;
use crate::bench_movements::{MovementsBenchError, drop_database, fresh_database};

/// What to run.
#[derive(Debug, Clone)]
pub struct SqsBench {
    /// Backend of the inventory.
    pub backend: Backend,
    /// Database URL (a fresh database is made next to it).
    pub database_url: Option<String>,
    /// The SQS-compatible server.
    pub endpoint: String,
    /// Messages per run.
    pub messages: usize,
}

const ARTICLES: usize = 50;

fn err(what: &str) -> impl Fn(String) -> MovementsBenchError + '_ {
    move |e| MovementsBenchError::Setup(format!("{what}: {e}"))
}

/// Runs the suite: `messages_per_sec`, `baseline_messages_per_sec`, `ratio`, `messages`.
///
/// # Errors
/// Setup failed or the messages did not all arrive within two minutes.
pub async fn sqs_suite(b: &SqsBench) -> Result<Figures, MovementsBenchError> {
    let fresh = fresh_database(b.backend, b.database_url.as_deref()).await?;
    let result = run(b, fresh.config.clone()).await;
    if let Some((admin, name)) = &fresh.pg {
        drop_database(admin, name).await;
    }
    result
}

async fn fill(
    client: &malaka_sqs::Client,
    url: &str,
    n: usize,
    tag: &str,
) -> Result<(), MovementsBenchError> {
    let msgs: Vec<Outgoing> = (0..n)
        .map(|i| Outgoing {
            id: format!("{tag}-{i}"),
            group: "bench".into(),
            body: serde_json::json!({"id": format!("{tag}-{i}"), "type": "stock.receipt", "source": "bench",
                "data": {"sku": format!("SQS-{:03}", i % ARTICLES), "warehouse": "MAIN", "qty": "1", "unit_cost": "1"}})
            .to_string(),
        })
        .collect();
    Publisher::new(client.clone(), url)
        .send(&msgs)
        .await
        .map_err(|e| err("filling the queue")(e.to_string()))
}

async fn run(b: &SqsBench, mut config: crate::Config) -> Result<Figures, MovementsBenchError> {
    let client =
        malaka_sqs::client_with("us-east-1", Some(&b.endpoint), Some(("test", "test"))).await;
    let stamp = uuid::Uuid::now_v7().simple().to_string();
    let bare_q = admin::create(&client, &format!("bench-bare-{stamp}"), 30, None)
        .await
        .map_err(|e| err("queue")(e.to_string()))?;
    let malaka_q = admin::create(&client, &format!("bench-malaka-{stamp}"), 30, None)
        .await
        .map_err(|e| err("queue")(e.to_string()))?;
    let pollers = crate::config::InboundQueue::default().pollers;
    let mut f = Figures::default();
    f.push("messages", b.messages as f64);

    // Baseline: the same number of pollers receiving and deleting, nothing else.
    fill(&client, &bare_q, b.messages, "bare").await?;
    let t = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..pollers)
        .map(|_| {
            let (c, q, done, n) = (
                client.clone(),
                bare_q.clone(),
                std::sync::Arc::clone(&done),
                b.messages,
            );
            tokio::spawn(async move {
                while done.load(std::sync::atomic::Ordering::Acquire) < n {
                    let Ok(out) = c
                        .receive_message()
                        .queue_url(&q)
                        .max_number_of_messages(10)
                        .wait_time_seconds(1)
                        .send()
                        .await
                    else {
                        continue;
                    };
                    let ms = out.messages.unwrap_or_default();
                    if ms.is_empty() {
                        continue;
                    }
                    let entries: Vec<_> = ms
                        .iter()
                        .enumerate()
                        .filter_map(|(i, m)| {
                            malaka_sqs::sdk::types::DeleteMessageBatchRequestEntry::builder()
                                .id(i.to_string())
                                .set_receipt_handle(m.receipt_handle.clone())
                                .build()
                                .ok()
                        })
                        .collect();
                    if c.delete_message_batch()
                        .queue_url(&q)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .is_ok()
                    {
                        done.fetch_add(ms.len(), std::sync::atomic::Ordering::AcqRel);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _finished = t.await;
    }
    let bare = b.messages as f64 / t.elapsed().as_secs_f64();
    f.push("baseline_messages_per_sec", bare);

    // Malaka: the server's consumer posting each message, exactly once through the inbox.
    fill(&client, &malaka_q, b.messages, "malaka").await?;
    config.sqs.endpoint_url = b.endpoint.clone();
    config.sqs.access_key_id = "test".into();
    config.sqs.secret_access_key = "test".into();
    config.sqs.wait = Duration::from_secs(1);
    config.sqs.inbound = vec![crate::config::InboundQueue {
        url: malaka_q.clone(),
        ..Default::default()
    }];
    let app = Application::build(&config).await?;
    let state = app.state().clone();
    let inv = state.inventory();
    let main = WarehouseCode::parse("MAIN").map_err(|e| err("warehouse")(e.to_string()))?;
    inv.create_warehouse(&main, "Main").await?;
    for a in 0..ARTICLES {
        let art = NewArticle::parse(
            &format!("SQS-{a:03}"),
            "Bench",
            None,
            None,
            None,
            None,
            None,
        )?;
        inv.create_article(&art).await?;
    }
    let (stop, rx) = oneshot::channel::<()>();
    let t = Instant::now();
    let task = tokio::spawn(app.run_until(async move {
        let _stopped = rx.await;
    }));
    let deadline = t + Duration::from_secs(120);
    let posted = loop {
        let n = count_inbox(state.db())
            .await
            .map_err(|e| err("count")(e.to_string()))?;
        if n >= b.messages as i64 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let took = t.elapsed();
    let _stopped = stop.send(());
    if let Ok(Err(e)) = task.await {
        tracing::warn!(error = %e, "benchmark server stopped with an error");
    }
    if posted < b.messages as i64 {
        return Err(MovementsBenchError::Setup(format!(
            "{posted} of {} messages posted in 120 s",
            b.messages
        )));
    }
    let rate = b.messages as f64 / took.as_secs_f64();
    f.push("messages_per_sec", rate);
    f.push("ratio", rate / bare);
    f.push("pollers", pollers as f64);
    Ok(f)
}

async fn count_inbox(db: &crate::db::Database) -> Result<i64, sqlx::Error> {
    const SQL: &str = "SELECT COUNT(*) FROM malaka_inbox";
    match db {
        crate::db::Database::Sqlite(p) => sqlx::query_scalar(SQL).fetch_one(p).await,
        crate::db::Database::Postgres(p) => sqlx::query_scalar(SQL).fetch_one(p).await,
    }
}
