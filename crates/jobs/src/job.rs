//! The `Job` trait, per-kind options, the context a running job sees, and the registry that maps
//! kinds to handlers.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use malaka_runtime::RetryPolicy;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::error::{JobError, JobsError};
use crate::types::{DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, JobId, JobRecord, NewJob};

/// Defaults for every job of a kind.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JobOptions {
    /// Queue (default `default`).
    pub queue: String,
    /// Lower runs first (default 0).
    pub priority: i16,
    /// Attempts allowed (default 20).
    pub max_attempts: i32,
    /// Longest one attempt may run before it fails as retryable (default 15 minutes).
    pub timeout: Duration,
    /// Delay before attempt n+1 (default: 1 s doubling to 1 hour, full jitter).
    pub backoff: RetryPolicy,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            queue: DEFAULT_QUEUE.to_owned(),
            priority: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: Duration::from_secs(15 * 60),
            backoff: RetryPolicy::new(u32::MAX)
                .initial_delay(Duration::from_secs(1))
                .max_delay(Duration::from_secs(3600)),
        }
    }
}

impl JobOptions {
    /// Sets the queue.
    #[must_use]
    pub fn queue(mut self, q: impl Into<String>) -> Self {
        self.queue = q.into();
        self
    }
    /// Sets the priority.
    #[must_use]
    pub fn priority(mut self, p: i16) -> Self {
        self.priority = p;
        self
    }
    /// Sets the attempts allowed.
    #[must_use]
    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
    /// Sets the per-attempt timeout.
    #[must_use]
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
    /// Sets the backoff between attempts.
    #[must_use]
    pub fn backoff(mut self, p: RetryPolicy) -> Self {
        self.backoff = p;
        self
    }
}

/// What a running job knows about itself, and how it learns it should stop.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// Job id.
    pub id: JobId,
    /// Kind.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// This attempt (1-based).
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    cancel: CancellationToken,
}

impl JobContext {
    pub(crate) fn new(job: &JobRecord, cancel: CancellationToken) -> Self {
        Self {
            id: job.id,
            kind: job.kind.clone(),
            queue: job.queue.clone(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            cancel,
        }
    }

    /// A context for calling a handler directly (tests, tools).
    pub fn detached(id: JobId, kind: &str) -> Self {
        Self {
            id,
            kind: kind.to_owned(),
            queue: DEFAULT_QUEUE.to_owned(),
            attempt: 1,
            max_attempts: 1,
            cancel: CancellationToken::new(),
        }
    }

    /// Whether the job should stop: it was cancelled, its lease was lost, or the worker is
    /// shutting down past its drain time.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the job should stop.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }
}

/// A kind of job: its payload is `Self`.
///
/// ```
/// use malaka_jobs::{Job, JobContext, JobError, JobOptions};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendEmail { to: String }
///
/// impl Job for SendEmail {
///     const KIND: &'static str = "email.send";
///     fn options() -> JobOptions { JobOptions::default().queue("notifications").max_attempts(8) }
///     async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
///         if !self.to.contains('@') { return Err(JobError::permanent("no @ in address")); }
///         if ctx.is_cancelled() { return Ok(()); }
///         Ok(())
///     }
/// }
/// let job = malaka_jobs::NewJob::from_job(&SendEmail { to: "a@b.c".into() }).unwrap();
/// assert_eq!(job.queue, "notifications");
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The kind name stored with each job.
    const KIND: &'static str;
    /// Defaults for this kind.
    fn options() -> JobOptions {
        JobOptions::default()
    }
    /// Does the work.
    fn run(&self, ctx: &JobContext) -> impl Future<Output = Result<(), JobError>> + Send;
}

impl NewJob {
    /// A new job from a typed payload, with its kind's defaults.
    ///
    /// # Errors
    /// The payload does not serialize to JSON.
    pub fn from_job<J: Job>(job: &J) -> Result<Self, JobsError> {
        let o = J::options();
        Ok(Self::new(J::KIND, serde_json::to_value(job)?)
            .queue(o.queue)
            .priority(o.priority)
            .max_attempts(o.max_attempts))
    }
}

type HandlerFn =
    dyn Fn(serde_json::Value, JobContext) -> BoxFuture<'static, Result<(), JobError>> + Send + Sync;

/// A registered kind: its handler and options.
#[derive(Clone)]
pub(crate) struct Handler {
    pub(crate) run: Arc<HandlerFn>,
    pub(crate) options: JobOptions,
}

/// Kinds this worker can run.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Handler>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a typed job kind. A payload that does not deserialize into `J` fails the job
    /// permanently.
    #[must_use]
    pub fn register<J: Job>(mut self) -> Self {
        let run: Arc<HandlerFn> = Arc::new(|payload, ctx| {
            Box::pin(async move {
                let job: J = serde_json::from_value(payload).map_err(|e| {
                    JobError::permanent(format!("payload does not fit {}: {e}", J::KIND))
                })?;
                job.run(&ctx).await
            })
        });
        self.handlers.insert(
            J::KIND.to_owned(),
            Handler {
                run,
                options: J::options(),
            },
        );
        self
    }

    /// Registers a kind handled by a closure over the raw JSON payload.
    #[must_use]
    pub fn register_fn<F, Fut>(mut self, kind: &str, options: JobOptions, f: F) -> Self
    where
        F: Fn(serde_json::Value, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let run: Arc<HandlerFn> = Arc::new(move |payload, ctx| Box::pin(f(payload, ctx)));
        self.handlers
            .insert(kind.to_owned(), Handler { run, options });
        self
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&Handler> {
        self.handlers.get(kind)
    }

    /// The registered kinds.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }
}
