//! The crate's error type: what can go wrong when handing work to the runtime.

use std::time::Duration;

/// Errors raised by the runtime itself (not by the work it runs).
///
/// Helpers that run caller-supplied fallible work ([`crate::retry`], [`crate::CircuitBreaker::call`],
/// [`crate::Pipeline`]) wrap the caller's error type in their own generic enums and use this one for
/// the runtime's part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pool's queue is full; `try_submit` refuses instead of waiting.
    #[error("pool `{pool}` is full ({capacity} tasks queued)")]
    Full {
        /// Pool name.
        pool: String,
        /// Queue capacity.
        capacity: usize,
    },
    /// The pool (or bus) has been shut down and takes no more work.
    #[error("pool `{pool}` is shut down")]
    Closed {
        /// Pool name.
        pool: String,
    },
    /// The task panicked; the worker survived and the panic message is kept.
    #[error("task panicked: {message}")]
    Panicked {
        /// The panic payload, when it was a string.
        message: String,
    },
    /// The task was still queued or running when shutdown's drain time ran out.
    #[error("task abandoned at shutdown")]
    Abandoned,
    /// The task or listener ran longer than its time limit.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// A circuit breaker is open: the call was refused without being attempted.
    #[error("circuit `{name}` is open; retry after {retry_after:?}")]
    CircuitOpen {
        /// Breaker name.
        name: String,
        /// Time until the breaker lets a probe call through.
        retry_after: Duration,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The call was made outside a tokio runtime.
    #[error("no tokio runtime is running on this thread")]
    NoRuntime,
}

/// Turns a panic payload into a readable message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
