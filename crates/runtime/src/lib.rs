//! Zero-effort concurrency for tokio services: autoscaling worker pools, a typed event bus,
//! retry with backoff, circuit breakers, bounded pipelines, parallel and batch helpers, and
//! shutdown coordination. No I/O of its own, nothing about inventory.
//!
//! Every buffer here is bounded and nothing is dropped silently: a full queue either makes the
//! sender wait ([`WorkerPool::submit`], [`EventBus::dispatch_async`], [`Pipeline`] stages) or
//! returns an error that is counted ([`WorkerPool::try_submit`] → [`Error::Full`]). A panic in a
//! task or listener is caught, counted and reported; it never takes down a worker, another
//! listener or the caller.
//!
//! # The patterns
//!
//! ## A worker pool
//! ```
//! use malaka_runtime::{PoolConfig, WorkerPool};
//!
//! # #[tokio::main] async fn main() -> Result<(), malaka_runtime::Error> {
//! let pool = WorkerPool::new(PoolConfig::new("emails").min_workers(1).max_workers(8))?;
//! let mut handles = Vec::new();
//! for n in 0..100u64 {
//!     // Waits when 1000 tasks are already queued: backpressure, not loss.
//!     handles.push(pool.submit(async move { n * 2 }).await?);
//! }
//! let mut sum = 0;
//! for h in handles {
//!     sum += h.await?;
//! }
//! assert_eq!(sum, 9900);
//! println!("{:?}", pool.metrics());
//! pool.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Fan-out listeners
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use malaka_runtime::{Event, EventBus, PoolConfig, WorkerPool};
//!
//! # #[tokio::main] async fn main() -> Result<(), malaka_runtime::Error> {
//! let bus = EventBus::new(WorkerPool::new(PoolConfig::new("events"))?);
//! let mails = Arc::new(AtomicUsize::new(0));
//! let m = mails.clone();
//! bus.on::<String, _, _>("email", move |_| { let m = m.clone(); async move { m.fetch_add(1, Ordering::SeqCst); Ok(()) } });
//! bus.on::<String, _, _>("websocket", |_| async { Ok(()) });
//! bus.on::<String, _, _>("broken", |_| async { if true { panic!("bug in a listener") } Ok(()) });
//!
//! // Await every listener's outcome...
//! let report = bus.dispatch(Event::new("stock.low", "A-1".to_string())).await;
//! assert_eq!(report.failures().count(), 1);
//! // ...or hand the event to the pool and move on.
//! let pending = bus.dispatch_async(Event::new("stock.low", "A-2".to_string())).await?;
//! pending.await?;
//! assert_eq!(mails.load(Ordering::SeqCst), 2);
//! # Ok(()) }
//! ```
//!
//! ## A report generator capped at N concurrent reports
//! ```
//! use std::time::Duration;
//! use malaka_runtime::{PoolConfig, WorkerPool};
//!
//! # #[tokio::main] async fn main() -> Result<(), malaka_runtime::Error> {
//! // At most 2 reports run at once; the rest wait in the queue, in order.
//! let reports = WorkerPool::new(PoolConfig::new("reports").min_workers(0).max_workers(2).queue_size(100))?;
//! let mut pending = Vec::new();
//! for id in 0..5 {
//!     pending.push(reports.submit(async move {
//!         tokio::time::sleep(Duration::from_millis(5)).await; // generate...
//!         Ok::<_, String>(format!("report-{id}.csv"))
//!     }).await?);
//! }
//! for p in pending {
//!     assert!(p.await?.is_ok());
//! }
//! assert!(reports.metrics().workers <= 2);
//! # Ok(()) }
//! ```
//!
//! ## Retry with backoff
//! ```
//! use std::time::Duration;
//! use malaka_runtime::{retry, Failure, RetryPolicy};
//!
//! # #[tokio::main] async fn main() {
//! let policy = RetryPolicy::new(5).initial_delay(Duration::from_millis(1)).max_elapsed(Duration::from_secs(10));
//! let sent = retry(&policy, |attempt| async move {
//!     match attempt {
//!         1 | 2 => Err(Failure::Retryable("421 try again later")),
//!         _ => Ok("250 OK"),
//!     }
//! }).await;
//! assert_eq!(sent, Ok("250 OK"));
//! # }
//! ```
//!
//! ## Batch processing
//! ```
//! # #[tokio::main] async fn main() {
//! // 10,000 rows, written 500 at a time, 4 batches at once.
//! let rows: Vec<u32> = (0..10_000).collect();
//! let written = malaka_runtime::batch(rows, 500, 4, |chunk| async move { chunk.len() }).await;
//! assert_eq!(written.into_iter().map(Result::unwrap).sum::<usize>(), 10_000);
//! # }
//! ```
//!
//! The [`CircuitBreaker`], [`Pipeline`], [`Shutdown`] and [`Supervisor`] types carry their own
//! examples.

mod bus;
mod circuit;
mod error;
mod histogram;
mod parallel;
mod pipeline;
mod pool;
mod retry;
mod shutdown;
mod supervise;

pub use bus::{
    DeliveryError, DispatchReport, Event, EventBus, JsonEvent, Listener, ListenerError, ListenerId,
    ListenerOptions, ListenerOutcome, ListenerStats,
};
pub use circuit::{
    CallError, CircuitBreaker, CircuitConfig, CircuitMetrics, CircuitState, Permit, Transition,
};
pub use error::Error;
pub use parallel::{batch, parallel};
pub use pipeline::{Pipeline, PipelineError};
pub use pool::{PoolConfig, PoolMetrics, ShutdownReport, TaskHandle, TaskOutput, WorkerPool};
pub use retry::{Failure, Jitter, RetryError, RetryPolicy, retry, retry_if};
pub use shutdown::{CancellationToken, Shutdown};
pub use supervise::{
    Supervised, Supervisor, SupervisorConfig, TaskContext, TaskResult, TaskSpec, TaskState,
    TaskStatus,
};
