//! Circuit breaker: stops calling a failing dependency for a while, then probes it.
//!
//! Closed: calls go through and outcomes are counted over a rolling time window; once the window
//! holds at least `minimum_calls` and the failure rate reaches the threshold, the breaker opens.
//! Open: calls fail fast with [`Error::CircuitOpen`] (which says when to come back) until
//! `open_duration` has passed. Half-open: up to `half_open_calls` probes go through; if they all
//! succeed the breaker closes, any failure opens it again.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Error;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls are refused.
    Open,
    /// A few probe calls go through.
    HalfOpen,
}

impl CircuitState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// A state change, as passed to transition callbacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Breaker name.
    pub name: String,
    /// State before.
    pub from: CircuitState,
    /// State after.
    pub to: CircuitState,
}

type Callback = Arc<dyn Fn(&Transition) + Send + Sync>;

/// Thresholds and durations.
#[derive(Clone)]
#[non_exhaustive]
pub struct CircuitConfig {
    /// Name used in errors, metrics and logs.
    pub name: String,
    /// Failure rate (0.0 to 1.0) at which the breaker opens (default 0.5).
    pub failure_rate: f64,
    /// Calls the window must hold before the rate counts (default 10).
    pub minimum_calls: u32,
    /// Length of the rolling window (default 60 s), kept in 10 buckets.
    pub window: Duration,
    /// How long the breaker stays open (default 30 s).
    pub open_duration: Duration,
    /// Probe calls allowed while half-open, all of which must succeed to close (default 1).
    pub half_open_calls: u32,
    callbacks: Vec<Callback>,
}

impl std::fmt::Debug for CircuitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitConfig")
            .field("name", &self.name)
            .field("failure_rate", &self.failure_rate)
            .field("minimum_calls", &self.minimum_calls)
            .field("window", &self.window)
            .field("open_duration", &self.open_duration)
            .field("half_open_calls", &self.half_open_calls)
            .finish_non_exhaustive()
    }
}

impl CircuitConfig {
    /// Defaults with a name.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            failure_rate: 0.5,
            minimum_calls: 10,
            window: Duration::from_secs(60),
            open_duration: Duration::from_secs(30),
            half_open_calls: 1,
            callbacks: Vec::new(),
        }
    }
    /// Sets the failure rate threshold (clamped to 0.0..=1.0).
    #[must_use]
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.failure_rate = if rate.is_nan() {
            0.5
        } else {
            rate.clamp(0.0, 1.0)
        };
        self
    }
    /// Sets the minimum number of calls in the window.
    #[must_use]
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.minimum_calls = n.max(1);
        self
    }
    /// Sets the rolling window.
    #[must_use]
    pub fn window(mut self, d: Duration) -> Self {
        self.window = d.max(Duration::from_millis(10));
        self
    }
    /// Sets how long the breaker stays open.
    #[must_use]
    pub fn open_duration(mut self, d: Duration) -> Self {
        self.open_duration = d;
        self
    }
    /// Sets the number of probe calls while half-open.
    #[must_use]
    pub fn half_open_calls(mut self, n: u32) -> Self {
        self.half_open_calls = n.max(1);
        self
    }
    /// Calls `f` on every state change (after the change, outside the breaker's lock).
    #[must_use]
    pub fn on_transition(mut self, f: impl Fn(&Transition) + Send + Sync + 'static) -> Self {
        self.callbacks.push(Arc::new(f));
        self
    }
}

const BUCKETS: usize = 10;

#[derive(Clone, Copy, Default)]
struct Bucket {
    epoch: u64,
    successes: u32,
    failures: u32,
}

struct State {
    state: CircuitState,
    buckets: [Bucket; BUCKETS],
    opened_at: Instant,
    probes_in_flight: u32,
    probe_successes: u32,
    rejected: u64,
    transitions: u64,
}

struct Inner {
    config: CircuitConfig,
    origin: Instant,
    state: Mutex<State>,
    watch: watch::Sender<CircuitState>,
}

/// Counters and the current state.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CircuitMetrics {
    /// Breaker name.
    pub name: String,
    /// Current state.
    pub state: CircuitState,
    /// Calls counted in the current window.
    pub window_calls: u32,
    /// Failures counted in the current window.
    pub window_failures: u32,
    /// Calls refused while open (over the breaker's life).
    pub rejected: u64,
    /// State changes (over the breaker's life).
    pub transitions: u64,
}

/// Why [`CircuitBreaker::call`] did not return the call's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError<E> {
    /// The breaker refused the call ([`Error::CircuitOpen`]).
    #[error(transparent)]
    Rejected(Error),
    /// The call ran and failed.
    #[error("{0}")]
    Failed(E),
}

/// A permission to make one call; report how it went with [`Permit::success`] or
/// [`Permit::failure`]. Dropping it unreported counts as neither (the call was cancelled).
#[derive(Debug)]
#[must_use = "report the call's outcome with success() or failure()"]
pub struct Permit {
    breaker: CircuitBreaker,
    probe: bool,
    reported: bool,
}

impl Permit {
    /// The call succeeded.
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.record(self.probe, true);
    }
    /// The call failed.
    pub fn failure(mut self) {
        self.reported = true;
        self.breaker.record(self.probe, false);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            self.breaker.release_probe();
        }
    }
}

/// A circuit breaker; clones share state.
///
/// ```
/// use std::time::Duration;
/// use malaka_runtime::{CallError, CircuitBreaker, CircuitConfig, CircuitState, Error};
///
/// # #[tokio::main] async fn main() {
/// let smtp = CircuitBreaker::new(CircuitConfig::new("smtp").minimum_calls(2).open_duration(Duration::from_secs(30)));
/// for _ in 0..2 {
///     let _ = smtp.call(async { Err::<(), _>("connection refused") }).await;
/// }
/// assert_eq!(smtp.state(), CircuitState::Open);
/// match smtp.call(async { Ok::<_, &str>(()) }).await {
///     Err(CallError::Rejected(Error::CircuitOpen { retry_after, .. })) => assert!(retry_after <= Duration::from_secs(30)),
///     other => panic!("{other:?}"),
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.config.name)
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: CircuitConfig) -> Self {
        let now = Instant::now();
        Self {
            inner: Arc::new(Inner {
                config,
                origin: now,
                state: Mutex::new(State {
                    state: CircuitState::Closed,
                    buckets: [Bucket::default(); BUCKETS],
                    opened_at: now,
                    probes_in_flight: 0,
                    probe_successes: 0,
                    rejected: 0,
                    transitions: 0,
                }),
                watch: watch::channel(CircuitState::Closed).0,
            }),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // State updates are single assignments; a panic cannot leave it inconsistent.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current state (an open breaker whose time is up reports `HalfOpen`).
    pub fn state(&self) -> CircuitState {
        let s = self.lock();
        if s.state == CircuitState::Open && s.opened_at.elapsed() >= self.inner.config.open_duration
        {
            CircuitState::HalfOpen
        } else {
            s.state
        }
    }

    /// A receiver that sees every state the breaker enters (the latest one, if several happen
    /// between two looks).
    pub fn watch(&self) -> watch::Receiver<CircuitState> {
        self.inner.watch.subscribe()
    }

    /// Counters and state.
    pub fn metrics(&self) -> CircuitMetrics {
        let state = self.state();
        let s = self.lock();
        let (calls, failures) = self.window_counts(&s);
        CircuitMetrics {
            name: self.inner.config.name.clone(),
            state,
            window_calls: calls,
            window_failures: failures,
            rejected: s.rejected,
            transitions: s.transitions,
        }
    }

    fn epoch(&self) -> u64 {
        let width = self.inner.config.window.as_nanos() / BUCKETS as u128;
        let since = self.inner.origin.elapsed().as_nanos();
        u64::try_from(since / width.max(1)).unwrap_or(u64::MAX)
    }

    fn window_counts(&self, s: &State) -> (u32, u32) {
        let now = self.epoch();
        let oldest = now.saturating_sub(BUCKETS as u64 - 1);
        s.buckets
            .iter()
            .filter(|b| b.epoch >= oldest && b.epoch <= now && (b.successes + b.failures) > 0)
            .fold((0, 0), |(c, f), b| {
                (c + b.successes + b.failures, f + b.failures)
            })
    }

    fn transition(&self, s: &mut State, to: CircuitState) -> Option<Transition> {
        if s.state == to {
            return None;
        }
        let from = s.state;
        s.state = to;
        s.transitions += 1;
        match to {
            CircuitState::Open => {
                s.opened_at = Instant::now();
                s.probes_in_flight = 0;
                s.probe_successes = 0;
            }
            CircuitState::Closed => {
                s.buckets = [Bucket::default(); BUCKETS];
                s.probes_in_flight = 0;
                s.probe_successes = 0;
            }
            CircuitState::HalfOpen => {
                s.probes_in_flight = 0;
                s.probe_successes = 0;
            }
        }
        self.inner.watch.send_replace(to);
        Some(Transition {
            name: self.inner.config.name.clone(),
            from,
            to,
        })
    }

    fn announce(&self, t: Option<Transition>) {
        if let Some(t) = t {
            tracing::info!(breaker = %t.name, from = t.from.as_str(), to = t.to.as_str(), "circuit breaker changed state");
            for cb in &self.inner.config.callbacks {
                cb(&t);
            }
        }
    }

    /// Asks to make a call.
    ///
    /// # Errors
    /// [`Error::CircuitOpen`] with the time left before a probe is allowed.
    pub fn try_acquire(&self) -> Result<Permit, Error> {
        let cfg = &self.inner.config;
        let mut s = self.lock();
        let mut t = None;
        if s.state == CircuitState::Open {
            let elapsed = s.opened_at.elapsed();
            if elapsed < cfg.open_duration {
                s.rejected += 1;
                return Err(Error::CircuitOpen {
                    name: cfg.name.clone(),
                    retry_after: cfg.open_duration - elapsed,
                });
            }
            t = self.transition(&mut s, CircuitState::HalfOpen);
        }
        let probe = s.state == CircuitState::HalfOpen;
        if probe {
            if s.probes_in_flight + s.probe_successes >= cfg.half_open_calls {
                s.rejected += 1;
                drop(s);
                self.announce(t);
                return Err(Error::CircuitOpen {
                    name: cfg.name.clone(),
                    // Probes are out; their outcome decides. Come back shortly.
                    retry_after: cfg.open_duration.min(Duration::from_secs(1)),
                });
            }
            s.probes_in_flight += 1;
        }
        drop(s);
        self.announce(t);
        Ok(Permit {
            breaker: self.clone(),
            probe,
            reported: false,
        })
    }

    fn release_probe(&self) {
        let mut s = self.lock();
        s.probes_in_flight = s.probes_in_flight.saturating_sub(1);
    }

    fn record(&self, probe: bool, success: bool) {
        let cfg = &self.inner.config;
        let mut s = self.lock();
        let t = if probe {
            if s.state != CircuitState::HalfOpen {
                // A late probe result after another probe already decided.
                None
            } else {
                s.probes_in_flight = s.probes_in_flight.saturating_sub(1);
                if success {
                    s.probe_successes += 1;
                    if s.probe_successes >= cfg.half_open_calls {
                        self.transition(&mut s, CircuitState::Closed)
                    } else {
                        None
                    }
                } else {
                    self.transition(&mut s, CircuitState::Open)
                }
            }
        } else {
            let epoch = self.epoch();
            let b = &mut s.buckets[(epoch % BUCKETS as u64) as usize];
            if b.epoch != epoch {
                *b = Bucket {
                    epoch,
                    ..Bucket::default()
                };
            }
            if success {
                b.successes += 1;
            } else {
                b.failures += 1;
            }
            let (calls, failures) = self.window_counts(&s);
            if s.state == CircuitState::Closed
                && calls >= cfg.minimum_calls
                && f64::from(failures) / f64::from(calls) >= cfg.failure_rate
            {
                self.transition(&mut s, CircuitState::Open)
            } else {
                None
            }
        };
        drop(s);
        self.announce(t);
    }

    /// Runs `fut` if the breaker allows it, counting an `Err` as a failure.
    ///
    /// # Errors
    /// [`CallError::Rejected`] when open; [`CallError::Failed`] with the call's error.
    pub async fn call<T, E, F>(&self, fut: F) -> Result<T, CallError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(CallError::Rejected)?;
        match fut.await {
            Ok(v) => {
                permit.success();
                Ok(v)
            }
            Err(e) => {
                permit.failure();
                Err(CallError::Failed(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    fn breaker(log: Arc<StdMutex<Vec<(CircuitState, CircuitState)>>>) -> CircuitBreaker {
        CircuitBreaker::new(
            CircuitConfig::new("t")
                .failure_rate(0.5)
                .minimum_calls(4)
                .window(Duration::from_secs(10))
                .open_duration(Duration::from_secs(5))
                .half_open_calls(2)
                .on_transition(move |t| log.lock().unwrap().push((t.from, t.to))),
        )
    }

    async fn ok(b: &CircuitBreaker) -> Result<(), CallError<()>> {
        b.call(async { Ok(()) }).await
    }
    async fn fail(b: &CircuitBreaker) -> Result<(), CallError<()>> {
        b.call(async { Err(()) }).await
    }

    #[tokio::test(start_paused = true)]
    async fn full_cycle_closed_open_half_open_closed() {
        let log = Arc::new(StdMutex::new(Vec::new()));
        let b = breaker(log.clone());
        let mut watch = b.watch();
        // 3 failures: below minimum calls, still closed.
        for _ in 0..3 {
            assert_eq!(fail(&b).await, Err(CallError::Failed(())));
        }
        assert_eq!(b.state(), CircuitState::Closed);
        ok(&b).await.unwrap(); // 3/4 failures = 75 % >= 50 % -> open
        assert_eq!(b.state(), CircuitState::Open);
        watch.changed().await.unwrap();
        assert_eq!(*watch.borrow_and_update(), CircuitState::Open);
        match ok(&b).await {
            Err(CallError::Rejected(Error::CircuitOpen { retry_after, name })) => {
                assert_eq!(name, "t");
                assert_eq!(retry_after, Duration::from_secs(5));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.metrics().rejected, 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.state(), CircuitState::HalfOpen);
        // Two probes allowed, a third refused while they are out.
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err());
        p1.success();
        assert_eq!(b.state(), CircuitState::HalfOpen);
        p2.success();
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(
            *log.lock().unwrap(),
            vec![
                (CircuitState::Closed, CircuitState::Open),
                (CircuitState::Open, CircuitState::HalfOpen),
                (CircuitState::HalfOpen, CircuitState::Closed),
            ]
        );
        // The window was reset on closing.
        assert_eq!(b.metrics().window_calls, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens() {
        let b = breaker(Arc::new(StdMutex::new(Vec::new())));
        for _ in 0..4 {
            let _ = fail(&b).await;
        }
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(fail(&b).await, Err(CallError::Failed(())));
        assert_eq!(b.state(), CircuitState::Open);
        // A cancelled probe frees its slot.
        tokio::time::advance(Duration::from_secs(6)).await;
        drop(b.try_acquire().unwrap());
        let _p = b.try_acquire().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_leave_the_window() {
        let b = breaker(Arc::new(StdMutex::new(Vec::new())));
        for _ in 0..3 {
            let _ = fail(&b).await;
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        // The three failures have rolled out; one more failure is 1 call, below the minimum.
        let _ = fail(&b).await;
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.metrics().window_calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn low_failure_rate_stays_closed() {
        let b = breaker(Arc::new(StdMutex::new(Vec::new())));
        for i in 0..100 {
            if i % 4 == 0 {
                let _ = fail(&b).await;
            } else {
                ok(&b).await.unwrap();
            }
        }
        assert_eq!(b.state(), CircuitState::Closed);
    }
}
