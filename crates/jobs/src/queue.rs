//! The client side of the queue: enqueue (alone, many at once, or inside a caller's transaction),
//! inspect, cancel and retry.

use std::sync::Arc;

use crate::error::JobsError;
use crate::job::Job;
use crate::storage::Storage;
use crate::types::{Enqueued, JobId, JobRecord, ListFilter, NewJob, QueueStats};

/// A handle on the jobs table; cheap to clone.
///
/// ```no_run
/// use std::sync::Arc;
/// use malaka_jobs::{NewJob, Queue, SqliteStorage};
///
/// # async fn demo(pool: sqlx::SqlitePool) -> Result<(), malaka_jobs::JobsError> {
/// malaka_jobs::sqlite::migrate(&pool).await?;
/// let queue = Queue::new(Arc::new(SqliteStorage::new(pool)));
/// let job = queue.enqueue(NewJob::new("email.send", serde_json::json!({"to": "a@b.c"}))).await?;
/// println!("{:?}", queue.get(job.id).await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Queue {
    storage: Arc<dyn Storage>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("backend", &self.storage.backend())
            .finish()
    }
}

impl Queue {
    /// A queue over `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self { storage }
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Enqueues one job (or returns the unfinished job holding its unique key).
    ///
    /// # Errors
    /// Invalid fields or a database error.
    pub async fn enqueue(&self, job: NewJob) -> Result<Enqueued, JobsError> {
        let (queue, kind) = (job.queue.clone(), job.kind.clone());
        let out = self.storage.enqueue(job).await?;
        if !out.duplicate {
            metrics::counter!("malaka_jobs_enqueued_total", "queue" => queue, "kind" => kind)
                .increment(1);
        }
        Ok(out)
    }

    /// Enqueues a typed job with its kind's defaults.
    ///
    /// # Errors
    /// Invalid fields or a database error.
    pub async fn enqueue_job<J: Job>(&self, job: &J) -> Result<Enqueued, JobsError> {
        self.enqueue(NewJob::from_job(job)?).await
    }

    /// Enqueues many jobs in one statement; returns the new ids in input order.
    ///
    /// # Errors
    /// Invalid fields or a database error; then no job is enqueued.
    pub async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<JobId>, JobsError> {
        let mut counts = std::collections::HashMap::<(String, String), u64>::new();
        for j in &jobs {
            *counts.entry((j.queue.clone(), j.kind.clone())).or_default() += 1;
        }
        let ids = self.storage.enqueue_many(jobs).await?;
        for ((queue, kind), n) in counts {
            metrics::counter!("malaka_jobs_enqueued_total", "queue" => queue, "kind" => kind)
                .increment(n);
        }
        Ok(ids)
    }

    /// One job.
    ///
    /// # Errors
    /// A database error.
    pub async fn get(&self, id: JobId) -> Result<Option<JobRecord>, JobsError> {
        self.storage.get(id).await
    }

    /// Jobs matching `filter`, newest first.
    ///
    /// # Errors
    /// A database error.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>, JobsError> {
        self.storage.list(filter).await
    }

    /// Per-queue counts and the oldest available job's age.
    ///
    /// # Errors
    /// A database error.
    pub async fn stats(&self) -> Result<Vec<QueueStats>, JobsError> {
        self.storage.stats().await
    }

    /// Cancels a job; a running job sees it through its context and ends `cancelled`.
    ///
    /// # Errors
    /// [`JobsError::NotFound`], [`JobsError::WrongState`] for a finished job, or a database error.
    pub async fn cancel(&self, id: JobId) -> Result<JobRecord, JobsError> {
        self.storage.cancel(id).await
    }

    /// Runs a discarded, cancelled, retryable or scheduled job again, now.
    ///
    /// # Errors
    /// [`JobsError::NotFound`], [`JobsError::WrongState`], or a database error.
    pub async fn retry(&self, id: JobId) -> Result<JobRecord, JobsError> {
        self.storage.retry(id).await
    }
}
