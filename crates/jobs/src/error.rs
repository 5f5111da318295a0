//! Errors: the queue's own (`JobsError`) and a job's failure (`JobError`, retryable or permanent).

/// What went wrong in the queue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobsError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A payload or stored value could not be (de)serialized.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// An argument is invalid; the message names it.
    #[error("invalid: {0}")]
    Invalid(String),
    /// No job has this id.
    #[error("job {0} not found")]
    NotFound(i64),
    /// The job's state does not allow the operation.
    #[error("job {id} is {state}: {message}")]
    WrongState {
        /// Job id.
        id: i64,
        /// Its state.
        state: crate::JobState,
        /// Why that matters.
        message: String,
    },
    /// The runtime refused (a pool could not be created).
    #[error(transparent)]
    Runtime(#[from] malaka_runtime::Error),
}

/// How a job's run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    message: String,
    retryable: bool,
    snooze: Option<std::time::Duration>,
}

impl JobError {
    /// A failure another attempt may fix (a timeout, a 503, a lost connection).
    pub fn retryable(message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            retryable: true,
            snooze: None,
        }
    }
    /// A failure no attempt will fix (bad payload, 4xx): the job is discarded at once.
    pub fn permanent(message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            retryable: false,
            snooze: None,
        }
    }
    /// Not a failure: run again after `delay` without spending an attempt (the job goes back to
    /// `scheduled`, its attempt limit raised by one, no error recorded). For work that cannot
    /// be done yet, such as a delivery while the target's circuit breaker is open.
    pub fn snooze(delay: std::time::Duration, reason: impl std::fmt::Display) -> Self {
        Self {
            message: reason.to_string(),
            retryable: true,
            snooze: Some(delay),
        }
    }
    /// The delay of a [`Self::snooze`].
    pub fn snoozed_for(&self) -> Option<std::time::Duration> {
        self.snooze
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Whether another attempt may help.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Any error converts into a retryable `JobError`, so `?` works in `run`.
impl<E: std::error::Error> From<E> for JobError {
    fn from(e: E) -> Self {
        Self::retryable(e)
    }
}
