//! The outbox relay: hands committed outbox events, oldest first, to the event bus, then marks
//! them published under consecutive sequence numbers and wakes the hubs. One relay runs per
//! database: on PostgreSQL the node holding an advisory lock, so each event's side effects
//! happen once in all (at least once: a relay that dies between dispatch and mark dispatches
//! again, and the listeners are idempotent).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use malaka_inventory::Alerts;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use malaka_db::Leader;

use super::hub::Hub;
use crate::config::LiveConfig;
use crate::db::Database;
use crate::db::DatabaseExt as _;

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
    pub(crate) deliveries: super::deliveries::Deliveries,
    /// Told when outbox events were written (in process, or by `NOTIFY` from other nodes).
    pub(crate) wake: Arc<Notify>,
    pub(crate) config: LiveConfig,
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
        self.db
            .leader_lock(RELAY_LOCK, self.config.poll_interval, stop)
            .await
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
            match outbox.publish_next(BATCH, seq).await {
                Ok(marks) if !marks.is_empty() => {
                    seq = marks.last().map_or(seq, |m| m.1);
                    metrics::counter!("malaka_outbox_published_total")
                        .increment(marks.len() as u64);
                    self.hub.wake();
                    self.deliveries.wake();
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    // Another relay took these numbers (two leaders for a moment), or the
                    // database failed: read where publication stands and go on; the events
                    // are dispatched again (listeners are idempotent).
                    tracing::warn!(error = %e, "outbox relay: publishing events failed; retrying");
                    metrics::counter!("malaka_outbox_mark_errors_total").increment(1);
                    tokio::select! {
                        () = stop.cancelled() => return false,
                        () = tokio::time::sleep(self.config.poll_interval.min(Duration::from_millis(50))) => {}
                    }
                    match outbox.last_seq().await {
                        Ok(s) => seq = s,
                        Err(_) => return true,
                    }
                    continue;
                }
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
        prune_outbox(&self.db, self.hub.outbox(), &self.deliveries, &self.config).await;
    }
}

/// Deletes published events older than the retention, but never one a durable reader (a
/// listener's cursor, the SQS publisher's position) has not passed: a reader lagging past the
/// retention keeps them, and a warning and `malaka_outbox_retention_held` say so. Returns
/// whether a reader held events back.
pub(crate) async fn prune_outbox(
    db: &Database,
    outbox: &malaka_inventory::Outbox,
    deliveries: &super::deliveries::Deliveries,
    config: &LiveConfig,
) -> bool {
    let Ok(keep) = chrono::Duration::from_std(config.outbox_retention) else {
        return false;
    };
    let before = Utc::now() - keep;
    let listeners = match deliveries.lowest_cursor().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "pruning the outbox: cannot read the listeners' positions");
            return false;
        }
    };
    let sqs = match db.meta(crate::sqs::CURSOR_KEY).await {
        Ok(v) => v.and_then(|v| v.parse::<i64>().ok()),
        Err(e) => {
            tracing::warn!(error = %e, "pruning the outbox: cannot read the SQS publisher's position");
            return false;
        }
    };
    let floor = [listeners, sqs].into_iter().flatten().min();
    // Is a reader holding back events the retention would delete?
    let held = match (floor, outbox.seq_published_before(before).await) {
        (Some(f), Ok(Some(old))) => old > f,
        _ => false,
    };
    metrics::gauge!("malaka_outbox_retention_held").set(f64::from(u8::from(held)));
    if held {
        tracing::warn!(
            position = floor,
            "a durable reader of the outbox (an event listener or the \
            SQS publisher) lags behind the retention; its events are kept until it catches up"
        );
    }
    loop {
        match outbox.prune(before, floor, 10_000).await {
            Ok(n) => {
                metrics::counter!("malaka_outbox_pruned_total").increment(n);
                if n < 10_000 {
                    return held;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "pruning the outbox failed");
                return held;
            }
        }
    }
}
