//! Task supervision: long-lived tasks that are restarted, with backoff, when they end unexpectedly,
//! fail or panic, and whose state (running, degraded, restarting, stopped) a readiness check can
//! report.
//!
//! A [`Supervisor`] runs each task from a factory (`FnMut(TaskContext) -> Future`), so a restart
//! builds a fresh future. An instance that returns while its stop token is cancelled has
//! *stopped*; one that returns at any other time, returns an error, or panics is logged with its
//! cause, counted, and started again after a backoff that doubles from `min_backoff` up to
//! `max_backoff` (and starts over once an instance ran for `reset_after`). A task can say it is
//! running but unable to do its work ([`TaskContext::degraded`]): an outage of a remote service
//! degrades a node without stopping it.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use malaka_runtime::{CancellationToken, Supervisor, SupervisorConfig, TaskSpec, TaskState};
//!
//! # #[tokio::main] async fn main() {
//! let supervisor = Supervisor::new(SupervisorConfig::default().min_backoff(Duration::from_millis(1)));
//! let stop = CancellationToken::new();
//! let starts = Arc::new(AtomicU32::new(0));
//! let s = Arc::clone(&starts);
//! let token = stop.clone();
//! let task = supervisor.spawn(TaskSpec::new("ticker").critical().stop_on(stop.clone()), move |_ctx| {
//!     let s = Arc::clone(&s);
//!     let token = token.clone();
//!     async move {
//!         // The first instance hits a bug; the supervisor starts a second one.
//!         if s.fetch_add(1, Ordering::SeqCst) == 0 {
//!             panic!("bug");
//!         }
//!         token.cancelled().await;
//!     }
//! });
//! while starts.load(Ordering::SeqCst) < 2 {
//!     tokio::time::sleep(Duration::from_millis(1)).await;
//! }
//! let status = &supervisor.snapshot()[0];
//! assert_eq!((status.restarts, status.state), (1, TaskState::Running));
//! assert!(status.last_error.as_deref().unwrap_or_default().contains("bug"));
//! stop.cancel();
//! task.await;
//! assert_eq!(supervisor.snapshot()[0].state, TaskState::Stopped);
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, panic_message};

/// How a supervisor restarts its tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorConfig {
    min_backoff: Duration,
    max_backoff: Duration,
    reset_after: Duration,
}

impl Default for SupervisorConfig {
    /// 100 ms doubling to 30 s, reset after a minute of running.
    fn default() -> Self {
        Self {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

impl SupervisorConfig {
    /// Wait before the first restart (then doubled on each further failure).
    #[must_use]
    pub fn min_backoff(mut self, d: Duration) -> Self {
        self.min_backoff = d;
        self
    }

    /// Longest wait between restarts.
    #[must_use]
    pub fn max_backoff(mut self, d: Duration) -> Self {
        self.max_backoff = d;
        self
    }

    /// An instance that ran this long before it ended restarts after `min_backoff` again.
    #[must_use]
    pub fn reset_after(mut self, d: Duration) -> Self {
        self.reset_after = d;
        self
    }

    /// Checks the values.
    ///
    /// # Errors
    /// `InvalidConfig` when a backoff is zero or the minimum exceeds the maximum.
    pub fn validate(&self) -> Result<(), Error> {
        if self.min_backoff.is_zero() || self.max_backoff < self.min_backoff {
            return Err(Error::InvalidConfig(format!(
                "supervisor backoff must satisfy 0 < min ({:?}) <= max ({:?})",
                self.min_backoff, self.max_backoff
            )));
        }
        Ok(())
    }
}

/// What a supervised task is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// An instance is running and doing its work.
    Running,
    /// An instance is running but cannot do its work (a remote service is down, say).
    Degraded,
    /// The last instance ended unexpectedly; the next starts after a backoff.
    Restarting,
    /// Stopped as asked (or never restarted because shutdown had begun).
    Stopped,
}

impl TaskState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Degraded => "degraded",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
        }
    }
}

/// One task's state, as [`Supervisor::snapshot`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TaskStatus {
    /// The task's name.
    pub name: String,
    /// Its state.
    pub state: TaskState,
    /// Whether requests need it: a critical task that is not running makes the node unready.
    pub critical: bool,
    /// Times it was restarted.
    pub restarts: u64,
    /// Why the last instance ended, or why it is degraded.
    pub last_error: Option<String>,
    /// When the state last changed.
    pub since: DateTime<Utc>,
}

/// What a task is called and when it counts as stopped.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    name: String,
    critical: bool,
    stop: Option<CancellationToken>,
}

impl TaskSpec {
    /// A non-critical task stopped with the supervisor.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            critical: false,
            stop: None,
        }
    }

    /// Requests need this task: while it is not running, the node is not ready.
    #[must_use]
    pub fn critical(mut self) -> Self {
        self.critical = true;
        self
    }

    /// The token that tells the task to stop: an instance that returns once it is cancelled has
    /// stopped; before, it ended unexpectedly. Default: the supervisor's own
    /// ([`Supervisor::shutdown`]).
    #[must_use]
    pub fn stop_on(mut self, token: CancellationToken) -> Self {
        self.stop = Some(token);
        self
    }
}

/// How a task instance ended: `()` or `Ok(())` is a normal end, `Err` a failure.
pub trait TaskResult {
    /// The failure's description, if any.
    fn into_failure(self) -> Option<String>;
}

impl TaskResult for () {
    fn into_failure(self) -> Option<String> {
        None
    }
}

impl<E: fmt::Display> TaskResult for Result<(), E> {
    fn into_failure(self) -> Option<String> {
        self.err().map(|e| e.to_string())
    }
}

struct Entry {
    name: String,
    critical: bool,
    restarts: AtomicU64,
    state: Mutex<(TaskState, Option<String>, DateTime<Utc>)>,
    inject: Notify,
}

impl Entry {
    fn lock(&self) -> MutexGuard<'_, (TaskState, Option<String>, DateTime<Utc>)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, state: TaskState, why: Option<String>) {
        let mut s = self.lock();
        if s.0 != state {
            s.2 = Utc::now();
        }
        s.0 = state;
        // A healthy instance keeps the last failure for inspection; a new reason replaces it.
        if why.is_some() {
            s.1 = why;
        }
    }

    fn status(&self) -> TaskStatus {
        let s = self.lock();
        TaskStatus {
            name: self.name.clone(),
            state: s.0,
            critical: self.critical,
            restarts: self.restarts.load(Ordering::Relaxed),
            last_error: s.1.clone(),
            since: s.2,
        }
    }
}

/// What a running instance can tell its supervisor.
#[derive(Clone)]
pub struct TaskContext {
    entry: Arc<Entry>,
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("task", &self.entry.name)
            .finish()
    }
}

impl TaskContext {
    /// The task's name.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// The task runs but cannot do its work, for `why` (logged once per change).
    pub fn degraded(&self, why: impl Into<String>) {
        let why = why.into();
        let was = self.entry.lock().0;
        if was != TaskState::Degraded {
            tracing::warn!(task = %self.entry.name, reason = %why, "task degraded");
        }
        self.entry.set(TaskState::Degraded, Some(why));
    }

    /// The task does its work again.
    pub fn healthy(&self) {
        let was = self.entry.lock().0;
        if was == TaskState::Degraded {
            tracing::info!(task = %self.entry.name, "task recovered");
            self.entry.set(TaskState::Running, None);
        }
    }
}

/// Supervises long-lived tasks. Cheap to clone; clones share the tasks.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    config: SupervisorConfig,
    tasks: Mutex<BTreeMap<String, Arc<Entry>>>,
    stop: CancellationToken,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("tasks", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new(SupervisorConfig::default())
    }
}

impl Supervisor {
    /// A supervisor with no tasks.
    pub fn new(config: SupervisorConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                tasks: Mutex::new(BTreeMap::new()),
                stop: CancellationToken::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `make`'s futures as task `spec.name`, restarting it as described in the module
    /// docs, until its stop token is cancelled (or the returned handle is aborted). A name
    /// already in use is taken over by the new task (its status starts over).
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn`).
    pub fn spawn<F, Fut>(&self, spec: TaskSpec, mut make: F) -> Supervised
    where
        F: FnMut(TaskContext) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: TaskResult,
    {
        let entry = Arc::new(Entry {
            name: spec.name.clone(),
            critical: spec.critical,
            restarts: AtomicU64::new(0),
            state: Mutex::new((TaskState::Running, None, Utc::now())),
            inject: Notify::new(),
        });
        self.lock().insert(spec.name.clone(), Arc::clone(&entry));
        let stop = spec.stop.unwrap_or_else(|| self.inner.stop.clone());
        let config = self.inner.config.clone();
        let handle = tokio::spawn(async move {
            let mut backoff = config.min_backoff;
            loop {
                entry.set(TaskState::Running, None);
                let started = Instant::now();
                let fut = make(TaskContext {
                    entry: Arc::clone(&entry),
                });
                let injected = Arc::clone(&entry);
                let instance = AbortOnDrop(tokio::spawn(async move {
                    tokio::select! {
                        biased;
                        () = injected.inject.notified() => {
                            panic!("a panic injected into task `{}`", injected.name)
                        }
                        out = fut => out.into_failure(),
                    }
                }));
                let why = match instance.join().await {
                    Ok(None) if stop.is_cancelled() => {
                        entry.set(TaskState::Stopped, None);
                        return;
                    }
                    Ok(None) => "ended unexpectedly".to_owned(),
                    Ok(Some(e)) => format!("failed: {e}"),
                    Err(e) if e.is_panic() => {
                        format!("panicked: {}", panic_message(&*e.into_panic()))
                    }
                    Err(_) => {
                        entry.set(TaskState::Stopped, None);
                        return;
                    }
                };
                if stop.is_cancelled() {
                    tracing::warn!(task = %entry.name, error = %why, "supervised task ended during shutdown");
                    entry.set(TaskState::Stopped, Some(why));
                    return;
                }
                if started.elapsed() >= config.reset_after {
                    backoff = config.min_backoff;
                }
                let restarts = entry.restarts.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(task = %entry.name, error = %why, restarts, ?backoff,
                    "supervised task ended; restarting");
                entry.set(TaskState::Restarting, Some(why));
                tokio::select! {
                    () = stop.cancelled() => {
                        entry.set(TaskState::Stopped, None);
                        return;
                    }
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(config.max_backoff);
            }
        });
        Supervised {
            name: spec.name,
            handle,
        }
    }

    /// Every task's state, by name.
    pub fn snapshot(&self) -> Vec<TaskStatus> {
        self.lock().values().map(|e| e.status()).collect()
    }

    /// Whether every critical task is running.
    pub fn critical_up(&self) -> bool {
        self.lock()
            .values()
            .filter(|e| e.critical)
            .all(|e| e.lock().0 == TaskState::Running)
    }

    /// Makes the running instance of task `name` panic (a fault injection for tests and drills);
    /// `false` when there is no such task.
    pub fn inject_panic(&self, name: &str) -> bool {
        match self.lock().get(name) {
            Some(e) => {
                e.inject.notify_one();
                true
            }
            None => false,
        }
    }

    /// Cancels the supervisor's own stop token: tasks spawned without a stop token of their own
    /// stop, and none of them is restarted any more.
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
    }
}

/// The handle of a supervised task: await it to wait until the task has stopped for good;
/// [`Self::abort`] stops it at once (its running instance included).
#[derive(Debug)]
pub struct Supervised {
    name: String,
    handle: JoinHandle<()>,
}

impl Supervised {
    /// The task's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Aborts the supervision and the running instance.
    pub fn abort(&self) {
        self.handle.abort();
    }

    /// Whether the task has stopped for good.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

impl Future for Supervised {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.handle).poll(cx).map(|_| ())
    }
}

/// A spawned instance, aborted if the supervision is dropped (aborted) while it runs.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn quick() -> Supervisor {
        Supervisor::new(
            SupervisorConfig::default()
                .min_backoff(Duration::from_millis(10))
                .max_backoff(Duration::from_millis(40)),
        )
    }

    async fn until(f: impl Fn() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("condition not reached in time");
    }

    #[tokio::test]
    async fn failures_panics_and_unexpected_ends_restart_with_their_cause() {
        let sup = quick();
        let runs = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&runs);
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = sup.spawn(TaskSpec::new("flaky").stop_on(stop.clone()), move |_| {
            let r = Arc::clone(&r);
            let s = s.clone();
            async move {
                match r.fetch_add(1, Ordering::SeqCst) {
                    0 => Err("disk on fire".to_owned()),
                    1 => panic!("bug"),
                    2 => Ok(()), // ends without being asked to
                    _ => {
                        s.cancelled().await;
                        Ok(())
                    }
                }
            }
        });
        until(|| runs.load(Ordering::SeqCst) >= 4).await;
        let st = &sup.snapshot()[0];
        assert_eq!(st.restarts, 3);
        assert_eq!(st.state, TaskState::Running);
        assert_eq!(st.last_error.as_deref(), Some("ended unexpectedly"));
        stop.cancel();
        task.await;
        assert_eq!(sup.snapshot()[0].state, TaskState::Stopped);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            4,
            "not restarted after stopping"
        );
    }

    #[tokio::test]
    async fn an_injected_panic_restarts_the_task_and_readiness_follows() {
        let sup =
            Supervisor::new(SupervisorConfig::default().min_backoff(Duration::from_millis(200)));
        let runs = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&runs);
        let _task = sup.spawn(TaskSpec::new("committer").critical(), move |_| {
            r.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>()
        });
        until(|| runs.load(Ordering::SeqCst) == 1).await;
        assert!(sup.critical_up());
        assert!(sup.inject_panic("committer"));
        assert!(!sup.inject_panic("nobody"));
        until(|| sup.snapshot()[0].state == TaskState::Restarting).await;
        assert!(
            !sup.critical_up(),
            "a critical task down makes the node unready"
        );
        assert!(
            sup.snapshot()[0]
                .last_error
                .as_deref()
                .unwrap_or_default()
                .contains("injected")
        );
        until(|| runs.load(Ordering::SeqCst) == 2).await;
        assert!(sup.critical_up());
        sup.shutdown();
    }

    #[tokio::test]
    async fn degraded_tasks_report_why_and_recover() {
        let sup = quick();
        let (tx, rx) = tokio::sync::mpsc::channel::<bool>(4);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let _task = sup.spawn(TaskSpec::new("sqs"), move |ctx| {
            let rx = Arc::clone(&rx);
            async move {
                let mut rx = rx.lock().await;
                while let Some(ok) = rx.recv().await {
                    if ok {
                        ctx.healthy();
                    } else {
                        ctx.degraded("receive failed: connection refused");
                    }
                }
            }
        });
        tx.send(false).await.unwrap();
        until(|| sup.snapshot()[0].state == TaskState::Degraded).await;
        assert!(
            sup.critical_up(),
            "a non-critical task does not make the node unready"
        );
        tx.send(true).await.unwrap();
        until(|| sup.snapshot()[0].state == TaskState::Running).await;
        sup.shutdown();
    }

    #[tokio::test]
    async fn aborting_stops_the_running_instance() {
        let sup = quick();
        let dropped = Arc::new(AtomicU32::new(0));
        let d = Arc::clone(&dropped);
        struct Guard(Arc<AtomicU32>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let task = sup.spawn(TaskSpec::new("forever"), move |_| {
            let g = Guard(Arc::clone(&d));
            async move {
                let _g = g;
                std::future::pending::<()>().await;
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        task.abort();
        until(|| dropped.load(Ordering::SeqCst) == 1).await;
    }

    #[test]
    fn config_is_checked() {
        assert!(SupervisorConfig::default().validate().is_ok());
        assert!(
            SupervisorConfig::default()
                .min_backoff(Duration::ZERO)
                .validate()
                .is_err()
        );
        assert!(
            SupervisorConfig::default()
                .min_backoff(Duration::from_secs(5))
                .max_backoff(Duration::from_secs(1))
                .validate()
                .is_err()
        );
    }
}
