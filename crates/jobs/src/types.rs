//! The queue's data: job states, stored job records, new-job options, list filters, statistics.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::JobsError;

/// A job's id (ids are never reused).
pub type JobId = i64;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Ready to run now.
    Available,
    /// Waiting for its `run_at`.
    Scheduled,
    /// Claimed by a worker, under a lease.
    Running,
    /// Failed, waiting for its next attempt.
    Retryable,
    /// Ran to success.
    Completed,
    /// Gave up: permanent failure, attempts exhausted, or unknown kind.
    Discarded,
    /// Cancelled before it could finish.
    Cancelled,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [JobState; 7] = [
        Self::Available,
        Self::Scheduled,
        Self::Running,
        Self::Retryable,
        Self::Completed,
        Self::Discarded,
        Self::Cancelled,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Retryable => "retryable",
            Self::Completed => "completed",
            Self::Discarded => "discarded",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the job will not run again unless retried by hand.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Discarded | Self::Cancelled)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = JobsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| JobsError::Invalid(format!("unknown job state `{s}`")))
    }
}

/// One failed attempt, kept on the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// The attempt that failed (1-based).
    pub attempt: i32,
    /// When it failed.
    pub at: DateTime<Utc>,
    /// What went wrong.
    pub error: String,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Id.
    pub id: JobId,
    /// Queue name.
    pub queue: String,
    /// Kind: which handler runs it.
    pub kind: String,
    /// The handler's input.
    pub payload: serde_json::Value,
    /// Lower runs first.
    pub priority: i16,
    /// State.
    pub state: JobState,
    /// Attempts started so far.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Earliest time it may run.
    pub run_at: DateTime<Utc>,
    /// When a running job's lease ends unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The worker holding the lease.
    pub locked_by: Option<String>,
    /// While unfinished, no other job has this key.
    pub unique_key: Option<String>,
    /// Free-form labels.
    pub tags: Vec<String>,
    /// Every failed attempt's error, oldest first.
    pub errors: Vec<AttemptError>,
    /// A cancel was asked for while it ran.
    pub cancel_requested: bool,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When its latest attempt started.
    pub attempted_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Default attempts for a job that does not say.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 20;
/// Default queue name.
pub const DEFAULT_QUEUE: &str = "default";

/// A job to enqueue.
///
/// ```
/// use std::time::Duration;
/// use malaka_jobs::NewJob;
///
/// let job = NewJob::new("email.send", serde_json::json!({"to": "a@example.com"}))
///     .queue("notifications")
///     .priority(-10)
///     .delay(Duration::from_secs(60))
///     .unique_key("alert-7:rule-3:LOW")
///     .max_attempts(5)
///     .tag("alert");
/// assert_eq!(job.queue, "notifications");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NewJob {
    /// Kind.
    pub kind: String,
    /// Payload.
    pub payload: serde_json::Value,
    /// Queue (default `default`).
    pub queue: String,
    /// Lower runs first (default 0).
    pub priority: i16,
    /// Earliest run time (default now).
    pub run_at: Option<DateTime<Utc>>,
    /// Deduplication key while unfinished.
    pub unique_key: Option<String>,
    /// Attempts allowed (default 20).
    pub max_attempts: i32,
    /// Labels.
    pub tags: Vec<String>,
}

impl NewJob {
    /// A job of `kind` with `payload`, defaults for the rest.
    pub fn new(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        Self {
            kind: kind.into(),
            payload,
            queue: DEFAULT_QUEUE.to_owned(),
            priority: 0,
            run_at: None,
            unique_key: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            tags: Vec::new(),
        }
    }
    /// Sets the queue.
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }
    /// Sets the priority (lower runs first).
    #[must_use]
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }
    /// Runs no earlier than `at`.
    #[must_use]
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }
    /// Runs no earlier than `delay` from now.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        self.run_at = Some(
            Utc::now()
                .checked_add_signed(delay)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        );
        self
    }
    /// Sets the unique key.
    #[must_use]
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }
    /// Sets the attempts allowed (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
    /// Adds a tag.
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Checks the fields a database would otherwise reject obscurely.
    ///
    /// # Errors
    /// [`JobsError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), JobsError> {
        if self.kind.is_empty() || self.kind.len() > 200 {
            return Err(JobsError::Invalid(
                "kind must be 1 to 200 characters".into(),
            ));
        }
        if self.queue.is_empty() || self.queue.len() > 100 {
            return Err(JobsError::Invalid(
                "queue must be 1 to 100 characters".into(),
            ));
        }
        if self.unique_key.as_ref().is_some_and(|k| k.is_empty()) {
            return Err(JobsError::Invalid("unique_key must not be empty".into()));
        }
        Ok(())
    }
}

/// What `enqueue` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id (the existing job's, for a duplicate).
    pub id: JobId,
    /// True when an unfinished job with the same unique key already existed.
    pub duplicate: bool,
}

/// Which jobs `list` returns: newest first, `limit` at a time, continuing below `before_id`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListFilter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only these states.
    pub states: Vec<JobState>,
    /// Only jobs with this tag.
    pub tag: Option<String>,
    /// Only ids below this one (the last id of the previous page).
    pub before_id: Option<JobId>,
    /// Page size (default 50, at most 1000).
    pub limit: Option<u32>,
}

impl ListFilter {
    /// The page size to use.
    pub fn page_size(&self) -> i64 {
        i64::from(self.limit.unwrap_or(50).clamp(1, 1000))
    }
}

/// One queue's counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Jobs per state (states with none are absent).
    pub counts: BTreeMap<JobState, i64>,
    /// Age of the oldest job that could run now and has not started.
    #[serde(with = "opt_secs")]
    pub oldest_available_age: Option<Duration>,
}

impl QueueStats {
    /// Jobs in `state`.
    pub fn count(&self, state: JobState) -> i64 {
        self.counts.get(&state).copied().unwrap_or(0)
    }
}

mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<f64>::deserialize(d)?
            .and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok()))
    }
}

/// How an attempt ended, as the worker reports it to storage.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Success.
    Completed,
    /// Failed; run again at `at`.
    Retry {
        /// Next attempt time.
        at: DateTime<Utc>,
        /// The error.
        error: String,
    },
    /// Not done yet, not a failure: run again at `at` without spending an attempt.
    Snooze {
        /// When to run again.
        at: DateTime<Utc>,
    },
    /// Failed for good.
    Discard {
        /// The error.
        error: String,
    },
    /// Stopped because a cancel was asked for.
    Cancelled {
        /// What the job said, if it failed while stopping.
        error: Option<String>,
    },
}

/// One attempt's end, fenced by its attempt number: a report for an older attempt changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// Job id.
    pub id: JobId,
    /// The attempt that ended.
    pub attempt: i32,
    /// How it ended.
    pub outcome: Outcome,
}

/// A held lease, as the heartbeat sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseStatus {
    /// Job id.
    pub id: JobId,
    /// Whether a cancel was asked for.
    pub cancel_requested: bool,
}

/// Something a worker should react to at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wakeup {
    /// New runnable jobs in this queue.
    Available(String),
    /// A cancel was asked for this running job.
    Cancel(JobId),
    /// Notifications may have been missed (a reconnect): check every queue.
    Resync,
}
