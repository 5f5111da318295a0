//! Typed event bus: listeners per event type (or per name, for JSON events from outside) run
//! concurrently and in isolation; each delivery's outcome is reported and counted.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, panic_message};
use crate::pool::{TaskHandle, TaskOutput, WorkerPool};
use crate::retry::RetryPolicy;

/// Something that happened, with its payload.
///
/// ```
/// use malaka_runtime::Event;
///
/// let e = Event::new("stock.level_changed", 42u32).with_source("ledger");
/// assert_eq!(e.name, "stock.level_changed");
/// assert_eq!(e.id.get_version_num(), 7);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event<T> {
    /// Unique and time-ordered (UUIDv7).
    pub id: Uuid,
    /// Dotted name, e.g. `movement.posted`.
    pub name: Cow<'static, str>,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// Who produced it.
    pub source: Cow<'static, str>,
    /// The payload.
    pub data: T,
}

impl<T> Event<T> {
    /// A new event happening now, from source `malaka`.
    pub fn new(name: impl Into<Cow<'static, str>>, data: T) -> Self {
        Self {
            id: Uuid::now_v7(),
            name: name.into(),
            occurred_at: Utc::now(),
            source: Cow::Borrowed("malaka"),
            data,
        }
    }
    /// Sets the source.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<Cow<'static, str>>) -> Self {
        self.source = source.into();
        self
    }
    /// Sets the id (for events that arrive with one).
    #[must_use]
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }
}

/// A JSON event from outside, routed by name.
pub type JsonEvent = Event<serde_json::Value>;

/// How a listener reports failure: retryable (the listener's retry policy applies) or permanent.
///
/// Any `std::error::Error` converts into a retryable one with `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerError {
    message: String,
    retryable: bool,
}

impl ListenerError {
    /// A failure worth retrying.
    pub fn retryable(message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            retryable: true,
        }
    }
    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            retryable: false,
        }
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Whether a retry could help.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl std::fmt::Display for ListenerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for ListenerError {
    fn from(e: E) -> Self {
        Self::retryable(e)
    }
}

/// A listener as a type, for listeners with state or several methods.
///
/// ```
/// use std::sync::Arc;
/// use malaka_runtime::{Event, Listener, ListenerError};
///
/// struct Audit;
/// impl Listener<String> for Audit {
///     fn name(&self) -> &str { "audit" }
///     async fn handle(&self, event: Arc<Event<String>>) -> Result<(), ListenerError> {
///         if event.data.is_empty() { return Err(ListenerError::permanent("empty")); }
///         Ok(())
///     }
/// }
/// ```
pub trait Listener<T>: Send + Sync + 'static {
    /// Name used in outcomes and metrics.
    fn name(&self) -> &str;
    /// Retry and timeout for this listener.
    fn options(&self) -> ListenerOptions {
        ListenerOptions::default()
    }
    /// Handles one event.
    fn handle(
        &self,
        event: Arc<Event<T>>,
    ) -> impl Future<Output = Result<(), ListenerError>> + Send;
}

/// Per-listener retry and time limit.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ListenerOptions {
    /// Retries for retryable failures (none by default).
    pub retry: Option<RetryPolicy>,
    /// Time limit per attempt (none by default).
    pub timeout: Option<Duration>,
}

impl ListenerOptions {
    /// Sets the retry policy.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }
    /// Sets the per-attempt time limit.
    #[must_use]
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
}

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The listener returned an error.
    #[error("listener failed: {0}")]
    Failed(String),
    /// The listener panicked.
    #[error("listener panicked: {0}")]
    Panicked(String),
    /// The listener ran past its time limit.
    #[error("listener timed out after {0:?}")]
    TimedOut(Duration),
}

/// One listener's outcome for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerOutcome {
    /// The listener's name.
    pub listener: Arc<str>,
    /// Attempts made (more than one when the listener retried).
    pub attempts: u32,
    /// What happened on the last attempt.
    pub result: Result<(), DeliveryError>,
}

/// Every listener's outcome for one dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchReport {
    /// The event's id.
    pub event_id: Uuid,
    /// One entry per listener, in registration order.
    pub outcomes: Vec<ListenerOutcome>,
}

impl DispatchReport {
    /// Whether every listener succeeded (true when there were none).
    pub fn all_ok(&self) -> bool {
        self.outcomes.iter().all(|o| o.result.is_ok())
    }
    /// The outcomes that failed.
    pub fn failures(&self) -> impl Iterator<Item = &ListenerOutcome> {
        self.outcomes.iter().filter(|o| o.result.is_err())
    }
}

impl TaskOutput for DispatchReport {
    fn is_failure(&self) -> bool {
        !self.all_ok()
    }
}

/// Counters for one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerStats {
    /// Listener id.
    pub id: ListenerId,
    /// Listener name.
    pub name: Arc<str>,
    /// Event type or name it listens to.
    pub topic: String,
    /// Events handed to it.
    pub delivered: u64,
    /// Deliveries that ended in failure (after retries).
    pub failed: u64,
    /// Deliveries that panicked.
    pub panicked: u64,
    /// Retries made.
    pub retries: u64,
}

/// Identifies a registration, for [`EventBus::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    retries: AtomicU64,
}

type Handler<T> =
    dyn Fn(Arc<Event<T>>) -> BoxFuture<'static, Result<(), ListenerError>> + Send + Sync;

struct Entry<T> {
    id: ListenerId,
    name: Arc<str>,
    handler: Box<Handler<T>>,
    options: ListenerOptions,
    counters: Counters,
}

type List<T> = Arc<Vec<Arc<Entry<T>>>>;

#[derive(Default)]
struct Registry {
    /// TypeId of `T` -> the `Vec<Arc<Entry<T>>>` for that `T`.
    typed: HashMap<TypeId, Arc<dyn ErasedList>>,
    /// Event name -> `List<serde_json::Value>`.
    named: HashMap<String, List<serde_json::Value>>,
    /// Listener id -> topic description, for stats and removal.
    topics: HashMap<ListenerId, Topic>,
}

#[derive(Clone)]
enum Topic {
    Typed(TypeId, &'static str),
    Named(String),
}

struct BusInner {
    registry: RwLock<Registry>,
    pool: WorkerPool,
    next_id: AtomicU64,
}

/// Fan-out of typed events to concurrent, isolated listeners.
///
/// ```
/// use std::sync::Arc;
/// use malaka_runtime::{Event, EventBus, ListenerError, PoolConfig, WorkerPool};
///
/// #[derive(Clone, Debug)]
/// struct LevelChanged { sku: String, level: &'static str }
///
/// # #[tokio::main] async fn main() -> Result<(), malaka_runtime::Error> {
/// let bus = EventBus::new(WorkerPool::new(PoolConfig::new("events"))?);
/// bus.on::<LevelChanged, _, _>("websocket", |e| async move {
///     println!("push {} is now {}", e.data.sku, e.data.level);
///     Ok(())
/// });
/// bus.on::<LevelChanged, _, _>("flaky", |_| async { Err(ListenerError::permanent("smtp down")) });
///
/// let report = bus.dispatch(Event::new("stock.level_changed", LevelChanged { sku: "A-1".into(), level: "LOW" })).await;
/// assert_eq!(report.outcomes.len(), 2);
/// assert_eq!(report.failures().count(), 1); // the other listener was not affected
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("pool", &self.inner.pool.name())
            .finish_non_exhaustive()
    }
}

impl EventBus {
    /// A bus whose `dispatch_async` runs on `pool`.
    pub fn new(pool: WorkerPool) -> Self {
        Self {
            inner: Arc::new(BusInner {
                registry: RwLock::new(Registry::default()),
                pool,
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// The pool behind `dispatch_async`.
    pub fn pool(&self) -> &WorkerPool {
        &self.inner.pool
    }

    fn next_id(&self) -> ListenerId {
        ListenerId(self.inner.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        // A panic while holding the lock cannot leave the registry half-written (every write is a
        // single insert), so a poisoned lock is safe to use.
        self.inner
            .registry
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.inner
            .registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a closure for events of type `T`.
    pub fn on<T, F, Fut>(&self, name: &str, f: F) -> ListenerId
    where
        T: Send + Sync + 'static,
        F: Fn(Arc<Event<T>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ListenerError>> + Send + 'static,
    {
        self.on_with(name, ListenerOptions::default(), f)
    }

    /// Registers a closure for events of type `T`, with retry and timeout options.
    pub fn on_with<T, F, Fut>(&self, name: &str, options: ListenerOptions, f: F) -> ListenerId
    where
        T: Send + Sync + 'static,
        F: Fn(Arc<Event<T>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ListenerError>> + Send + 'static,
    {
        let handler: Box<Handler<T>> = Box::new(move |e| Box::pin(f(e)));
        self.add_typed(name, options, handler)
    }

    /// Registers a [`Listener`] for events of type `T`.
    pub fn subscribe<T, L>(&self, listener: L) -> ListenerId
    where
        T: Send + Sync + 'static,
        L: Listener<T>,
    {
        let listener = Arc::new(listener);
        let name = listener.name().to_owned();
        let options = listener.options();
        let handler: Box<Handler<T>> = Box::new(move |e| {
            let l = Arc::clone(&listener);
            Box::pin(async move { l.handle(e).await })
        });
        self.add_typed(&name, options, handler)
    }

    fn add_typed<T: Send + Sync + 'static>(
        &self,
        name: &str,
        options: ListenerOptions,
        handler: Box<Handler<T>>,
    ) -> ListenerId {
        let id = self.next_id();
        let entry = Arc::new(Entry {
            id,
            name: Arc::from(name),
            handler,
            options,
            counters: Counters::default(),
        });
        let mut reg = self.write();
        let key = TypeId::of::<T>();
        let mut list: Vec<Arc<Entry<T>>> = reg
            .typed
            .get(&key)
            .and_then(|l| l.as_any().downcast_ref::<Vec<Arc<Entry<T>>>>())
            .cloned()
            .unwrap_or_default();
        list.push(entry);
        reg.typed.insert(key, Arc::new(list));
        reg.topics
            .insert(id, Topic::Typed(key, std::any::type_name::<T>()));
        id
    }

    /// Registers a closure for JSON events with this `event_name` (events from outside, e.g. SQS).
    pub fn on_named<F, Fut>(
        &self,
        event_name: &str,
        listener_name: &str,
        options: ListenerOptions,
        f: F,
    ) -> ListenerId
    where
        F: Fn(Arc<JsonEvent>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ListenerError>> + Send + 'static,
    {
        let id = self.next_id();
        let handler: Box<Handler<serde_json::Value>> = Box::new(move |e| Box::pin(f(e)));
        let entry = Arc::new(Entry {
            id,
            name: Arc::from(listener_name),
            handler,
            options,
            counters: Counters::default(),
        });
        let mut reg = self.write();
        let mut list: Vec<_> = reg
            .named
            .get(event_name)
            .map(|l| l.as_ref().clone())
            .unwrap_or_default();
        list.push(entry);
        reg.named.insert(event_name.to_owned(), Arc::new(list));
        reg.topics.insert(id, Topic::Named(event_name.to_owned()));
        id
    }

    /// Removes a listener; returns whether it was registered. Deliveries already started finish.
    pub fn remove(&self, id: ListenerId) -> bool {
        let mut reg = self.write();
        let Some(topic) = reg.topics.remove(&id) else {
            return false;
        };
        match topic {
            Topic::Named(name) => {
                if let Some(list) = reg.named.get(&name) {
                    let kept: Vec<_> = list.iter().filter(|e| e.id != id).cloned().collect();
                    reg.named.insert(name, Arc::new(kept));
                }
            }
            Topic::Typed(key, _) => {
                // The element type is unknown here; the list knows how to filter itself.
                if let Some(list) = reg.typed.get(&key) {
                    let kept = list.without(id);
                    reg.typed.insert(key, kept);
                }
            }
        }
        true
    }

    fn typed_list<T: Send + Sync + 'static>(&self) -> Option<Arc<dyn ErasedList>> {
        self.read().typed.get(&TypeId::of::<T>()).cloned()
    }

    /// Delivers `event` to every listener of its type, concurrently, and returns each outcome.
    ///
    /// A listener that fails, panics or times out affects neither the others nor the caller.
    pub async fn dispatch<T: Send + Sync + 'static>(&self, event: Event<T>) -> DispatchReport {
        let event_id = event.id;
        let Some(erased) = self.typed_list::<T>() else {
            return DispatchReport {
                event_id,
                outcomes: Vec::new(),
            };
        };
        let Some(list) = erased.as_any().downcast_ref::<Vec<Arc<Entry<T>>>>() else {
            return DispatchReport {
                event_id,
                outcomes: Vec::new(),
            };
        };
        deliver_all(list, Arc::new(event)).await
    }

    /// Delivers a JSON event to the listeners registered for its name.
    pub async fn dispatch_named(&self, event: JsonEvent) -> DispatchReport {
        let list = self.read().named.get(event.name.as_ref()).cloned();
        match list {
            Some(list) => deliver_all(&list, Arc::new(event)).await,
            None => DispatchReport {
                event_id: event.id,
                outcomes: Vec::new(),
            },
        }
    }

    /// Delivers a JSON event to the listeners named `listener` registered for its name only (a
    /// redelivery to one listener that failed it).
    pub async fn dispatch_named_to(&self, event: JsonEvent, listener: &str) -> DispatchReport {
        let list = self.read().named.get(event.name.as_ref()).cloned();
        let chosen: Vec<_> = list
            .map(|l| {
                l.iter()
                    .filter(|e| e.name.as_ref() == listener)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        deliver_all(&chosen, Arc::new(event)).await
    }

    /// The named listeners: (listener name, event names it is registered for), by name.
    pub fn named_listeners(&self) -> Vec<(String, Vec<String>)> {
        let reg = self.read();
        let mut out: std::collections::BTreeMap<String, Vec<String>> =
            std::collections::BTreeMap::new();
        for (event, list) in &reg.named {
            for e in list.iter() {
                out.entry(e.name.to_string())
                    .or_default()
                    .push(event.clone());
            }
        }
        out.into_iter()
            .map(|(name, mut events)| {
                events.sort();
                events.dedup();
                (name, events)
            })
            .collect()
    }

    /// Hands `event` to the bus's pool and returns once it is queued (waiting for room, never
    /// dropping it). Await the handle for the report, or drop it to detach.
    ///
    /// # Errors
    /// [`Error::Closed`] once the pool is shut down.
    pub async fn dispatch_async<T: Send + Sync + 'static>(
        &self,
        event: Event<T>,
    ) -> Result<TaskHandle<DispatchReport>, Error> {
        let bus = self.clone();
        self.inner
            .pool
            .submit(async move { bus.dispatch(event).await })
            .await
    }

    /// Like [`Self::dispatch_async`] for JSON events routed by name.
    ///
    /// # Errors
    /// [`Error::Closed`] once the pool is shut down.
    pub async fn dispatch_named_async(
        &self,
        event: JsonEvent,
    ) -> Result<TaskHandle<DispatchReport>, Error> {
        let bus = self.clone();
        self.inner
            .pool
            .submit(async move { bus.dispatch_named(event).await })
            .await
    }

    /// Counters for every registered listener.
    pub fn stats(&self) -> Vec<ListenerStats> {
        let reg = self.read();
        let mut out = Vec::new();
        for (id, topic) in &reg.topics {
            let stats = match topic {
                Topic::Named(name) => reg
                    .named
                    .get(name)
                    .and_then(|l| l.iter().find(|e| e.id == *id))
                    .map(|e| stats_of(e, name.clone())),
                Topic::Typed(key, type_name) => {
                    reg.typed.get(key).and_then(|l| l.stats(*id, type_name))
                }
            };
            out.extend(stats);
        }
        out.sort_by_key(|s| s.id.0);
        out
    }
}

fn stats_of<T>(e: &Entry<T>, topic: String) -> ListenerStats {
    ListenerStats {
        id: e.id,
        name: Arc::clone(&e.name),
        topic,
        delivered: e.counters.delivered.load(Ordering::Relaxed),
        failed: e.counters.failed.load(Ordering::Relaxed),
        panicked: e.counters.panicked.load(Ordering::Relaxed),
        retries: e.counters.retries.load(Ordering::Relaxed),
    }
}

/// A `Vec<Arc<Entry<T>>>` whose `T` is not known at the call site.
trait ErasedList: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn without(&self, id: ListenerId) -> Arc<dyn ErasedList>;
    fn stats(&self, id: ListenerId, topic: &str) -> Option<ListenerStats>;
}

impl<T: Send + Sync + 'static> ErasedList for Vec<Arc<Entry<T>>> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn without(&self, id: ListenerId) -> Arc<dyn ErasedList> {
        let kept: Vec<Arc<Entry<T>>> = self.iter().filter(|e| e.id != id).cloned().collect();
        Arc::new(kept)
    }
    fn stats(&self, id: ListenerId, topic: &str) -> Option<ListenerStats> {
        self.iter()
            .find(|e| e.id == id)
            .map(|e| stats_of(e, topic.to_owned()))
    }
}

async fn deliver_all<T: Send + Sync + 'static>(
    list: &[Arc<Entry<T>>],
    event: Arc<Event<T>>,
) -> DispatchReport {
    let event_id = event.id;
    let outcomes = join_all(list.iter().map(|entry| deliver(entry, Arc::clone(&event)))).await;
    DispatchReport { event_id, outcomes }
}

/// One try: `Err((error, retryable))` on failure.
async fn attempt<T>(entry: &Entry<T>, event: Arc<Event<T>>) -> Result<(), (DeliveryError, bool)> {
    // The handler itself may panic before it returns a future.
    let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| (entry.handler)(event))) {
        Ok(fut) => fut,
        Err(p) => return Err((DeliveryError::Panicked(panic_message(p.as_ref())), false)),
    };
    let fut = AssertUnwindSafe(fut).catch_unwind();
    let out = match entry.options.timeout {
        None => fut.await,
        Some(limit) => match tokio::time::timeout(limit, fut).await {
            Ok(out) => out,
            Err(_) => return Err((DeliveryError::TimedOut(limit), true)),
        },
    };
    match out {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err((DeliveryError::Failed(e.message), e.retryable)),
        Err(p) => Err((DeliveryError::Panicked(panic_message(p.as_ref())), false)),
    }
}

async fn deliver<T>(entry: &Entry<T>, event: Arc<Event<T>>) -> ListenerOutcome {
    entry.counters.delivered.fetch_add(1, Ordering::Relaxed);
    let max_attempts = entry
        .options
        .retry
        .as_ref()
        .map_or(1, |p| p.max_attempts.max(1));
    let mut attempts = 1;
    let result = loop {
        match attempt(entry, Arc::clone(&event)).await {
            Ok(()) => break Ok(()),
            Err((e, retryable)) => {
                if !retryable || attempts >= max_attempts {
                    break Err(e);
                }
            }
        }
        if let Some(policy) = &entry.options.retry {
            tokio::time::sleep(policy.backoff(attempts)).await;
        }
        entry.counters.retries.fetch_add(1, Ordering::Relaxed);
        attempts += 1;
    };
    if let Err(e) = &result {
        entry.counters.failed.fetch_add(1, Ordering::Relaxed);
        if matches!(e, DeliveryError::Panicked(_)) {
            entry.counters.panicked.fetch_add(1, Ordering::Relaxed);
            tracing::error!(listener = %entry.name, error = %e, "listener panicked");
        } else {
            tracing::warn!(listener = %entry.name, error = %e, attempts, "listener failed");
        }
    }
    ListenerOutcome {
        listener: Arc::clone(&entry.name),
        attempts,
        result,
    }
}
