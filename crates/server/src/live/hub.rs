//! The WebSocket hub of one node: every published event, in publication order, to every
//! connected client whose subscription wants it. Each client has a bounded buffer; the hub never
//! waits for a client, and a client whose buffer is full is closed as lagged (it resumes with
//! `since`), so no client is skipped silently and none slows the others.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use malaka_inventory::{Outbox, Published, TOPIC_ALERT, TOPIC_MOVEMENT_POSTED};
use serde::Deserialize;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub use malaka_inventory::topics::TOPIC_REPORT_READY;

/// Message types a client can subscribe to.
pub const TYPES: [&str; 4] = ["stock_alert", "stock_changed", "job_update", "report_ready"];

/// One server message: `{"id", "type", "ts", "data"}`, serialized once for every client.
#[derive(Debug)]
pub struct Message {
    /// The event's publication number (`None` for snapshots such as `job_update`).
    pub id: Option<i64>,
    /// `stock_alert`, `stock_changed`, `job_update`, `report_ready`, `resync`, `subscribed`.
    pub kind: &'static str,
    /// The articles it is about (empty: not about articles).
    pub skus: Vec<String>,
    /// The warehouses it is about.
    pub warehouses: Vec<String>,
    /// The JSON text sent.
    pub json: String,
}

impl Message {
    /// A message of `kind` at `ts` carrying `data`.
    pub fn new(
        id: Option<i64>,
        kind: &'static str,
        ts: DateTime<Utc>,
        data: &serde_json::Value,
    ) -> Self {
        let json = serde_json::json!({"id": id, "type": kind, "ts": ts, "data": data}).to_string();
        Self {
            id,
            kind,
            skus: Vec::new(),
            warehouses: Vec::new(),
            json,
        }
    }

    fn about(mut self, skus: Vec<String>, warehouses: Vec<String>) -> Self {
        self.skus = skus;
        self.warehouses = warehouses;
        self
    }

    /// The client message for a published event, if clients see events of its topic.
    pub fn of_event(p: &Published) -> Option<Self> {
        let e = &p.event;
        let s = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        let m = match e.topic.as_str() {
            TOPIC_MOVEMENT_POSTED => {
                let skus = s(&e.payload["sku"]).into_iter().collect();
                let whs = [&e.payload["warehouse"], &e.payload["to_warehouse"]]
                    .into_iter()
                    .filter_map(s)
                    .collect();
                Self::new(Some(p.seq), "stock_changed", e.created_at, &e.payload).about(skus, whs)
            }
            TOPIC_ALERT => {
                let a = &e.payload["alert"];
                Self::new(Some(p.seq), "stock_alert", e.created_at, &e.payload).about(
                    s(&a["sku"]).into_iter().collect(),
                    s(&a["warehouse"]).into_iter().collect(),
                )
            }
            TOPIC_REPORT_READY => Self::new(Some(p.seq), "report_ready", e.created_at, &e.payload),
            _ => return None,
        };
        Some(m)
    }
}

/// What a client wants; an empty list means "all".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Articles.
    #[serde(default)]
    pub skus: HashSet<String>,
    /// Warehouses.
    #[serde(default)]
    pub warehouses: HashSet<String>,
    /// Message types (see [`TYPES`]).
    #[serde(default)]
    pub types: HashSet<String>,
}

impl Subscription {
    /// Whether `m` is for this client. A filter on articles or warehouses passes messages that
    /// are about none (a `job_update`, a `report_ready`).
    pub fn wants(&self, m: &Message) -> bool {
        let any = |want: &HashSet<String>, have: &[String]| {
            want.is_empty() || have.is_empty() || have.iter().any(|h| want.contains(h))
        };
        (self.types.is_empty() || self.types.contains(m.kind))
            && any(&self.skus, &m.skus)
            && any(&self.warehouses, &m.warehouses)
    }

    /// An unknown message type, if the subscription names one.
    pub fn unknown_type(&self) -> Option<&str> {
        self.types
            .iter()
            .map(String::as_str)
            .find(|t| !TYPES.contains(t))
    }
}

struct Client {
    tx: mpsc::Sender<Arc<Message>>,
    subscription: Arc<RwLock<Subscription>>,
    lagged: CancellationToken,
}

/// A registered client's end: its messages, its subscription, and the signal that it lagged.
#[derive(Debug)]
pub struct ClientHandle {
    /// Its id in the hub.
    pub id: u64,
    /// The hub's position when it registered: every later message arrives on `rx`.
    pub cursor: i64,
    /// Messages for it.
    pub rx: mpsc::Receiver<Arc<Message>>,
    /// Shared with the hub, which filters by it.
    pub subscription: Arc<RwLock<Subscription>>,
    /// Cancelled when its buffer overflowed: it must be closed as lagged.
    pub lagged: CancellationToken,
}

struct State {
    /// The last publication number handed to clients.
    cursor: i64,
    clients: HashMap<u64, Client>,
    /// The latest `job_update`, for clients that connect later.
    snapshot: Option<Arc<Message>>,
}

struct Inner {
    outbox: Outbox,
    state: Mutex<State>,
    wake: Notify,
    buffer: usize,
    next_id: AtomicU64,
}

/// One node's WebSocket hub. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("clients", &self.clients())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    /// A hub reading `outbox`, starting after `cursor` (the newest publication when it starts),
    /// with `buffer` messages of room per client.
    pub fn new(outbox: Outbox, cursor: i64, buffer: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                outbox,
                state: Mutex::new(State {
                    cursor,
                    clients: HashMap::new(),
                    snapshot: None,
                }),
                wake: Notify::new(),
                buffer: buffer.max(1),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// The outbox it reads.
    pub fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    /// New events have been published: look now.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Clients connected.
    pub fn clients(&self) -> usize {
        lock(&self.inner.state).clients.len()
    }

    /// The last publication number handed to clients.
    pub fn cursor(&self) -> i64 {
        lock(&self.inner.state).cursor
    }

    /// Registers a client with `subscription`; it receives every message after the returned
    /// cursor (and the latest `job_update` snapshot, if it wants one).
    pub fn register(&self, subscription: Subscription) -> ClientHandle {
        let (tx, rx) = mpsc::channel(self.inner.buffer);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let lagged = CancellationToken::new();
        let mut st = lock(&self.inner.state);
        // The snapshot goes only to a client that wants it, as every later one does.
        if let Some(snap) = &st.snapshot
            && subscription.wants(snap)
            && tx.try_send(Arc::clone(snap)).is_err()
        {
            lagged.cancel();
        }
        let subscription = Arc::new(RwLock::new(subscription));
        st.clients.insert(
            id,
            Client {
                tx,
                subscription: Arc::clone(&subscription),
                lagged: lagged.clone(),
            },
        );
        metrics::gauge!("malaka_ws_clients").set(st.clients.len() as f64);
        ClientHandle {
            id,
            cursor: st.cursor,
            rx,
            subscription,
            lagged,
        }
    }

    /// Forgets client `id`.
    pub fn unregister(&self, id: u64) {
        let mut st = lock(&self.inner.state);
        st.clients.remove(&id);
        metrics::gauge!("malaka_ws_clients").set(st.clients.len() as f64);
    }

    /// Hands `m` to every client that wants it; a client without room is marked lagged and
    /// dropped from the hub (its connection closes it, counted).
    fn deliver(st: &mut State, m: &Arc<Message>) {
        st.clients.retain(|id, c| {
            let wants = c
                .subscription
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .wants(m);
            if !wants {
                return true;
            }
            match c.tx.try_send(Arc::clone(m)) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(client = id, "WebSocket client lagged behind; closing it");
                    metrics::counter!("malaka_ws_lagged_total").increment(1);
                    c.lagged.cancel();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        metrics::gauge!("malaka_ws_clients").set(st.clients.len() as f64);
    }

    /// Sends a snapshot message (not from the outbox) to every client, and keeps it for those
    /// that connect later.
    pub fn broadcast_snapshot(&self, m: Message) {
        let m = Arc::new(m);
        let mut st = lock(&self.inner.state);
        st.snapshot = Some(Arc::clone(&m));
        Self::deliver(&mut st, &m);
    }

    /// Hands newly published events to the clients until `stop`: on every wake-up, and every
    /// `poll` in case one was missed.
    pub async fn run(self, stop: CancellationToken, poll: Duration) {
        const PAGE: u32 = 500;
        loop {
            let cursor = self.cursor();
            match self.inner.outbox.published_after(cursor, PAGE).await {
                Ok(rows) if !rows.is_empty() => {
                    let full = rows.len() == PAGE as usize;
                    let messages: Vec<(i64, Option<Arc<Message>>)> = rows
                        .iter()
                        .map(|p| (p.seq, Message::of_event(p).map(Arc::new)))
                        .collect();
                    // In chunks, yielding between them: clients drain their buffers while a
                    // burst is handed out, so only a client that truly falls behind lags.
                    for chunk in messages.chunks(64) {
                        {
                            let mut st = lock(&self.inner.state);
                            for (seq, m) in chunk {
                                // A published event is never handed on twice.
                                if *seq <= st.cursor {
                                    continue;
                                }
                                st.cursor = *seq;
                                if let Some(m) = m {
                                    Self::deliver(&mut st, m);
                                }
                            }
                        }
                        tokio::task::yield_now().await;
                    }
                    metrics::counter!("malaka_ws_events_total").increment(messages.len() as u64);
                    if full {
                        continue;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading published events failed; retrying");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: &'static str, skus: &[&str], whs: &[&str]) -> Message {
        Message::new(Some(1), kind, Utc::now(), &serde_json::json!({})).about(
            skus.iter().map(|s| (*s).to_owned()).collect(),
            whs.iter().map(|s| (*s).to_owned()).collect(),
        )
    }

    fn sub(skus: &[&str], whs: &[&str], types: &[&str]) -> Subscription {
        Subscription {
            skus: skus.iter().map(|s| (*s).to_owned()).collect(),
            warehouses: whs.iter().map(|s| (*s).to_owned()).collect(),
            types: types.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn subscriptions_filter_by_article_warehouse_and_type() {
        let all = Subscription::default();
        assert!(all.wants(&msg("stock_alert", &["A"], &["W"])));
        let a = sub(&["A"], &[], &[]);
        assert!(a.wants(&msg("stock_changed", &["A"], &["W"])));
        assert!(!a.wants(&msg("stock_changed", &["B"], &["W"])));
        assert!(a.wants(&msg("job_update", &[], &[])), "not about articles");
        let w = sub(&[], &["X"], &["stock_alert"]);
        assert!(w.wants(&msg("stock_alert", &["A"], &["W", "X"])));
        assert!(!w.wants(&msg("stock_changed", &["A"], &["X"])));
        assert!(!w.wants(&msg("stock_alert", &["A"], &["W"])));
        assert_eq!(sub(&[], &[], &["nope"]).unknown_type(), Some("nope"));
        assert_eq!(w.unknown_type(), None);
    }

    #[tokio::test]
    async fn the_snapshot_goes_only_to_clients_that_want_it() {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .connect_lazy("sqlite::memory:")
            .unwrap();
        let hub = Hub::new(Outbox::new(malaka_db::Database::Sqlite(pool)), 0, 8);
        hub.broadcast_snapshot(msg("job_update", &[], &[]));
        let mut alerts = hub.register(sub(&[], &[], &["stock_alert"]));
        assert!(
            alerts.rx.try_recv().is_err(),
            "not subscribed to job_update"
        );
        let mut everything = hub.register(Subscription::default());
        assert_eq!(everything.rx.try_recv().unwrap().kind, "job_update");
        let mut by_sku = hub.register(sub(&["A"], &[], &[]));
        assert_eq!(by_sku.rx.try_recv().unwrap().kind, "job_update");
    }
}
