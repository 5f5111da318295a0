//! `malaka bench sqs`: SQS messages turned into postings per second by the server's consumer,
//! against the best hand-written consumer doing the same work, on the same SQS-compatible
//! server (`--sqs-endpoint`, e.g. moto: `scripts/bench-sqs`) and the same database, in one run.
//!
//! Each side drains a queue of its own, filled beforehand with N (`--messages`)
//! `stock.receipt` envelopes (50 articles, one warehouse): every message becomes one posting
//! and is deleted. Each clock runs from the start of the side's pollers until the queue has
//! acknowledged the delete of the N-th message; no final empty receive is timed (the baseline's
//! pollers stop once the count is reached, the server's are stopped after its clock stopped).
//!
//! - Malaka (`messages_per_sec`): the whole server (`Application::run_until`: job workers, the
//!   outbox relay and the rest run too) with one inbound queue at the defaults (`pollers` = 2
//!   receive loops, 16 messages handled at once, long poll `sqs.wait` = 20 s). A poller receives
//!   up to 10 messages (never more than there are free handlers); each message is parsed,
//!   posted through `Inventory::post_batch_from` with its inbox record in the posting's own
//!   transaction (exactly once: a redelivered message posts nothing), and its receipt goes to
//!   the deleter task, which deletes whatever has gathered in `DeleteMessageBatch` calls of up
//!   to 10. Clock: from the consumer's start (when its pollers are spawned; the server's own
//!   start before that is not timed) until its `deleted` counter (deletes the queue
//!   acknowledged) reaches N, read every millisecond.
//! - Baseline (`baseline_messages_per_sec`): as many pollers, each a loop of `ReceiveMessage`
//!   (10 at most, the same long-poll wait), the batch's messages parsed (`Envelope::parse`,
//!   `movements_of`: the server's own parsers) and posted concurrently through
//!   `Inventory::post` (on SQLite, the same group committer the server's postings go through),
//!   then one `DeleteMessageBatch` of the posted ones. No inbox: a message delivered twice would
//!   be posted twice. Clock: from spawning the pollers until the `DeleteMessageBatch` that
//!   brings the deleted count to N returns. It runs first, on the same database, before the
//!   server starts.
//!
//! `ratio` is the first over the second (target >= 0.8).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use malaka_inventory::{Inventory, NewArticle, WarehouseCode};
use malaka_sqs::sdk::types::{DeleteMessageBatchRequestEntry, Message};
use malaka_sqs::{Outgoing, Publisher, admin};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::Figures;
use crate::jobs::Backend;
use crate::movements::{MovementsBenchError, fresh_database};
use malaka_server::Application;
use malaka_server::sqs::{Envelope, movements_of};

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

/// How long either side may take.
const LIMIT: Duration = Duration::from_secs(120);

fn err(what: &str) -> impl Fn(String) -> MovementsBenchError + '_ {
    move |e| MovementsBenchError::Setup(format!("{what}: {e}"))
}

/// Runs the suite: `messages`, `pollers`, `baseline_messages_per_sec`, `messages_per_sec`,
/// `ratio`.
///
/// # Errors
/// Setup failed or a side did not delete every message within two minutes.
pub async fn sqs_suite(b: &SqsBench) -> Result<Figures, MovementsBenchError> {
    let fresh = fresh_database(b.backend, b.database_url.as_deref()).await?;
    let result = run(b, fresh.config.clone()).await;
    fresh.remove().await;
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

async fn run(
    b: &SqsBench,
    mut config: malaka_server::Config,
) -> Result<Figures, MovementsBenchError> {
    let client =
        malaka_sqs::client_with("us-east-1", Some(&b.endpoint), Some(("test", "test"))).await;
    let stamp = uuid::Uuid::now_v7().simple().to_string();
    let bare_q = admin::create(&client, &format!("bench-bare-{stamp}"), 30, None)
        .await
        .map_err(|e| err("queue")(e.to_string()))?;
    let malaka_q = admin::create(&client, &format!("bench-malaka-{stamp}"), 30, None)
        .await
        .map_err(|e| err("queue")(e.to_string()))?;
    let inbound = malaka_server::config::InboundQueue {
        url: malaka_q.clone(),
        ..Default::default()
    };
    let pollers = inbound.pollers;
    config.sqs.endpoint_url = b.endpoint.clone();
    config.sqs.access_key_id = "test".into();
    config.sqs.secret_access_key = "test".into();
    config.sqs.inbound = vec![inbound];
    let wait = config.sqs.wait;
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
    let mut f = Figures::default();
    f.push("messages", b.messages as f64);
    f.push("pollers", pollers as f64);

    // Baseline: hand-written pollers posting through the inventory directly.
    fill(&client, &bare_q, b.messages, "bare").await?;
    let took = baseline(&client, &bare_q, inv, b.messages, pollers, wait).await?;
    let bare = b.messages as f64 / took.as_secs_f64();
    f.push("baseline_messages_per_sec", bare);

    // Malaka: the server's consumer, exactly once through the inbox.
    fill(&client, &malaka_q, b.messages, "malaka").await?;
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _stopped = rx.await;
    }));
    let deadline = Instant::now() + LIMIT;
    let consumer = loop {
        if let Some(c) = state.sqs_inbound().into_iter().next() {
            break Some(c);
        }
        if Instant::now() > deadline || task.is_finished() {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let outcome = match consumer {
        None => Err(MovementsBenchError::Setup(
            "the server's SQS consumer did not start".into(),
        )),
        Some(c) => loop {
            let deleted = c.stats.deleted.load(Ordering::Relaxed);
            if deleted >= b.messages as u64 {
                break Ok(c.started.elapsed());
            }
            if Instant::now() > deadline {
                break Err(MovementsBenchError::Setup(format!(
                    "the server deleted {deleted} of {} messages in {LIMIT:?}",
                    b.messages
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        },
    };
    // Counted before the server stops (it closes the database).
    let posted = count_inbox(state.db()).await;
    let _stopped = stop.send(());
    if let Ok(Err(e)) = task.await {
        tracing::warn!(error = %e, "benchmark server stopped with an error");
    }
    let took = outcome?;
    let posted = posted.map_err(|e| err("count")(e.to_string()))?;
    if posted < b.messages as i64 {
        return Err(MovementsBenchError::Setup(format!(
            "{posted} of {} messages recorded in the inbox",
            b.messages
        )));
    }
    let rate = b.messages as f64 / took.as_secs_f64();
    f.push("messages_per_sec", rate);
    f.push("ratio", rate / bare);
    Ok(f)
}

/// The hand-written consumer: `pollers` loops of receive (10 at most), post the batch
/// concurrently, delete the posted ones in one `DeleteMessageBatch`. Returns the time from
/// spawning the pollers until the delete that brought the count to `n` returned.
async fn baseline(
    client: &malaka_sqs::Client,
    queue: &str,
    inv: &Inventory,
    n: usize,
    pollers: usize,
    wait: Duration,
) -> Result<Duration, MovementsBenchError> {
    let deleted = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let finished: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let wait = i32::try_from(wait.as_secs()).unwrap_or(20).min(20);
    let t = Instant::now();
    let tasks: Vec<_> = (0..pollers)
        .map(|_| {
            let (c, q, inv) = (client.clone(), queue.to_owned(), inv.clone());
            let (deleted, stop, finished) =
                (Arc::clone(&deleted), stop.clone(), Arc::clone(&finished));
            tokio::spawn(async move {
                loop {
                    let receive = c
                        .receive_message()
                        .queue_url(&q)
                        .max_number_of_messages(10)
                        .wait_time_seconds(wait)
                        .send();
                    let out = tokio::select! {
                        () = stop.cancelled() => return,
                        r = receive => r,
                    };
                    let Ok(out) = out else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let ms = out.messages.unwrap_or_default();
                    if ms.is_empty() {
                        continue;
                    }
                    let posted = futures::future::join_all(ms.iter().map(|m| post(&inv, m))).await;
                    let entries: Vec<_> = ms
                        .iter()
                        .zip(posted)
                        .enumerate()
                        .filter(|(_, (_, ok))| *ok)
                        .filter_map(|(i, (m, _))| {
                            DeleteMessageBatchRequestEntry::builder()
                                .id(i.to_string())
                                .set_receipt_handle(m.receipt_handle.clone())
                                .build()
                                .ok()
                        })
                        .collect();
                    if entries.is_empty() {
                        continue;
                    }
                    if let Ok(o) = c
                        .delete_message_batch()
                        .queue_url(&q)
                        .set_entries(Some(entries))
                        .send()
                        .await
                    {
                        let now = deleted.fetch_add(o.successful.len() as u64, Ordering::AcqRel)
                            + o.successful.len() as u64;
                        if now >= n as u64 {
                            let _first = finished.set(Instant::now());
                            stop.cancel();
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    let limited = tokio::time::timeout(LIMIT, stop.cancelled()).await;
    stop.cancel();
    for task in tasks {
        let _stopped = task.await;
    }
    match (limited, finished.get()) {
        (Ok(()), Some(end)) => Ok(end.saturating_duration_since(t)),
        _ => Err(MovementsBenchError::Setup(format!(
            "the baseline deleted {} of {n} messages in {LIMIT:?}",
            deleted.load(Ordering::Acquire)
        ))),
    }
}

/// What a hand-written consumer does with one message: parse the envelope, post its movement.
/// Whether it may be deleted.
async fn post(inv: &Inventory, m: &Message) -> bool {
    let Some(Ok(envelope)) = m.body.as_deref().map(Envelope::parse) else {
        return false;
    };
    let posted = match movements_of(&envelope) {
        Ok(Some(ms)) => match ms.as_slice() {
            [one] => inv.post(one, "sqs:bench").await.map(|_| ()),
            many => inv.post_batch(many, "sqs:bench").await.map(|_| ()),
        },
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = &posted {
        tracing::warn!(error = %e, "a baseline posting failed");
    }
    posted.is_ok()
}

async fn count_inbox(db: &malaka_server::db::Database) -> Result<i64, sqlx::Error> {
    const SQL: &str = "SELECT COUNT(*) FROM malaka_inbox";
    match db {
        malaka_server::db::Database::Sqlite(p) => sqlx::query_scalar(SQL).fetch_one(p).await,
        malaka_server::db::Database::Postgres(p) => sqlx::query_scalar(SQL).fetch_one(p).await,
    }
}
