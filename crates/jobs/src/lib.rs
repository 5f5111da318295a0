//! A durable job queue for tokio services, on SQLite (one node) or PostgreSQL (many nodes).
//!
//! Jobs are rows: enqueued alone, in batches, or inside the caller's own transaction (the job
//! exists if and only if the transaction commits). Workers claim them in batches under a lease,
//! renew the lease by heartbeat while they run, and record outcomes in batches; every update of a
//! running job is fenced by its attempt number, so a late finisher of an attempt that was rescued
//! changes nothing. Failures retry with exponential backoff and jitter until `max_attempts`, then
//! the job is discarded with every attempt's error kept. Maintenance rescues expired leases,
//! prunes finished jobs, and runs cron entries exactly once per tick across nodes.
//!
//! ```no_run
//! use std::sync::Arc;
//! use malaka_jobs::{Job, JobContext, JobError, NewJob, Queue, QueueConfig, Registry, SqliteStorage, Worker, WorkerConfig};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Greet { name: String }
//! impl Job for Greet {
//!     const KIND: &'static str = "greet";
//!     async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
//!         println!("hello {}", self.name);
//!         Ok(())
//!     }
//! }
//!
//! # async fn demo(pool: sqlx::SqlitePool) -> Result<(), malaka_jobs::JobsError> {
//! malaka_jobs::sqlite::migrate(&pool).await?;
//! let storage = Arc::new(SqliteStorage::new(pool));
//! let queue = Queue::new(storage.clone());
//! queue.enqueue_job(&Greet { name: "Ada".into() }).await?;
//! let worker = Worker::start(storage, Registry::new().register::<Greet>(),
//!     WorkerConfig::default().queues(vec![QueueConfig::new("default", 8)])).await?;
//! // ... on shutdown:
//! worker.shutdown().await;
//! # Ok(()) }
//! ```

mod error;
mod job;
mod maintenance;
mod queue;
mod storage;
mod types;
mod worker;

pub use error::{JobError, JobsError};
pub use job::{Job, JobContext, JobOptions, Registry};
pub use maintenance::{CronEntry, Maintenance, MaintenanceConfig};
pub use queue::Queue;
pub use storage::Storage;
pub use storage::postgres::{self, PgStorage};
pub use storage::sqlite::{self, SqliteStorage};
pub use types::{
    AttemptError, DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, Enqueued, Finish, JobId, JobRecord,
    JobState, LeaseStatus, ListFilter, NewJob, Outcome, QueueStats, Wakeup,
};
pub use worker::{QueueConfig, Slot, Taker, Worker, WorkerConfig, WorkerReport};
