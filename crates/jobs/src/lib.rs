//! Durable job queue for tokio services (placeholder: the queue arrives with the job-queue issue).
//!
//! It will hold the `Job` trait, the `Queue` (enqueue, enqueue inside a caller's transaction,
//! schedule, cancel, retry), SQLite and PostgreSQL storage, workers on `malaka-runtime` pools,
//! cron and maintenance. It knows nothing about inventory.
