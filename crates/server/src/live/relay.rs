//! The outbox relay: hands committed outbox events, oldest first, to the event bus, then marks
//! them published under consecutive sequence numbers and wakes the hubs. One relay runs per
//! database: on PostgreSQL the node holding an advisory lock, so each event's side effects
//! happen once in all (at least once: a relay that dies between dispatch and mark dispatches
//! again, and the listeners are idempotent).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use malaka_inventory::{Alerts, OutboxEvent};
use malaka_runtime::{EventBus, JsonEvent};
use sqlx::{Connection, PgConnection};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::hub::Hub;
use crate::config::LiveConfig;
use crate::db::Database;

/// The advisory lock the PostgreSQL relay holds ("malaka" in ASCII).
const RELAY_LOCK: i64 = 0x0000_6d61_6c61_6b61;

/// Events read per round.
const BATCH: u32 = 256;

/// What the relay works with.
#[derive(Clone)]
pub(crate) struct Relay {
    pub(crate) db: Database,
    pub(crate) hub: Hub,
    pub(crate) alerts: Alerts,
    pub(crate) bus: EventBus,
    /// Told when outbox events were written (in process, or by `NOTIFY` from other nodes).
    pub(crate) wake: Arc<Notify>,
    pub(crate) config: LiveConfig,
}

/// Leadership: on PostgreSQL, the connection that holds an advisory lock (dropping it lets the
/// lock go); on SQLite there is one node, always leader.
#[derive(Debug)]
pub struct Leader(Option<PgConnection>);

/// Waits until this node holds advisory lock `key` on PostgreSQL (trying every `every`), at
/// once on SQLite. `None` when stopped first.
pub async fn leader_lock(
    db: &Database,
    key: i64,
    every: Duration,
    stop: &CancellationToken,
) -> Option<Leader> {
    let Database::Postgres(pool) = db else {
        return Some(Leader(None));
    };
    loop {
        let attempt = async {
            let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await?;
            Ok::<_, sqlx::Error>(got.then_some(conn))
        };
        match attempt.await {
            Ok(Some(conn)) => return Some(Leader(Some(conn))),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot reach the database for a leader lock"),
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(every) => {}
        }
    }
}

impl Leader {
    /// Still leader? On PostgreSQL, asks the lock's connection (a broken one lost the lock).
    async fn alive(&mut self) -> bool {
        let Some(conn) = &mut self.0 else {
            return true;
        };
        matches!(
            tokio::time::timeout(
                Duration::from_secs(5),
                sqlx::query("SELECT 1").execute(&mut *conn)
            )
            .await,
            Ok(Ok(_))
        )
    }
}

impl Relay {
    /// Runs until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        loop {
            let Some(mut leader) = self.lead(&stop).await else {
                return;
            };
            tracing::info!("this node relays the outbox");
            metrics::gauge!("malaka_outbox_relay_leader").set(1.0);
            let lost = self.relay(&mut leader, &stop).await;
            metrics::gauge!("malaka_outbox_relay_leader").set(0.0);
            if !lost {
                return;
            }
            tracing::warn!("outbox relay lost its database lock; taking it again");
        }
    }

    /// Becomes the relay: at once on SQLite, on PostgreSQL once the advisory lock is ours
    /// (trying every poll interval). `None` when stopped first.
    async fn lead(&self, stop: &CancellationToken) -> Option<Leader> {
        leader_lock(&self.db, RELAY_LOCK, self.config.poll_interval, stop).await
    }

    /// Relays while leader; returns `true` when leadership was lost, `false` when stopped.
    async fn relay(&self, leader: &mut Leader, stop: &CancellationToken) -> bool {
        let outbox = self.hub.outbox().clone();
        let mut seq = match outbox.last_seq().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay: cannot read the last sequence number");
                return true;
            }
        };
        let sweep_every = self.config.sweep_every;
        let mut next_sweep = Instant::now() + sweep_every;
        let mut next_prune = Instant::now();
        loop {
            if stop.is_cancelled() {
                return false;
            }
            let batch = match outbox.unpublished(BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay: reading events failed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return false,
                        () = tokio::time::sleep(self.config.poll_interval) => {}
                    }
                    continue;
                }
            };
            if !batch.is_empty() {
                for e in &batch {
                    self.dispatch(e).await;
                }
                let marks: Vec<(i64, i64)> = batch
                    .iter()
                    .map(|e| {
                        seq += 1;
                        (e.id, seq)
                    })
                    .collect();
                match outbox.mark_published(&marks).await {
                    Ok(_) => {
                        metrics::counter!("malaka_outbox_published_total")
                            .increment(marks.len() as u64);
                        self.hub.wake();
                    }
                    Err(e) => {
                        // Another relay took these numbers (two leaders for a moment), or the
                        // database failed: read where publication stands and go on; the events
                        // are dispatched again (listeners are idempotent).
                        tracing::warn!(error = %e, "outbox relay: marking events published failed");
                        metrics::counter!("malaka_outbox_mark_errors_total").increment(1);
                        match outbox.last_seq().await {
                            Ok(s) => seq = s,
                            Err(_) => return true,
                        }
                    }
                }
                continue;
            }
            // Caught up: the moment for the safety nets.
            let now = Instant::now();
            if !sweep_every.is_zero() && now >= next_sweep {
                next_sweep = now + sweep_every;
                self.sweep().await;
                continue;
            }
            if now >= next_prune {
                next_prune = now + Duration::from_secs(60);
                self.prune().await;
            }
            if !leader.alive().await {
                return true;
            }
            let until = if sweep_every.is_zero() {
                now + self.config.poll_interval
            } else {
                next_sweep.min(now + self.config.poll_interval)
            };
            tokio::select! {
                () = stop.cancelled() => return false,
                () = self.wake.notified() => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Hands one event to the bus's listeners and waits for them (they run concurrently,
    /// each with its own retries); a failure is logged and counted, and the event is published
    /// anyway: the sweep repairs what an alert listener could not do.
    async fn dispatch(&self, e: &OutboxEvent) {
        let mut data = e.payload.clone();
        if let Some(obj) = data.as_object_mut() {
            obj.insert("outbox_id".to_owned(), e.id.into());
        }
        let event = JsonEvent::new(e.topic.clone(), data).with_source("outbox");
        let report = self.bus.dispatch_named(event).await;
        for f in report.failures() {
            if let Err(err) = &f.result {
                tracing::error!(event = e.id, topic = %e.topic, listener = %f.listener, error = %err,
                    "an outbox event's listener failed");
            }
            metrics::counter!("malaka_outbox_listener_failures_total", "listener" => f.listener.to_string())
                .increment(1);
        }
    }

    async fn sweep(&self) {
        match self.alerts.sweep().await {
            Ok((report, changes)) => {
                metrics::counter!("malaka_alerts_repaired_total").increment(report.repaired);
                if report.repaired > 0 {
                    for c in &changes {
                        tracing::warn!(sku = %c.alert.sku, warehouse = %c.alert.warehouse,
                            action = c.action.as_str(), level = c.alert.level.as_str(),
                            "the alert sweep repaired an alert the event path missed");
                    }
                } else {
                    tracing::debug!(balances = report.balances, "alert sweep: all alerts agree");
                }
            }
            Err(e) => tracing::warn!(error = %e, "alert sweep failed"),
        }
    }

    async fn prune(&self) {
        let Ok(keep) = chrono::Duration::from_std(self.config.outbox_retention) else {
            return;
        };
        let before = Utc::now() - keep;
        loop {
            match self.hub.outbox().prune(before, 10_000).await {
                Ok(n) => {
                    metrics::counter!("malaka_outbox_pruned_total").increment(n);
                    if n < 10_000 {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning the outbox failed");
                    return;
                }
            }
        }
    }
}
