//! SQS in the server. Inbound: every message is an envelope `{id, type, source, occurred_at,
//! data}`; stock commands (`stock.receipt`, `stock.issue`, `stock.transfer`, `stock.count`, and
//! orders `sale.completed`, `purchase.received` whose lines post all or none) become postings,
//! recorded in the inbox in the posting's own transaction, so a redelivered message changes
//! nothing; every message is then routed by its type to the event bus's named listeners.
//! Outbound: published outbox events (`movement.posted`, `stock.level_changed`, `stock.alert`)
//! go to one queue in publication order (per article: commit order), FIFO-grouped by article.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use malaka_inventory::{InboxEntry, Inventory, InventoryError, NewMovement, Outbox};
use malaka_runtime::{EventBus, JsonEvent, Supervised, Supervisor, TaskContext, TaskSpec};
use malaka_sqs::{Consumer, ConsumerConfig, Handler, Message, Outcome, Outgoing, Publisher};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::config::SqsConfig;
use crate::db::Database;
use crate::input::{JsonError, MovementIn, from_json};

/// Outbox topics sent to the outbound queue.
pub const OUTBOUND_TOPICS: [&str; 3] = ["movement.posted", "stock.level_changed", "stock.alert"];

/// The `malaka_meta` key holding the outbound publisher's position.
const CURSOR_KEY: &str = "sqs_outbound_seq";

/// An inbound message.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    /// The sender's event id: what makes processing idempotent.
    pub id: String,
    /// What happened or is asked for.
    #[serde(rename = "type")]
    pub kind: String,
    /// Who sent it.
    #[serde(default)]
    pub source: Option<String>,
    /// When.
    #[serde(default)]
    pub occurred_at: Option<DateTime<Utc>>,
    /// The payload, as sent (its numbers keep every digit).
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

impl Envelope {
    /// Parses a message body.
    ///
    /// # Errors
    /// Not JSON, or not an envelope (the field is named).
    pub fn parse(body: &str) -> Result<Self, JsonError> {
        from_json(body, "")
    }

    /// The payload's JSON text (`null` when absent).
    pub fn data_json(&self) -> &str {
        self.data.as_deref().map_or("null", RawValue::get)
    }

    /// The payload as a JSON value, for bus listeners.
    pub fn data_value(&self) -> Value {
        serde_json::from_str(self.data_json()).unwrap_or(Value::Null)
    }
}

/// The payload of `sale.completed` and `purchase.received`: lines posted all or none.
#[derive(Debug, Deserialize)]
struct Lines {
    /// The order's reference, for lines without their own.
    #[serde(default)]
    reference: Option<String>,
    lines: Vec<MovementIn>,
}

/// The movements a command asks for; `None` for a type that posts nothing. Each movement is
/// parsed by the REST API's own parser (`MovementIn`), its type given by the command.
///
/// # Errors
/// An invalid field, named (`data.lines[1].qty`).
pub fn movements_of(e: &Envelope) -> Result<Option<Vec<NewMovement>>, InventoryError> {
    let data = e.data_json();
    let stock = |kind: &str| -> Result<Option<Vec<NewMovement>>, InventoryError> {
        let m: MovementIn = from_json(data, "data.")?;
        let m = m.parse(Some(kind)).map_err(|e| e.in_field("data"))?;
        Ok(Some(vec![m]))
    };
    let lines = |kind: &str| -> Result<Option<Vec<NewMovement>>, InventoryError> {
        let order: Lines = from_json(data, "data.")?;
        if order.lines.is_empty() {
            return Err(InventoryError::invalid(
                "data.lines",
                "data.lines must list at least one line",
            ));
        }
        order
            .lines
            .into_iter()
            .enumerate()
            .map(|(i, mut l)| {
                if l.reference.is_none() {
                    l.reference.clone_from(&order.reference);
                }
                l.parse(Some(kind))
                    .map_err(|e| e.in_field(&format!("data.lines[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    };
    match e.kind.as_str() {
        "stock.receipt" => stock("receipt"),
        "stock.issue" => stock("issue"),
        "stock.transfer" => stock("transfer"),
        "stock.count" => stock("count"),
        "sale.completed" => lines("issue"),
        "purchase.received" => lines("receipt"),
        _ => Ok(None),
    }
}

/// A refusal as the inbox records it: the field at fault first (`data.lines[1].qty: ...`).
fn describe(e: &InventoryError) -> String {
    match e {
        InventoryError::Invalid { field, message }
        | InventoryError::OutOfRange { field, message }
            if !field.is_empty() && !message.starts_with(field.as_str()) =>
        {
            format!("{field}: {message}")
        }
        other => other.to_string(),
    }
}

/// Turns inbound messages into postings and bus events.
struct Inbound {
    inventory: Inventory,
    bus: EventBus,
    queue: String,
    balances_changed: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    async fn record(&self, entry: &InboxEntry, outcome: &str, error: Option<&str>) -> Outcome {
        match self.inventory.record_inbox(entry, outcome, error).await {
            Ok(true) => {
                metrics::counter!("malaka_sqs_inbox_total", "queue" => self.queue.clone(), "outcome" => outcome.to_owned())
                    .increment(1);
                Outcome::Done
            }
            Ok(false) => {
                metrics::counter!("malaka_sqs_duplicates_total", "queue" => self.queue.clone())
                    .increment(1);
                Outcome::Done
            }
            Err(e) => {
                tracing::warn!(message = %entry.id, error = %e, "recording an SQS message failed; it will be delivered again");
                Outcome::Retry
            }
        }
    }
}

#[async_trait::async_trait]
impl Handler for Inbound {
    async fn handle(&self, m: &Message) -> Outcome {
        let envelope = match Envelope::parse(&m.body) {
            Ok(e) => e,
            Err(err) => {
                // Recorded under the SQS id (it has no id of its own) and deleted: never retried
                // forever, never lost.
                tracing::warn!(queue = %self.queue, message = %m.id, error = %err, "malformed SQS message recorded and dropped");
                let entry = InboxEntry {
                    id: format!("sqs:{}", m.id),
                    source: format!("sqs:{}", self.queue),
                    kind: "malformed".into(),
                    payload: m.body.clone(),
                };
                return self
                    .record(
                        &entry,
                        "malformed",
                        Some(&format!("not an event envelope: {err}")),
                    )
                    .await;
            }
        };
        let entry = InboxEntry {
            id: envelope.id.clone(),
            source: envelope
                .source
                .clone()
                .unwrap_or_else(|| format!("sqs:{}", self.queue)),
            kind: envelope.kind.clone(),
            payload: m.body.clone(),
        };
        let by = format!("sqs:{}", entry.source);
        let outcome = match movements_of(&envelope) {
            Err(e) => return self.record(&entry, "refused", Some(&describe(&e))).await,
            Ok(None) => {
                // Not a stock command: listeners registered for its type may act on it.
                let report = self.bus.dispatch_named(self.event(&envelope)).await;
                if report.outcomes.is_empty() {
                    return self
                        .record(&entry, "ignored", Some("no handler for this type"))
                        .await;
                }
                if !report.all_ok() {
                    tracing::warn!(queue = %self.queue, message = %entry.id, kind = %entry.kind,
                        "a listener failed on an SQS event; it will be delivered again");
                    return Outcome::Retry;
                }
                return self.record(&entry, "processed", None).await;
            }
            Ok(Some(ms)) => self.inventory.post_batch_from(&ms, &by, Some(&entry)).await,
        };
        match outcome {
            Ok(posted) => {
                (self.balances_changed)();
                metrics::counter!("malaka_sqs_postings_total", "queue" => self.queue.clone())
                    .increment(posted.len() as u64);
                let _report = self.bus.dispatch_named(self.event(&envelope)).await;
                Outcome::Done
            }
            Err(InventoryError::Conflict {
                code: "duplicate_message",
                ..
            }) => {
                metrics::counter!("malaka_sqs_duplicates_total", "queue" => self.queue.clone())
                    .increment(1);
                tracing::debug!(message = %entry.id, "a message seen before: skipped");
                Outcome::Done
            }
            Err(e) if e.is_refusal() => {
                tracing::info!(message = %entry.id, kind = %entry.kind, error = %e, "an SQS command was refused; recorded");
                self.record(&entry, "refused", Some(&describe(&e))).await
            }
            Err(e) => {
                tracing::warn!(message = %entry.id, error = %e, "posting an SQS command failed; it will be delivered again");
                Outcome::Retry
            }
        }
    }
}

impl Inbound {
    fn event(&self, e: &Envelope) -> JsonEvent {
        let mut ev = JsonEvent::new(e.kind.clone(), e.data_value()).with_source(
            e.source
                .clone()
                .unwrap_or_else(|| format!("sqs:{}", self.queue)),
        );
        if let Ok(id) = uuid::Uuid::parse_str(&e.id) {
            ev = ev.with_id(id);
        }
        if let Some(at) = e.occurred_at {
            ev.occurred_at = at;
        }
        ev
    }
}

/// The SQS side of a node: consumers of the inbound queues, the outbound publisher.
#[derive(Debug)]
pub struct SqsBridge {
    consumers: Vec<Consumer>,
    publisher: Option<Supervised>,
    stop: CancellationToken,
}

impl SqsBridge {
    /// Starts what `config` asks for; `None` when it asks for nothing.
    ///
    /// # Errors
    /// A consumer's pool could not be made.
    pub async fn start(
        config: &SqsConfig,
        db: &Database,
        inventory: &Inventory,
        bus: &EventBus,
        balances_changed: Arc<dyn Fn() + Send + Sync>,
        supervisor: &Supervisor,
    ) -> Result<Option<Self>, malaka_sqs::SqsError> {
        if config.inbound.is_empty() && config.outbound_url.is_empty() {
            return Ok(None);
        }
        let creds = (!config.access_key_id.is_empty()).then_some((
            config.access_key_id.as_str(),
            config.secret_access_key.as_str(),
        ));
        let endpoint = (!config.endpoint_url.is_empty()).then_some(config.endpoint_url.as_str());
        let client = malaka_sqs::client_with(&config.region, endpoint, creds).await;
        let mut consumers = Vec::new();
        for q in &config.inbound {
            let name = q.url.rsplit('/').next().unwrap_or("inbound").to_owned();
            let handler = Arc::new(Inbound {
                inventory: inventory.clone(),
                bus: bus.clone(),
                queue: name,
                balances_changed: Arc::clone(&balances_changed),
            });
            let c = ConsumerConfig::new(&q.url)
                .pollers(q.pollers)
                .concurrency(q.concurrency)
                .wait(config.wait)
                .visibility(q.visibility);
            consumers.push(Consumer::start_supervised(
                client.clone(),
                c,
                handler,
                supervisor,
            )?);
        }
        let stop = CancellationToken::new();
        let publisher = (!config.outbound_url.is_empty()).then(|| {
            let publisher = Publisher::new(client.clone(), &config.outbound_url);
            let (db, stop) = (db.clone(), stop.clone());
            supervisor.spawn(
                TaskSpec::new("sqs.publisher").stop_on(stop.clone()),
                move |task| {
                    publish(
                        publisher.clone(),
                        db.clone(),
                        Outbox::new(db.event_pool()),
                        stop.clone(),
                        task,
                    )
                },
            )
        });
        Ok(Some(Self {
            consumers,
            publisher,
            stop,
        }))
    }

    /// Stops receiving, finishes in-flight messages within `timeout`, stops publishing.
    pub async fn shutdown(self, timeout: Duration) {
        self.stop.cancel();
        futures::future::join_all(self.consumers.into_iter().map(|c| c.shutdown(timeout))).await;
        if let Some(p) = self.publisher {
            let _stopped = p.await;
        }
    }
}

fn group_of(payload: &Value) -> String {
    payload["sku"]
        .as_str()
        .or_else(|| payload["alert"]["sku"].as_str())
        .unwrap_or("malaka")
        .to_owned()
}

/// Sends published outbox events to the outbound queue in order, at least once: the position
/// advances only after a batch was accepted. On PostgreSQL one node publishes (an advisory
/// lock), like the relay.
async fn publish(
    publisher: Publisher,
    db: Database,
    outbox: Outbox,
    stop: CancellationToken,
    task: TaskContext,
) {
    const LOCK: i64 = 0x0000_6d61_6c61_7371; // "malasq"
    let Some(_leader) = crate::live::leader_lock(&db, LOCK, Duration::from_secs(1), &stop).await
    else {
        return;
    };
    let start = match outbox.last_seq().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "SQS publisher cannot read the outbox");
            0
        }
    };
    let mut seq: i64 = match db.meta_or_insert(CURSOR_KEY, &start.to_string()).await {
        Ok(v) => v.parse().unwrap_or(start),
        Err(e) => {
            tracing::warn!(error = %e, "SQS publisher cannot read its position");
            return;
        }
    };
    tracing::info!(from = seq, "SQS publisher running");
    let mut failures = 0u32;
    loop {
        let page = match outbox.published_after(seq, 100).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "SQS publisher: reading the outbox failed");
                Vec::new()
            }
        };
        if page.is_empty() {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        }
        let last = page.last().map_or(seq, |p| p.seq);
        let newest = page.last().map(|p| p.event.created_at);
        let out: Vec<Outgoing> = page
            .iter()
            .filter(|p| OUTBOUND_TOPICS.contains(&p.event.topic.as_str()))
            .map(|p| Outgoing {
                id: format!("malaka-{}", p.event.id),
                group: group_of(&p.event.payload),
                body: serde_json::json!({
                    "id": format!("malaka-{}", p.event.id), "type": p.event.topic, "source": "malaka",
                    "occurred_at": p.event.created_at, "seq": p.seq, "data": p.event.payload,
                })
                .to_string(),
            })
            .collect();
        match publisher.send(&out).await {
            Ok(()) => {
                failures = 0;
                task.healthy();
                seq = last;
                metrics::counter!("malaka_sqs_published_total").increment(out.len() as u64);
                if let Some(at) = newest {
                    let lag = (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0;
                    metrics::gauge!("malaka_sqs_publish_lag_seconds").set(lag);
                }
                if let Err(e) = db.set_meta(CURSOR_KEY, &seq.to_string()).await {
                    tracing::warn!(error = %e, "SQS publisher: saving its position failed (events may be sent again)");
                }
            }
            Err(e) => {
                failures += 1;
                task.degraded(format!("publishing failed: {e}"));
                let wait = Duration::from_millis(200 * u64::from(failures.min(50)));
                tracing::warn!(error = %e, ?wait, "SQS publish failed; retrying the same events");
                metrics::counter!("malaka_sqs_publish_errors_total").increment(1);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
        if stop.is_cancelled() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(kind: &str, data: &str) -> Envelope {
        Envelope::parse(&format!(r#"{{"id":"e1","type":"{kind}","data":{data}}}"#)).unwrap()
    }

    #[test]
    fn commands_become_movements_and_name_the_field_at_fault() {
        let m = movements_of(&env(
            "stock.receipt",
            r#"{"sku": "A", "warehouse": "W", "qty": 3, "unit_cost": "1.5"}"#,
        ))
        .unwrap()
        .unwrap();
        assert_eq!(m.len(), 1);
        let sale = env(
            "sale.completed",
            r#"{"reference": "POS-9", "lines": [{"sku": "A", "warehouse": "W", "qty": "1"}, {"sku": "B", "warehouse": "W", "qty": 2}]}"#,
        );
        let ms = movements_of(&sale).unwrap().unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[1].reference.as_deref(), Some("POS-9"));
        let bad = env(
            "sale.completed",
            r#"{"lines": [{"sku": "A", "warehouse": "W", "qty": "1"}, {"sku": "B", "warehouse": "W"}]}"#,
        );
        match movements_of(&bad) {
            Err(InventoryError::Invalid { field, .. }) => assert_eq!(field, "data.lines[1].qty"),
            other => panic!("{other:?}"),
        }
        let far = env(
            "sale.completed",
            r#"{"lines": [{"sku": "A", "warehouse": "W", "qty": 0.0000001}]}"#,
        );
        match movements_of(&far) {
            Err(InventoryError::OutOfRange { field, .. }) => {
                assert_eq!(field, "data.lines[0].qty");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            movements_of(&env("customer.created", "null"))
                .unwrap()
                .is_none()
        );
        assert!(movements_of(&env("purchase.received", r#"{"lines": []}"#)).is_err());
    }
}
