//! Durable delivery of published outbox events to the event bus's named listeners. Each
//! listener has its own cursor over the outbox's publication order (`malaka_listener_cursors`),
//! so a slow or failing listener holds back neither publication nor the others. A delivery that
//! fails (after the listener's own in-memory retries) is recorded, once per listener and event,
//! in `malaka_delivery_failures`, retried with backoff, and parked after its attempts for a
//! person to replay; the cursor moves on, so one bad event never stops a listener. On
//! PostgreSQL one node delivers (an advisory lock), so each listener sees each event once in all
//! (at least once: a delivery is redone when the process died before its cursor moved).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use malaka_db::on_pool;
use malaka_inventory::{InventoryError, Outbox, Published};
use malaka_runtime::{EventBus, JsonEvent, TaskContext};
use serde::Serialize;
use sqlx::Row;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::Database;
use crate::db::DatabaseExt as _;

/// The advisory lock of the node that delivers ("maladl").
const DELIVERY_LOCK: i64 = 0x0000_6d61_6c61_646c;

/// Events read per listener and round.
const BATCH: u32 = 256;

/// Longest wait between two attempts of a failed delivery.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// How failed deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// Attempts (the first delivery included) before a failure is parked.
    pub attempts: i32,
    /// Wait before the first retry, doubling up to 10 minutes.
    pub backoff: Duration,
    /// How often the deliverer looks for work without a wake-up.
    pub poll: Duration,
}

/// What became of a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureState {
    /// Tried again at `next_attempt_at`.
    Retrying,
    /// Out of attempts: waits for a person.
    Parked,
    /// Delivered on a later attempt.
    Resolved,
}

impl FailureState {
    /// Every state.
    pub const ALL: [Self; 3] = [Self::Retrying, Self::Parked, Self::Resolved];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retrying => "retrying",
            Self::Parked => "parked",
            Self::Resolved => "resolved",
        }
    }

    /// Parses a stored name.
    ///
    /// # Errors
    /// Any other name (the error names the `state` field).
    pub fn parse(s: &str) -> Result<Self, InventoryError> {
        match s {
            "retrying" => Ok(Self::Retrying),
            "parked" => Ok(Self::Parked),
            "resolved" => Ok(Self::Resolved),
            other => Err(InventoryError::invalid(
                "state",
                format!("state must be retrying, parked or resolved, not {other:?}"),
            )),
        }
    }
}

/// One attempt's failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Attempt {
    /// When.
    pub at: DateTime<Utc>,
    /// Why.
    pub error: String,
}

/// A delivery that failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    /// Id.
    pub id: i64,
    /// The listener.
    pub listener: String,
    /// The event (`outbox:<id>`).
    pub event_key: String,
    /// Its topic.
    pub topic: String,
    /// Its data, as delivered.
    pub payload: serde_json::Value,
    /// What became of it.
    pub state: FailureState,
    /// Attempts so far.
    pub attempts: i32,
    /// Every attempt's error, oldest first.
    pub errors: Vec<Attempt>,
    /// When it is tried again (while retrying).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// First failed.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// Which failures to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureFilter {
    /// Only this state.
    pub state: Option<FailureState>,
    /// Only this listener.
    pub listener: Option<String>,
    /// Failures with a smaller id (the previous page's last).
    pub before: Option<i64>,
    /// Page size (1 to 1000).
    pub limit: u32,
}

/// The durable deliverer of one node.
#[derive(Clone)]
pub struct Deliveries {
    db: Database,
    pool: malaka_db::Database,
    bus: EventBus,
    outbox: Outbox,
    config: DeliveryConfig,
    wake: Arc<Notify>,
    /// Told after deliveries: listeners (the stock monitor) write outbox events of their own.
    relay: Arc<Notify>,
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliveries")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

const FAILURE_COLS: &str = "id, listener, event_key, topic, payload, state, attempts, errors, \
                            next_attempt_at, created_at, updated_at";

fn failure_of<R: Row>(r: &R) -> Result<Failure, InventoryError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i32: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> DateTime<Utc>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<DateTime<Utc>>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Failure {
        id: r.try_get("id")?,
        listener: r.try_get("listener")?,
        event_key: r.try_get("event_key")?,
        topic: r.try_get("topic")?,
        payload: serde_json::from_str(&r.try_get::<String, _>("payload")?)?,
        state: FailureState::parse(&r.try_get::<String, _>("state")?)
            .map_err(|e| InventoryError::Corrupt(e.to_string()))?,
        attempts: r.try_get("attempts")?,
        errors: serde_json::from_str(&r.try_get::<String, _>("errors")?)?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Deliveries {
    /// The deliverer over `db`'s outbox for `bus`'s named listeners; `wake` is told when events
    /// are published; `relay` is told after deliveries (listeners write events of their own).
    pub fn new(
        db: &Database,
        bus: &EventBus,
        config: DeliveryConfig,
        wake: Arc<Notify>,
        relay: Arc<Notify>,
    ) -> Self {
        let pool = db.event_pool();
        Self {
            db: db.clone(),
            outbox: Outbox::new(pool.clone()),
            pool,
            bus: bus.clone(),
            config,
            wake,
            relay,
        }
    }

    /// On SQLite, this process's turn to write to the file (see [`malaka_inventory::WriteGate`]):
    /// waiting in SQLite's busy handler behind back-to-back posting commits can take seconds.
    async fn write_turn(&self) -> Option<malaka_inventory::WriteTurn> {
        match &self.pool {
            malaka_db::Database::Sqlite(p) => Some(malaka_inventory::sqlite_turn(p).await),
            malaka_db::Database::Postgres(_) => None,
        }
    }

    /// Publishing happened: deliver now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Gives every named listener without a cursor one at the current end of publication (a
    /// new listener starts with what is published from now on). Called before the relay
    /// starts, so nothing published meanwhile is skipped.
    ///
    /// # Errors
    /// A database error.
    pub async fn ensure_cursors(&self) -> Result<(), InventoryError> {
        let last = self.outbox.last_seq().await?;
        for (listener, _) in self.bus.named_listeners() {
            self.cursor_or(&listener, last).await?;
        }
        Ok(())
    }

    async fn cursor_or(&self, listener: &str, start: i64) -> Result<i64, InventoryError> {
        const INSERT: &str = "INSERT INTO malaka_listener_cursors (listener, seq, updated_at) \
                              VALUES ($1, $2, $3) ON CONFLICT (listener) DO NOTHING";
        const SELECT: &str = "SELECT seq FROM malaka_listener_cursors WHERE listener = $1";
        let now = Utc::now();
        let _turn = self.write_turn().await;
        Ok(on_pool!(&self.pool, p => {
            sqlx::query(INSERT).bind(listener).bind(start).bind(now).execute(p).await?;
            sqlx::query_scalar::<_, i64>(SELECT).bind(listener).fetch_one(p).await?
        }))
    }

    async fn save_cursor(&self, listener: &str, seq: i64) -> Result<(), InventoryError> {
        const SQL: &str = "UPDATE malaka_listener_cursors SET seq = $2, updated_at = $3 \
                           WHERE listener = $1 AND seq < $2";
        let now = Utc::now();
        let _turn = self.write_turn().await;
        on_pool!(&self.pool, p => {
            sqlx::query(SQL).bind(listener).bind(seq).bind(now).execute(p).await?;
        });
        Ok(())
    }

    /// The lowest position of any listener: the outbox keeps every event after it.
    ///
    /// # Errors
    /// A database error.
    pub async fn lowest_cursor(&self) -> Result<Option<i64>, InventoryError> {
        const SQL: &str = "SELECT MIN(seq) FROM malaka_listener_cursors";
        Ok(on_pool!(&self.pool, p => {
            sqlx::query_scalar::<_, Option<i64>>(SQL).fetch_one(p).await?
        }))
    }

    /// Delivers until `stop`: on PostgreSQL once this node holds the delivery lock.
    pub async fn run(self, stop: CancellationToken, task: TaskContext) {
        let Some(mut leader) = self
            .db
            .leader_lock(DELIVERY_LOCK, self.config.poll, &stop)
            .await
        else {
            return;
        };
        let mut cursors: HashMap<String, i64> = HashMap::new();
        // When each listener's cursor was last written, and the positions not written yet.
        let mut saved_at: HashMap<String, tokio::time::Instant> = HashMap::new();
        let mut unsaved: HashMap<String, i64> = HashMap::new();
        let mut last_check = tokio::time::Instant::now();
        loop {
            if stop.is_cancelled() {
                return;
            }
            let mut progressed = false;
            let listeners = self.bus.named_listeners();
            let this = &self;
            let rounds = listeners.iter().map(|(name, topics)| {
                let start = cursors.get(name).copied();
                let due = saved_at
                    .get(name)
                    .is_none_or(|t| t.elapsed() >= self.config.poll);
                async move { (name.clone(), this.advance(name, topics, start, due).await) }
            });
            for (name, r) in futures::future::join_all(rounds).await {
                match r {
                    Ok(Advanced { seq, moved, saved }) => {
                        if saved {
                            saved_at.insert(name.clone(), tokio::time::Instant::now());
                            unsaved.remove(&name);
                        } else if moved {
                            unsaved.insert(name.clone(), seq);
                        }
                        cursors.insert(name, seq);
                        progressed |= moved;
                        task.healthy();
                    }
                    Err(e) => {
                        cursors.remove(&name);
                        task.degraded(format!("delivering to {name} failed: {e}"));
                        tracing::warn!(listener = %name, error = %e, "delivering events failed; retrying");
                    }
                }
            }
            match self.retry_due().await {
                Ok(n) => progressed |= n > 0,
                Err(e) => tracing::warn!(error = %e, "retrying failed deliveries failed"),
            }
            if progressed {
                // What the listeners wrote to the outbox (alerts) is published at once.
                self.relay.notify_one();
                continue;
            }
            // Caught up: the positions passed over in a hurry are written now.
            for (name, seq) in std::mem::take(&mut unsaved) {
                match self.save_cursor(&name, seq).await {
                    Ok(()) => {
                        saved_at.insert(name, tokio::time::Instant::now());
                    }
                    Err(e) => {
                        tracing::warn!(listener = %name, error = %e, "saving a listener's position failed");
                    }
                }
            }
            if last_check.elapsed() >= self.config.poll * 5 {
                last_check = tokio::time::Instant::now();
                if !leader.alive().await {
                    // Another node delivers now; this task restarts and waits for the lock.
                    tracing::warn!("event delivery lost its database lock");
                    return;
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll) => {}
            }
        }
    }

    /// Delivers the next published events after `listener`'s cursor. The new position is
    /// written when an event was delivered to it or when `due`; a batch of events the listener
    /// does not take is otherwise passed over without a write (each write waits its turn behind
    /// the postings on SQLite), since reading them again after a restart delivers nothing.
    async fn advance(
        &self,
        listener: &str,
        topics: &[String],
        known: Option<i64>,
        due: bool,
    ) -> Result<Advanced, InventoryError> {
        let cursor = match known {
            Some(c) => c,
            None => {
                let last = self.outbox.last_seq().await?;
                self.cursor_or(listener, last).await?
            }
        };
        let events = self.outbox.published_after(cursor, BATCH).await?;
        let Some(last) = events.last().map(|p| p.seq) else {
            return Ok(Advanced {
                seq: cursor,
                moved: false,
                saved: false,
            });
        };
        let mut delivered = false;
        for p in &events {
            if !topics.contains(&p.event.topic) {
                continue;
            }
            delivered = true;
            let event = event_of(p);
            let report = self.bus.dispatch_named_to(event, listener).await;
            if let Some(err) = report.failures().find_map(|f| f.result.as_ref().err()) {
                metrics::counter!("malaka_delivery_failures_total", "listener" => listener.to_owned())
                    .increment(1);
                tracing::warn!(listener, event = p.event.id, topic = %p.event.topic, error = %err,
                    "a listener failed an event; recorded, it will be retried");
                self.record_failure(listener, p, &err.to_string()).await?;
            }
        }
        let saved = delivered || due;
        if saved {
            self.save_cursor(listener, last).await?;
        }
        metrics::gauge!("malaka_listener_position", "listener" => listener.to_owned())
            .set(last as f64);
        Ok(Advanced {
            seq: last,
            moved: true,
            saved,
        })
    }

    async fn record_failure(
        &self,
        listener: &str,
        p: &Published,
        error: &str,
    ) -> Result<(), InventoryError> {
        const SQL: &str = "INSERT INTO malaka_delivery_failures (listener, event_key, topic, \
                           payload, state, attempts, errors, next_attempt_at, created_at, \
                           updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, $8) \
                           ON CONFLICT (listener, event_key) DO NOTHING";
        let now = Utc::now();
        let errors = serde_json::to_string(&[Attempt {
            at: now,
            error: error.to_owned(),
        }])?;
        let (state, next) = self.after_attempt(1, now);
        let payload = event_data(p).to_string();
        let _turn = self.write_turn().await;
        on_pool!(&self.pool, pool => {
            sqlx::query(SQL)
                .bind(listener)
                .bind(format!("outbox:{}", p.event.id))
                .bind(&p.event.topic)
                .bind(&payload)
                .bind(state.as_str())
                .bind(&errors)
                .bind(next)
                .bind(now)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The state after attempt `attempts` failed, and when the next is due.
    fn after_attempt(
        &self,
        attempts: i32,
        now: DateTime<Utc>,
    ) -> (FailureState, Option<DateTime<Utc>>) {
        if attempts >= self.config.attempts {
            return (FailureState::Parked, None);
        }
        let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
        let wait = self
            .config
            .backoff
            .saturating_mul(2u32.saturating_pow(exp))
            .min(MAX_BACKOFF);
        let wait = chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::minutes(10));
        (FailureState::Retrying, Some(now + wait))
    }

    /// Retries the failed deliveries that are due; how many were tried.
    async fn retry_due(&self) -> Result<usize, InventoryError> {
        let due = {
            let sql = format!(
                "SELECT {FAILURE_COLS} FROM malaka_delivery_failures \
                 WHERE state = 'retrying' AND next_attempt_at <= $1 \
                 ORDER BY next_attempt_at LIMIT 50"
            );
            let now = Utc::now();
            on_pool!(&self.pool, p => {
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now).fetch_all(p).await?;
                rows.iter().map(failure_of).collect::<Result<Vec<_>, _>>()?
            })
        };
        for f in &due {
            self.attempt(f, false).await?;
        }
        Ok(due.len())
    }

    /// Delivers `f` again; `by_hand` (a replay) parks it again at once if it fails.
    async fn attempt(&self, f: &Failure, by_hand: bool) -> Result<Failure, InventoryError> {
        let event = JsonEvent::new(f.topic.clone(), f.payload.clone()).with_source("outbox");
        let report = self.bus.dispatch_named_to(event, &f.listener).await;
        let now = Utc::now();
        let failed = if report.outcomes.is_empty() {
            Some(format!(
                "no listener named {} is registered for {}",
                f.listener, f.topic
            ))
        } else {
            report
                .failures()
                .find_map(|o| o.result.as_ref().err())
                .map(ToString::to_string)
        };
        let (state, next, errors) = match failed {
            None => (FailureState::Resolved, None, f.errors.clone()),
            Some(why) => {
                let mut errors = f.errors.clone();
                errors.push(Attempt {
                    at: now,
                    error: why,
                });
                let (state, next) = if by_hand {
                    (FailureState::Parked, None)
                } else {
                    self.after_attempt(f.attempts + 1, now)
                };
                (state, next, errors)
            }
        };
        if state == FailureState::Resolved {
            tracing::info!(listener = %f.listener, event = %f.event_key, "a failed delivery went through");
        } else if state == FailureState::Parked && !by_hand {
            tracing::error!(listener = %f.listener, event = %f.event_key, attempts = f.attempts + 1,
                "a delivery failed on every attempt; parked for a person to replay");
            metrics::counter!("malaka_delivery_parked_total", "listener" => f.listener.clone())
                .increment(1);
        }
        const SQL: &str = "UPDATE malaka_delivery_failures SET state = $2, attempts = attempts + 1, \
                           errors = $3, next_attempt_at = $4, updated_at = $5 WHERE id = $1";
        let errors = serde_json::to_string(&errors)?;
        {
            let _turn = self.write_turn().await;
            on_pool!(&self.pool, p => {
                sqlx::query(SQL)
                    .bind(f.id)
                    .bind(state.as_str())
                    .bind(&errors)
                    .bind(next)
                    .bind(now)
                    .execute(p)
                    .await?;
            });
        }
        self.failure(f.id).await
    }

    /// One failure.
    ///
    /// # Errors
    /// `NotFound` or a database error.
    pub async fn failure(&self, id: i64) -> Result<Failure, InventoryError> {
        let sql = format!("SELECT {FAILURE_COLS} FROM malaka_delivery_failures WHERE id = $1");
        let found = on_pool!(&self.pool, p => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(p).await?;
            row.as_ref().map(failure_of).transpose()?
        });
        found.ok_or_else(|| InventoryError::NotFound {
            what: "delivery failure",
            key: id.to_string(),
        })
    }

    /// Failures matching `filter`, newest first.
    ///
    /// # Errors
    /// A database error.
    pub async fn failures(&self, filter: &FailureFilter) -> Result<Vec<Failure>, InventoryError> {
        Ok(on_pool!(&self.pool, p => {
            // Only the filters given, so the (state, id) or (listener, id) index serves them.
            let mut q = sqlx::QueryBuilder::new(format!(
                "SELECT {FAILURE_COLS} FROM malaka_delivery_failures WHERE 1 = 1"
            ));
            if let Some(st) = filter.state {
                q.push(" AND state = ").push_bind(st.as_str());
            }
            if let Some(l) = filter.listener.as_deref() {
                q.push(" AND listener = ").push_bind(l);
            }
            if let Some(b) = filter.before {
                q.push(" AND id < ").push_bind(b);
            }
            q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(filter.limit.clamp(1, 1000)));
            let rows = q.build().fetch_all(p).await?;
            rows.iter().map(failure_of).collect::<Result<Vec<_>, _>>()?
        }))
    }

    /// Delivers a failure again now, as a person asks: resolved if it goes through, parked
    /// again (with this attempt's error) if not.
    ///
    /// # Errors
    /// `NotFound`, `Conflict` (`already_resolved`) or a database error.
    pub async fn replay(&self, id: i64) -> Result<Failure, InventoryError> {
        let f = self.failure(id).await?;
        if f.state == FailureState::Resolved {
            return Err(InventoryError::Conflict {
                code: "already_resolved",
                message: format!("delivery failure {id} was already resolved"),
            });
        }
        self.attempt(&f, true).await
    }

    /// Deletes resolved failures older than `before`; how many.
    ///
    /// # Errors
    /// A database error.
    pub async fn prune(&self, before: DateTime<Utc>) -> Result<u64, InventoryError> {
        const SQL: &str =
            "DELETE FROM malaka_delivery_failures WHERE state = 'resolved' AND updated_at < $1";
        let _turn = self.write_turn().await;
        Ok(on_pool!(&self.pool, p => {
            sqlx::query(SQL).bind(before).execute(p).await?.rows_affected()
        }))
    }
}

/// Where one round left a listener.
struct Advanced {
    /// Its position.
    seq: i64,
    /// Whether the round read events.
    moved: bool,
    /// Whether the position was written.
    saved: bool,
}

/// The bus event of a published outbox event: its payload with `outbox_id`.
fn event_of(p: &Published) -> JsonEvent {
    JsonEvent::new(p.event.topic.clone(), event_data(p)).with_source("outbox")
}

fn event_data(p: &Published) -> serde_json::Value {
    let mut data = p.event.payload.clone();
    if let Some(obj) = data.as_object_mut() {
        obj.insert("outbox_id".to_owned(), p.event.id.into());
    }
    data
}
