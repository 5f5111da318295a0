//! Retry with exponential backoff and full jitter, bounded by attempts and elapsed time, telling
//! retryable failures from permanent ones.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How randomness spreads the delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// Exactly the exponential delay (useful in tests).
    None,
    /// A uniformly random delay between zero and the exponential delay ("full jitter", the AWS
    /// architecture blog's recommendation: it spreads retries of many clients best).
    #[default]
    Full,
}

/// When and how often to try again.
///
/// ```
/// use std::time::Duration;
/// use malaka_runtime::{Jitter, RetryPolicy};
///
/// let policy = RetryPolicy::new(5)
///     .initial_delay(Duration::from_millis(100))
///     .max_delay(Duration::from_secs(2))
///     .jitter(Jitter::None);
/// assert_eq!(policy.delay_after(1), Duration::from_millis(100));
/// assert_eq!(policy.delay_after(3), Duration::from_millis(400));
/// assert_eq!(policy.delay_after(10), Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Delay after the first failure, before jitter.
    pub initial_delay: Duration,
    /// Cap on any one delay, before jitter.
    pub max_delay: Duration,
    /// Growth factor between delays.
    pub multiplier: f64,
    /// Give up rather than sleep past this much time since the first attempt.
    pub max_elapsed: Option<Duration>,
    /// How delays are randomised.
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            max_elapsed: None,
            jitter: Jitter::Full,
        }
    }
}

impl RetryPolicy {
    /// Defaults (100 ms doubling up to 30 s, full jitter) with `max_attempts` attempts.
    pub fn new(max_attempts: u32) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            ..Self::default()
        }
    }
    /// A policy that never retries.
    pub fn never() -> Self {
        Self::new(1)
    }
    /// Sets the first delay.
    #[must_use]
    pub fn initial_delay(mut self, d: Duration) -> Self {
        self.initial_delay = d;
        self
    }
    /// Sets the cap on one delay.
    #[must_use]
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }
    /// Sets the growth factor (values below 1 are taken as 1).
    #[must_use]
    pub fn multiplier(mut self, m: f64) -> Self {
        self.multiplier = if m.is_finite() { m.max(1.0) } else { 1.0 };
        self
    }
    /// Sets the elapsed-time budget.
    #[must_use]
    pub fn max_elapsed(mut self, d: Duration) -> Self {
        self.max_elapsed = Some(d);
        self
    }
    /// Sets the jitter.
    #[must_use]
    pub fn jitter(mut self, j: Jitter) -> Self {
        self.jitter = j;
        self
    }

    /// The exponential delay after `failures` failed attempts (1 = after the first), capped, before
    /// jitter.
    pub fn delay_after(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(64) as i32;
        let secs = self.initial_delay.as_secs_f64() * self.multiplier.powi(exp);
        let capped = secs.min(self.max_delay.as_secs_f64());
        Duration::try_from_secs_f64(capped).unwrap_or(self.max_delay)
    }

    /// The delay to actually sleep after `failures` failures: [`Self::delay_after`] with jitter.
    pub fn backoff(&self, failures: u32) -> Duration {
        let base = self.delay_after(failures);
        match self.jitter {
            Jitter::None => base,
            Jitter::Full => {
                let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(fastrand::u64(0..=nanos))
            }
        }
    }
}

/// How an attempt failed: worth another try, or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure<E> {
    /// A transient failure (timeout, connection reset, 503): try again.
    Retryable(E),
    /// A failure another try cannot fix (bad input, 4xx): stop now.
    Permanent(E),
}

impl<E> Failure<E> {
    /// The error inside.
    pub fn into_inner(self) -> E {
        match self {
            Self::Retryable(e) | Self::Permanent(e) => e,
        }
    }
}

/// Why [`retry`] gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryError<E> {
    /// The operation failed permanently.
    #[error("failed permanently after {attempts} attempt(s): {error}")]
    Permanent {
        /// The last error.
        error: E,
        /// Attempts made.
        attempts: u32,
    },
    /// Attempts or elapsed time ran out while the failure was still retryable.
    #[error("gave up after {attempts} attempt(s): {error}")]
    Exhausted {
        /// The last error.
        error: E,
        /// Attempts made.
        attempts: u32,
    },
}

impl<E> RetryError<E> {
    /// The last error.
    pub fn into_inner(self) -> E {
        match self {
            Self::Permanent { error, .. } | Self::Exhausted { error, .. } => error,
        }
    }
    /// Attempts made.
    pub fn attempts(&self) -> u32 {
        match self {
            Self::Permanent { attempts, .. } | Self::Exhausted { attempts, .. } => *attempts,
        }
    }
}

/// Runs `op` until it succeeds, fails permanently, or the policy's attempts or time run out.
///
/// `op` gets the attempt number (starting at 1).
///
/// ```
/// use std::time::Duration;
/// use malaka_runtime::{retry, Failure, RetryError, RetryPolicy};
///
/// # #[tokio::main] async fn main() {
/// let policy = RetryPolicy::new(4).initial_delay(Duration::from_millis(1));
/// // Fails twice with a transient error, then succeeds.
/// let out = retry(&policy, |attempt| async move {
///     if attempt < 3 { Err(Failure::Retryable("connection reset")) } else { Ok(attempt) }
/// }).await;
/// assert_eq!(out, Ok(3));
///
/// // A permanent error stops at once.
/// let out: Result<(), _> = retry(&policy, |_| async { Err(Failure::Permanent("bad request")) }).await;
/// assert_eq!(out, Err(RetryError::Permanent { error: "bad request", attempts: 1 }));
/// # }
/// ```
pub async fn retry<T, E, F, Fut>(policy: &RetryPolicy, mut op: F) -> Result<T, RetryError<E>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Failure<E>>>,
{
    let start = Instant::now();
    let max_attempts = policy.max_attempts.max(1);
    let mut attempt = 1;
    loop {
        match op(attempt).await {
            Ok(v) => return Ok(v),
            Err(Failure::Permanent(error)) => {
                return Err(RetryError::Permanent {
                    error,
                    attempts: attempt,
                });
            }
            Err(Failure::Retryable(error)) => {
                if attempt >= max_attempts {
                    return Err(RetryError::Exhausted {
                        error,
                        attempts: attempt,
                    });
                }
                let delay = policy.backoff(attempt);
                if let Some(budget) = policy.max_elapsed
                    && start.elapsed() + delay > budget
                {
                    return Err(RetryError::Exhausted {
                        error,
                        attempts: attempt,
                    });
                }
                tracing::debug!(attempt, ?delay, "retrying after a transient failure");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

/// Like [`retry`] for operations returning a plain error, with `is_retryable` deciding.
///
/// ```
/// use malaka_runtime::{retry_if, RetryPolicy};
///
/// # #[tokio::main] async fn main() {
/// let out: Result<u8, _> = retry_if(&RetryPolicy::new(3), |_| async { Err::<u8, _>(404) }, |code| *code >= 500).await;
/// assert_eq!(out.unwrap_err().attempts(), 1);
/// # }
/// ```
pub async fn retry_if<T, E, F, Fut, P>(
    policy: &RetryPolicy,
    mut op: F,
    is_retryable: P,
) -> Result<T, RetryError<E>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    P: Fn(&E) -> bool,
{
    retry(policy, |attempt| {
        let fut = op(attempt);
        let is_retryable = &is_retryable;
        async move {
            fut.await.map_err(|e| {
                if is_retryable(&e) {
                    Failure::Retryable(e)
                } else {
                    Failure::Permanent(e)
                }
            })
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_with_the_last_error() {
        let calls = AtomicU32::new(0);
        let policy = RetryPolicy::new(4)
            .initial_delay(Duration::from_millis(10))
            .jitter(Jitter::None);
        let t0 = Instant::now();
        let out: Result<(), _> = retry(&policy, |a| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Err(Failure::Retryable(a)) }
        })
        .await;
        assert_eq!(
            out,
            Err(RetryError::Exhausted {
                error: 4,
                attempts: 4
            })
        );
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // 10 + 20 + 40 ms of backoff
        assert_eq!(t0.elapsed(), Duration::from_millis(70));
    }

    #[tokio::test(start_paused = true)]
    async fn max_elapsed_stops_before_sleeping_past_the_budget() {
        let policy = RetryPolicy::new(100)
            .initial_delay(Duration::from_millis(100))
            .jitter(Jitter::None)
            .max_elapsed(Duration::from_millis(500));
        let t0 = Instant::now();
        let out: Result<(), _> = retry(&policy, |_| async { Err(Failure::Retryable(())) }).await;
        // 100 + 200 = 300 ms; the next delay (400 ms) would pass 500 ms.
        assert_eq!(out.unwrap_err().attempts(), 3);
        assert_eq!(t0.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test]
    async fn retry_if_classifies() {
        let policy = RetryPolicy::new(3).initial_delay(Duration::from_millis(1));
        let calls = AtomicU32::new(0);
        let out: Result<(), _> = retry_if(
            &policy,
            |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(503) }
            },
            |c| *c >= 500,
        )
        .await;
        assert_eq!(
            out,
            Err(RetryError::Exhausted {
                error: 503,
                attempts: 3
            })
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    proptest! {
        #[test]
        fn backoff_never_exceeds_the_capped_exponential(
            initial_ms in 0u64..10_000, max_ms in 0u64..100_000, mult in 1.0f64..5.0, failures in 1u32..200
        ) {
            let p = RetryPolicy::new(10)
                .initial_delay(Duration::from_millis(initial_ms))
                .max_delay(Duration::from_millis(max_ms))
                .multiplier(mult);
            let base = p.delay_after(failures);
            prop_assert!(base <= Duration::from_millis(max_ms));
            prop_assert!(p.backoff(failures) <= base);
            if failures > 1 { prop_assert!(p.delay_after(failures - 1) <= base); }
        }
    }
}
