//! Live events: the outbox relay, the stock monitor that turns level changes into alerts, and
//! the WebSocket hub that tells connected clients. On PostgreSQL one node relays (and so raises
//! each alert once) while `LISTEN/NOTIFY` wakes every node's hub.

pub mod deliveries;
pub mod hub;
mod relay;
pub mod slots;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use hmac::{KeyInit, Mac};
use malaka_inventory::{Alerts, Inventory, LevelChange, Outbox, TOPIC_LEVEL_CHANGED};
use malaka_jobs::{JobState, Queue};
use malaka_runtime::{
    EventBus, ListenerError, ListenerOptions, RetryPolicy, Supervised, Supervisor, TaskSpec,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::LiveConfig;
use crate::db::DatabaseExt as _;
use crate::db::{Database, DbError};
pub use hub::{Hub, Message, Subscription};

/// Live events of one node.
#[derive(Debug)]
pub struct Live {
    hub: Hub,
    alerts: Alerts,
    db: Database,
    relay_wake: Arc<Notify>,
    deliveries: deliveries::Deliveries,
    /// Counted for every change another node announces (PostgreSQL `NOTIFY malaka_outbox`).
    remote_changes: Arc<std::sync::atomic::AtomicU64>,
    config: LiveConfig,
    /// WebSocket connections per token and per node.
    slots: slots::Slots,
    /// Signs WebSocket tickets; the same on every node of one database.
    ticket_key: Vec<u8>,
    tasks: Mutex<Vec<Supervised>>,
    stop: CancellationToken,
}

impl Live {
    /// The hub, alerts and relay of this node over `db` (nothing runs until [`Self::start`]).
    ///
    /// # Errors
    /// The outbox could not be read.
    pub async fn new(
        db: &Database,
        inventory: &Inventory,
        bus: &EventBus,
        remote_changes: Arc<std::sync::atomic::AtomicU64>,
        all: &crate::config::Config,
    ) -> Result<Self, DbError> {
        let config = &all.live;
        let pool = db.event_pool();
        let outbox = Outbox::new(pool.clone());
        let cursor = outbox.last_seq().await?;
        let fresh: [u8; 32] = rand::random();
        let key = db
            .meta_or_insert("ws_ticket_key", &URL_SAFE_NO_PAD.encode(fresh))
            .await?;
        Ok(Self {
            ticket_key: key.into_bytes(),
            hub: Hub::new(outbox, cursor, config.ws_buffer),
            // Every alert change enqueues its notifications in its own transaction.
            alerts: Alerts::new(pool).with_effects(Arc::new(malaka_notify::NotifyEffects {
                max_attempts: all.notify.max_attempts,
            })),
            db: db.clone(),
            relay_wake: inventory.outbox_written(),
            remote_changes,
            deliveries: deliveries::Deliveries::new(
                db,
                bus,
                deliveries::DeliveryConfig {
                    attempts: config.delivery_attempts,
                    backoff: config.delivery_backoff,
                    poll: config.poll_interval,
                },
                Arc::new(Notify::new()),
                inventory.outbox_written(),
            ),
            config: config.clone(),
            slots: slots::Slots::new(config.ws_max_per_token, config.ws_max_connections),
            tasks: Mutex::new(Vec::new()),
            stop: CancellationToken::new(),
        })
    }

    /// The WebSocket hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Stock alerts.
    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    /// Prunes the outbox now, as the relay does every minute when caught up: published events
    /// past `outbox_retention` that every durable reader has passed. Returns whether a reader
    /// lagging behind the retention held some back.
    pub async fn prune_outbox(&self) -> bool {
        relay::prune_outbox(&self.db, self.hub.outbox(), &self.deliveries, &self.config).await
    }

    /// Durable delivery to the bus's named listeners, and its failures.
    pub fn deliveries(&self) -> &deliveries::Deliveries {
        &self.deliveries
    }

    /// WebSocket connection slots.
    pub fn slots(&self) -> &slots::Slots {
        &self.slots
    }

    /// The configuration.
    pub fn config(&self) -> &LiveConfig {
        &self.config
    }

    /// A ticket for token `token_id`, good until `expires` (Unix seconds), signed so that any
    /// node of this database accepts it.
    pub fn ticket(&self, token_id: i64, expires: i64) -> String {
        let body = format!("v1.{token_id}.{expires}");
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(self.sign(&body)))
    }

    /// The token id of a ticket that is well-formed, correctly signed and not expired at `now`
    /// (Unix seconds).
    pub fn check_ticket(&self, ticket: &str, now: i64) -> Option<i64> {
        let (body, sig) = ticket.rsplit_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.ticket_key).ok()?;
        mac.update(body.as_bytes());
        mac.verify_slice(&sig).ok()?;
        let mut parts = body.split('.');
        let (Some("v1"), Some(id), Some(exp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let exp: i64 = exp.parse().ok()?;
        (exp >= now).then_some(())?;
        id.parse().ok()
    }

    fn sign(&self, body: &str) -> Vec<u8> {
        match hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.ticket_key) {
            Ok(mut mac) => {
                mac.update(body.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
            // HMAC takes keys of any length.
            Err(_) => Vec::new(),
        }
    }

    /// Cancelled when the node shuts down (WebSocket connections then close).
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Something wrote outbox events outside a posting (an acknowledgement): relay them now.
    pub fn events_written(&self) {
        self.relay_wake.notify_one();
    }

    /// Registers the stock monitor on `bus` and starts the relay, the hub and (on PostgreSQL)
    /// the listener that wakes them for other nodes' events; `jobs` feeds `job_update`. Each
    /// runs under `supervisor` (`live.relay`, `live.hub`, `live.job_updates`, `live.listener`).
    ///
    /// # Errors
    /// The listeners' positions could not be read or written.
    pub async fn start(
        &self,
        bus: &EventBus,
        jobs: &Queue,
        supervisor: &Supervisor,
    ) -> Result<(), DbError> {
        let (alerts, relay_wake) = (self.alerts.clone(), Arc::clone(&self.relay_wake));
        bus.on_named(
            TOPIC_LEVEL_CHANGED,
            "stock_monitor",
            ListenerOptions::default()
                .retry(
                    RetryPolicy::new(5)
                        .initial_delay(Duration::from_millis(20))
                        .max_delay(Duration::from_secs(1)),
                )
                .timeout(Duration::from_secs(10)),
            move |e| {
                let (alerts, relay_wake) = (alerts.clone(), Arc::clone(&relay_wake));
                async move {
                    let id = e.data["outbox_id"]
                        .as_i64()
                        .ok_or_else(|| ListenerError::permanent("no outbox_id"))?;
                    let change = LevelChange::from_payload(&e.data)
                        .map_err(|err| ListenerError::permanent(err.to_string()))?;
                    if let Some(c) = alerts.apply(id, &change).await? {
                        // Its `stock.alert` event is published now, not after the rest of
                        // the deliverer's round.
                        relay_wake.notify_one();
                        tracing::info!(sku = %c.alert.sku, warehouse = %c.alert.warehouse,
                            action = c.action.as_str(), level = c.alert.level.as_str(), "stock alert");
                    }
                    Ok(())
                }
            },
        );
        // Every listener known now starts where publication stands, before the relay runs.
        self.deliveries.ensure_cursors().await?;
        let relay = relay::Relay {
            db: self.db.clone(),
            hub: self.hub.clone(),
            alerts: self.alerts.clone(),
            deliveries: self.deliveries.clone(),
            wake: Arc::clone(&self.relay_wake),
            config: self.config.clone(),
        };
        let spec = |name: &str| TaskSpec::new(name).stop_on(self.stop.clone());
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        let stop = self.stop.clone();
        tasks.push(supervisor.spawn(spec("live.relay"), move |_| relay.clone().run(stop.clone())));
        let (hub, stop, every) = (
            self.hub.clone(),
            self.stop.clone(),
            self.config.poll_interval,
        );
        tasks.push(supervisor.spawn(spec("live.hub"), move |_| {
            hub.clone().run(stop.clone(), every)
        }));
        let (hub, jobs, stop) = (self.hub.clone(), jobs.clone(), self.stop.clone());
        tasks.push(supervisor.spawn(spec("live.job_updates"), move |_| {
            job_updates(hub.clone(), jobs.clone(), stop.clone())
        }));
        let (deliveries, stop) = (self.deliveries.clone(), self.stop.clone());
        tasks.push(supervisor.spawn(spec("live.deliveries"), move |task| {
            deliveries.clone().run(stop.clone(), task)
        }));
        if let Database::Postgres(pool) = &self.db {
            let (pool, wake, hub, deliveries, changes, stop) = (
                pool.clone(),
                Arc::clone(&self.relay_wake),
                self.hub.clone(),
                self.deliveries.clone(),
                Arc::clone(&self.remote_changes),
                self.stop.clone(),
            );
            tasks.push(supervisor.spawn(spec("live.listener"), move |_| {
                listen(
                    pool.clone(),
                    Arc::clone(&wake),
                    hub.clone(),
                    deliveries.clone(),
                    Arc::clone(&changes),
                    stop.clone(),
                )
            }));
        }
        Ok(())
    }

    /// Stops the relay and the hub (WebSocket connections end with the HTTP server).
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for t in tasks {
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                tracing::warn!("a live-events task did not stop within 5 s");
            }
        }
    }
}

/// Wakes this node's relay, hub and deliverer when another node writes or publishes events.
async fn listen(
    pool: sqlx::PgPool,
    relay: Arc<Notify>,
    hub: Hub,
    deliveries: deliveries::Deliveries,
    changes: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
) {
    let changed = || {
        changes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    };
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "live events: LISTEN connection failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if let Err(e) = listener.listen_all(["malaka_outbox", "malaka_live"]).await {
            tracing::warn!(error = %e, "live events: LISTEN failed; retrying");
            continue;
        }
        // Anything sent while not listening is picked up now.
        relay.notify_one();
        hub.wake();
        deliveries.wake();
        changed();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                n = listener.recv() => match n {
                    Ok(n) if n.channel() == "malaka_outbox" => {
                        // Written by a posting (or an alert) on some node: balances may differ.
                        changed();
                        relay.notify_one();
                    }
                    Ok(_) => {
                        hub.wake();
                        deliveries.wake();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "live events: LISTEN connection lost; reconnecting");
                        changed();
                        relay.notify_one();
                        hub.wake();
                        deliveries.wake();
                        break;
                    }
                },
            }
        }
    }
}

/// Sends a `job_update` snapshot (jobs per queue and state, oldest waiting job) whenever it
/// changes, looking once a second while any client is connected.
async fn job_updates(hub: Hub, jobs: Queue, stop: CancellationToken) {
    let mut last: Option<serde_json::Value> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if hub.clients() == 0 {
            continue;
        }
        let stats = match jobs.stats().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "job statistics unavailable for job_update");
                continue;
            }
        };
        let data = jobs_snapshot(&stats);
        if last.as_ref() != Some(&data) {
            hub.broadcast_snapshot(Message::new(None, "job_update", Utc::now(), &data));
            last = Some(data);
        }
    }
}

/// The data of a `job_update` and of `GET /api/v1/jobs/stats`.
pub fn jobs_snapshot(stats: &[malaka_jobs::QueueStats]) -> serde_json::Value {
    let queues: Vec<serde_json::Value> = stats
        .iter()
        .map(|s| {
            let counts: serde_json::Map<String, serde_json::Value> = JobState::ALL
                .iter()
                .map(|st| (st.as_str().to_owned(), s.count(*st).into()))
                .collect();
            serde_json::json!({
                "queue": s.queue,
                "counts": counts,
                "oldest_available_seconds": s.oldest_available_age.map(|d| d.as_secs_f64()),
            })
        })
        .collect();
    serde_json::json!({ "queues": queues })
}
