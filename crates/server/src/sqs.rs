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
use malaka_inventory::{
    Disposition, InboxEntry, InboxRecord, InboxState, Inventory, InventoryError, NewMovement,
    Outbox, Recorded,
};
use malaka_runtime::{EventBus, Supervised, Supervisor, TaskContext, TaskSpec};
use malaka_sqs::{Consumer, ConsumerConfig, Handler, Message, Outcome, Outgoing, Publisher};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::config::SqsConfig;
use crate::db::Database;
use crate::db::DatabaseExt as _;
use crate::input::{JsonError, MovementIn, from_json};

pub use malaka_inventory::topics::OUTBOUND_TOPICS;

/// The `malaka_meta` key holding the outbound publisher's position.
pub const CURSOR_KEY: &str = "sqs_outbound_seq";

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
        InventoryError::InBatch { index, source, .. } => {
            format!("data.lines[{index}]: {}", describe(source))
        }
        InventoryError::Invalid { field, message }
        | InventoryError::OutOfRange { field, message }
            if !field.is_empty() && !message.starts_with(field.as_str()) =>
        {
            format!("{field}: {message}")
        }
        other => other.to_string(),
    }
}

/// What one run of an inbound command came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Done: posted (or processed without postings), recorded `processed`.
    Processed,
    /// Its message already has a final record: nothing done.
    Duplicate,
    /// Recorded in a final state: `ignored`, `malformed`, `refused`, `parked`, `dead_lettered`.
    Recorded(InboxRecord),
    /// Refused for a reason that can change (insufficient stock, an unknown article or
    /// warehouse): recorded `retrying`; its message should come again.
    Waiting(InboxRecord),
    /// The database failed: nothing recorded; its message should come again.
    Failed(String),
}

/// Refusals that can change with time: a command refused so waits and tries again.
fn can_change(e: &InventoryError) -> bool {
    matches!(
        e.root(),
        InventoryError::InsufficientStock { .. } | InventoryError::NotFound { .. }
    )
}

/// Runs inbound commands: for the SQS consumer, and again for a person (a replay).
#[derive(Clone)]
pub struct Commands {
    inventory: Inventory,
    bus: EventBus,
    balances_changed: Arc<dyn Fn() + Send + Sync>,
    park_after: i32,
    /// Write every processed message's event to the outbox, listened to here or not (a
    /// process without the server's listeners: the CLI).
    publish_all: bool,
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commands")
            .field("park_after", &self.park_after)
            .finish_non_exhaustive()
    }
}

impl Commands {
    /// Commands posted through `inventory`; events go to `bus`'s listeners through the outbox;
    /// a command that keeps waiting is parked on attempt `park_after`.
    pub fn new(
        inventory: &Inventory,
        bus: &EventBus,
        balances_changed: Arc<dyn Fn() + Send + Sync>,
        park_after: i32,
    ) -> Self {
        Self {
            inventory: inventory.clone(),
            bus: bus.clone(),
            balances_changed,
            park_after,
            publish_all: false,
        }
    }

    /// Writes every processed message's event to the outbox, whether or not this process's
    /// bus has listeners for it (for a process that runs without the server's listeners).
    #[must_use]
    pub fn publishing_all(mut self) -> Self {
        self.publish_all = true;
        self
    }

    /// Whether the bus has listeners for `kind`.
    fn listened(&self, kind: &str) -> bool {
        self.publish_all
            || self
                .bus
                .named_listeners()
                .iter()
                .any(|(_, events)| events.iter().any(|e| e == kind))
    }

    async fn record(
        &self,
        entry: &InboxEntry,
        disposition: Disposition,
        error: Option<&str>,
    ) -> Handled {
        match self.inventory.record_inbox(entry, disposition, error).await {
            Ok(Recorded::Now(r)) => {
                metrics::counter!("malaka_sqs_inbox_total", "state" => r.state.as_str())
                    .increment(1);
                match r.state {
                    InboxState::Retrying => Handled::Waiting(r),
                    InboxState::Processed => Handled::Processed,
                    _ => Handled::Recorded(r),
                }
            }
            Ok(Recorded::Duplicate(_)) => Handled::Duplicate,
            Err(e) => Handled::Failed(e.to_string()),
        }
    }

    /// Runs the command of `envelope` (recorded as `entry`). A refusal that can change is an
    /// attempt: `retrying`, parked from attempt `park_after` on, or, with `dead_letter`,
    /// recorded as taken by the queue's dead-letter policy.
    pub async fn run(
        &self,
        envelope: &Envelope,
        mut entry: InboxEntry,
        park_after: i32,
        dead_letter: bool,
    ) -> Handled {
        let listened = self.listened(&envelope.kind);
        if listened {
            entry.event = Some(envelope.data_value());
        }
        let ms = match movements_of(envelope) {
            Err(e) => {
                let why = describe(&e);
                return self
                    .record(&entry, Disposition::Final(InboxState::Refused), Some(&why))
                    .await;
            }
            Ok(None) if listened => {
                // Not a stock command: its listeners get it through the outbox.
                return self
                    .record(&entry, Disposition::Final(InboxState::Processed), None)
                    .await;
            }
            Ok(None) => {
                return self
                    .record(
                        &entry,
                        Disposition::Final(InboxState::Ignored),
                        Some("no handler for this type"),
                    )
                    .await;
            }
            Ok(Some(ms)) => ms,
        };
        let by = format!("sqs:{}", entry.source);
        let posted = self.inventory.post_batch_from(&ms, &by, Some(&entry)).await;
        // A command of one movement has no lines to point at.
        let posted = posted.map_err(|e| if ms.len() == 1 { e.into_root() } else { e });
        match posted {
            Ok(posted) => {
                (self.balances_changed)();
                metrics::counter!("malaka_sqs_postings_total").increment(posted.len() as u64);
                Handled::Processed
            }
            Err(InventoryError::Conflict {
                code: "duplicate_message",
                ..
            }) => Handled::Duplicate,
            Err(e) if can_change(&e) => {
                let disposition = if dead_letter {
                    Disposition::Final(InboxState::DeadLettered)
                } else {
                    Disposition::Attempt { park_after }
                };
                self.record(&entry, disposition, Some(&describe(&e))).await
            }
            Err(e) if e.is_refusal() => {
                let why = describe(&e);
                self.record(&entry, Disposition::Final(InboxState::Refused), Some(&why))
                    .await
            }
            Err(e) => Handled::Failed(e.to_string()),
        }
    }

    /// Runs a parked, refused or dead-lettered command again, as a person asks: it posts (and
    /// is `processed`), or is recorded again with this attempt's reason (a refusal that can
    /// change parks it again at once). The record as it then is.
    ///
    /// # Errors
    /// `NotFound`, `Conflict` (`not_replayable`), a body that no longer parses, or a database
    /// failure (`Unavailable`).
    pub async fn replay(&self, id: i64) -> Result<InboxRecord, InventoryError> {
        let r = self.inventory.inbox_reopen(id).await?;
        let envelope = Envelope::parse(&r.payload).map_err(InventoryError::from)?;
        let entry = InboxEntry {
            id: r.message_id.clone(),
            source: r.source.clone(),
            kind: r.kind.clone(),
            payload: r.payload.clone(),
            event: None,
        };
        if let Handled::Failed(why) = self.run(&envelope, entry, 0, false).await {
            return Err(InventoryError::Unavailable(why));
        }
        self.inventory.inbox_record(id).await
    }
}

/// Turns inbound messages into postings and events.
struct Inbound {
    commands: Commands,
    queue: String,
    /// The queue's redrive policy's `maxReceiveCount`, if it has one.
    max_receives: Option<u32>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
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
                    event: None,
                };
                let why = format!("not an event envelope: {err}");
                return match self
                    .commands
                    .record(
                        &entry,
                        Disposition::Final(InboxState::Malformed),
                        Some(&why),
                    )
                    .await
                {
                    Handled::Failed(e) => {
                        tracing::warn!(message = %m.id, error = %e, "recording an SQS message failed; it will be delivered again");
                        Outcome::Retry
                    }
                    _ => Outcome::Done,
                };
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
            event: None,
        };
        let dead_letter = self.max_receives.is_some_and(|n| m.receive_count >= n);
        let park_after = self.commands.park_after;
        match self
            .commands
            .run(&envelope, entry, park_after, dead_letter)
            .await
        {
            Handled::Processed => Outcome::Done,
            Handled::Duplicate => {
                metrics::counter!("malaka_sqs_duplicates_total", "queue" => self.queue.clone())
                    .increment(1);
                tracing::debug!(message = %envelope.id, "a message seen before: skipped");
                Outcome::Done
            }
            Handled::Recorded(r) if r.state == InboxState::DeadLettered => {
                // The queue's redrive policy takes it on its next receive.
                tracing::warn!(message = %envelope.id, source = %r.source, attempts = r.attempts,
                    "an SQS command kept waiting; the queue's dead-letter policy takes it");
                Outcome::Retry
            }
            Handled::Recorded(r) => {
                if r.state == InboxState::Parked {
                    tracing::warn!(message = %envelope.id, source = %r.source, attempts = r.attempts,
                        "an SQS command kept waiting; parked for a person to replay");
                } else {
                    tracing::info!(message = %envelope.id, kind = %envelope.kind, state = r.state.as_str(),
                        "an SQS message was recorded");
                }
                Outcome::Done
            }
            Handled::Waiting(r) => {
                tracing::info!(message = %envelope.id, attempts = r.attempts,
                    reason = r.errors.last().map_or("", |a| a.error.as_str()),
                    "an SQS command waits (it is tried again)");
                Outcome::Retry
            }
            Handled::Failed(e) => {
                tracing::warn!(message = %envelope.id, error = %e, "an SQS command failed; it will be delivered again");
                Outcome::Retry
            }
        }
    }
}

/// The counters of a running inbound consumer (for benchmarks and diagnostics).
#[derive(Debug, Clone)]
pub struct InboundStats {
    /// The queue.
    pub queue_url: String,
    /// When its consumer started (just before its pollers were spawned).
    pub started: std::time::Instant,
    /// Its counters: received, done, deleted (acknowledged by the queue), retried...
    pub stats: Arc<malaka_sqs::ConsumerStats>,
}

/// The SQS side of a node: consumers of the inbound queues, the outbound publisher.
#[derive(Debug)]
pub struct SqsBridge {
    consumers: Vec<Consumer>,
    inbound: Vec<InboundStats>,
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
        commands: &Commands,
        supervisor: &Supervisor,
    ) -> Result<Option<Self>, malaka_sqs::SqsError> {
        if config.inbound.is_empty() && config.outbound_url.is_empty() {
            return Ok(None);
        }
        let creds = (!config.access_key_id.is_empty()).then_some((
            config.access_key_id.as_str(),
            config.secret_access_key.expose(),
        ));
        let endpoint = (!config.endpoint_url.is_empty()).then_some(config.endpoint_url.as_str());
        let client = malaka_sqs::client_with(&config.region, endpoint, creds).await;
        let mut consumers = Vec::new();
        let mut inbound = Vec::new();
        for q in &config.inbound {
            let name = q.url.rsplit('/').next().unwrap_or("inbound").to_owned();
            let max_receives = match malaka_sqs::admin::max_receive_count(&client, &q.url).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(queue = %name, error = %e, "cannot read the queue's redrive policy; Malaka parks waiting commands itself");
                    None
                }
            };
            let handler = Arc::new(Inbound {
                commands: commands.clone(),
                queue: name,
                max_receives,
            });
            let c = ConsumerConfig::new(&q.url)
                .pollers(q.pollers)
                .concurrency(q.concurrency)
                .wait(config.wait)
                .visibility(q.visibility);
            let started = std::time::Instant::now();
            let consumer = Consumer::start_supervised(client.clone(), c, handler, supervisor)?;
            inbound.push(InboundStats {
                queue_url: q.url.clone(),
                started,
                stats: consumer.shared_stats(),
            });
            consumers.push(consumer);
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
            inbound,
            publisher,
            stop,
        }))
    }

    /// The inbound consumers' counters.
    pub fn inbound_stats(&self) -> &[InboundStats] {
        &self.inbound
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
    let Some(_leader) = db.leader_lock(LOCK, Duration::from_secs(1), &stop).await else {
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
