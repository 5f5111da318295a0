//! Autoscaling worker pool: a bounded queue with backpressure, panic isolation, idle shrink,
//! graceful shutdown and a metrics snapshot.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::{Error, panic_message};
use crate::histogram::Histogram;

/// How a pool is sized and how long it waits.
///
/// ```
/// use std::time::Duration;
/// use malaka_runtime::PoolConfig;
///
/// let config = PoolConfig::new("reports").min_workers(0).max_workers(2).queue_size(100);
/// assert_eq!(config.max_workers, 2);
/// assert_eq!(PoolConfig::default().idle_timeout, Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Name used in metrics and logs.
    pub name: String,
    /// Workers kept even when idle (default 2).
    pub min_workers: usize,
    /// Upper bound on workers, and so on tasks running at once (default 2 x CPUs).
    pub max_workers: usize,
    /// Tasks that may wait for a worker before `submit` waits (default 1000).
    pub queue_size: usize,
    /// How long a worker above `min_workers` stays idle before it retires (default 30 s).
    pub idle_timeout: Duration,
    /// How long `shutdown` lets queued and running tasks finish (default 5 s).
    pub shutdown_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            name: "default".to_owned(),
            min_workers: 2,
            max_workers: 2 * cpus,
            queue_size: 1000,
            idle_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

impl PoolConfig {
    /// Defaults, with a name.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
    /// Sets `min_workers`.
    #[must_use]
    pub fn min_workers(mut self, n: usize) -> Self {
        self.min_workers = n;
        self
    }
    /// Sets `max_workers`.
    #[must_use]
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = n;
        self
    }
    /// Sets `queue_size`.
    #[must_use]
    pub fn queue_size(mut self, n: usize) -> Self {
        self.queue_size = n;
        self
    }
    /// Sets `idle_timeout`.
    #[must_use]
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }
    /// Sets `shutdown_timeout`.
    #[must_use]
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        if self.max_workers == 0 {
            return Err(Error::InvalidConfig(
                "max_workers must be at least 1".into(),
            ));
        }
        if self.min_workers > self.max_workers {
            return Err(Error::InvalidConfig(format!(
                "min_workers ({}) exceeds max_workers ({})",
                self.min_workers, self.max_workers
            )));
        }
        if self.queue_size == 0 {
            return Err(Error::InvalidConfig("queue_size must be at least 1".into()));
        }
        Ok(())
    }
}

/// What a task's output says about success, so the pool can count failures.
///
/// Implemented for `Result` (an `Err` is a failure) and for common output types that cannot fail.
/// Implement it for your own output types (one line: `impl TaskOutput for MyType {}`).
pub trait TaskOutput {
    /// Whether this output counts as a failed task in the pool's metrics.
    fn is_failure(&self) -> bool {
        false
    }
}

impl<T, E> TaskOutput for Result<T, E> {
    fn is_failure(&self) -> bool {
        self.is_err()
    }
}

macro_rules! infallible_output {
    ($($t:ty),*) => { $(impl TaskOutput for $t {})* };
}
infallible_output!(
    (),
    bool,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    String,
    Duration
);
impl<T> TaskOutput for Option<T> {}
impl<T> TaskOutput for Vec<T> {}
impl<T: ?Sized> TaskOutput for Box<T> {}
impl<T: ?Sized> TaskOutput for Arc<T> {}
impl<A, B> TaskOutput for (A, B) {}

#[derive(Clone, Copy)]
enum Status {
    Completed,
    Failed,
    Panicked,
}

type Task = Pin<Box<dyn Future<Output = Status> + Send>>;

/// The pending result of a submitted task; await it for the task's output.
///
/// Dropping the handle does not cancel the task: it still runs, and its output is discarded.
#[derive(Debug)]
#[must_use = "await the handle for the task's result, or drop it to detach"]
pub struct TaskHandle<T> {
    rx: oneshot::Receiver<Result<T, Error>>,
}

impl<T> Future for TaskHandle<T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            // The task was dropped unrun (drained at shutdown) or aborted mid-run.
            Poll::Ready(Err(_)) => Poll::Ready(Err(Error::Abandoned)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What `shutdown` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Tasks that finished during the drain.
    pub drained: u64,
    /// Tasks still queued or running when the timeout ran out; their handles report
    /// [`Error::Abandoned`].
    pub abandoned: u64,
    /// Whether everything finished within the timeout.
    pub clean: bool,
}

/// A point-in-time view of a pool's health.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PoolMetrics {
    /// Pool name.
    pub name: String,
    /// Workers alive.
    pub workers: usize,
    /// Workers running a task.
    pub active_workers: usize,
    /// Workers waiting for a task.
    pub idle_workers: usize,
    /// Configured bounds.
    pub min_workers: usize,
    /// Configured bounds.
    pub max_workers: usize,
    /// Tasks waiting in the queue.
    pub queue_length: usize,
    /// Queue capacity.
    pub queue_capacity: usize,
    /// Tasks accepted.
    pub submitted: u64,
    /// Tasks that finished (including failed ones, excluding panicked ones).
    pub completed: u64,
    /// Finished tasks whose output was a failure (see [`TaskOutput`]).
    pub failed: u64,
    /// Tasks that panicked.
    pub panicked: u64,
    /// `try_submit` calls refused because the queue was full.
    pub rejected: u64,
    /// Tasks abandoned at shutdown.
    pub abandoned: u64,
    /// Workers started over the pool's life (including the first `min_workers`).
    pub workers_started: u64,
    /// Workers retired after being idle.
    pub workers_retired: u64,
    /// Mean task run time.
    pub mean_run_time: Duration,
    /// 99th percentile task run time (bucketed, within 12.5 %).
    pub p99_run_time: Duration,
    /// Whether shutdown has begun.
    pub closed: bool,
}

struct Shared {
    config: PoolConfig,
    tx: async_channel::Sender<Task>,
    rx: async_channel::Receiver<Task>,
    runtime: tokio::runtime::Handle,
    workers: AtomicUsize,
    idle: AtomicUsize,
    busy: AtomicUsize,
    submitted: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    rejected: AtomicU64,
    abandoned: AtomicU64,
    started: AtomicU64,
    retired: AtomicU64,
    closed: AtomicBool,
    run_time: Histogram,
    handles: Mutex<JoinSet<()>>,
}

/// An autoscaling pool of tokio tasks fed by a bounded queue.
///
/// Cloning is cheap and every clone feeds the same pool.
///
/// ```
/// use malaka_runtime::{PoolConfig, WorkerPool};
///
/// # #[tokio::main] async fn main() -> Result<(), malaka_runtime::Error> {
/// let pool = WorkerPool::new(PoolConfig::new("emails").max_workers(4))?;
/// let handle = pool.submit(async { 6 * 7 }).await?;
/// assert_eq!(handle.await?, 42);
///
/// // A panicking task is reported through its handle; the pool lives on.
/// let boom = pool.submit(async { if true { panic!("boom") } }).await?;
/// assert!(matches!(boom.await, Err(malaka_runtime::Error::Panicked { .. })));
///
/// let report = pool.shutdown().await;
/// assert_eq!(report.abandoned, 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WorkerPool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("name", &self.shared.config.name)
            .field("workers", &self.shared.workers.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl WorkerPool {
    /// Starts a pool with `min_workers` workers on the current tokio runtime.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for inconsistent sizes, [`Error::NoRuntime`] outside a runtime.
    pub fn new(config: PoolConfig) -> Result<Self, Error> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (tx, rx) = async_channel::bounded(config.queue_size);
        let min = config.min_workers;
        let shared = Arc::new(Shared {
            config,
            tx,
            rx,
            runtime,
            workers: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            submitted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            started: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            run_time: Histogram::new(),
            handles: Mutex::new(JoinSet::new()),
        });
        for _ in 0..min {
            if shared.workers.fetch_add(1, Ordering::AcqRel) < shared.config.max_workers {
                Shared::spawn_worker(&shared);
            }
        }
        Ok(Self { shared })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// The pool's configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// Queues a task, waiting for room when the queue is full (backpressure).
    ///
    /// # Errors
    /// [`Error::Closed`] once shutdown has begun; the task is not run.
    pub async fn submit<F>(&self, task: F) -> Result<TaskHandle<F::Output>, Error>
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput + Send + 'static,
    {
        let (task, handle) = wrap(task);
        match self.shared.tx.try_send(task) {
            Ok(()) => {}
            Err(async_channel::TrySendError::Full(task)) => {
                // Everyone is busy and the queue is full: make sure we are at full strength, then wait.
                Shared::scale_up(&self.shared);
                self.shared
                    .tx
                    .send(task)
                    .await
                    .map_err(|_| self.closed_error())?;
            }
            Err(async_channel::TrySendError::Closed(_)) => return Err(self.closed_error()),
        }
        self.accepted();
        Ok(handle)
    }

    /// Queues a task if there is room, without waiting.
    ///
    /// # Errors
    /// [`Error::Full`] when the queue is full (counted as `rejected`), [`Error::Closed`] after
    /// shutdown. Either way the task is not run.
    pub fn try_submit<F>(&self, task: F) -> Result<TaskHandle<F::Output>, Error>
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput + Send + 'static,
    {
        let (task, handle) = wrap(task);
        match self.shared.tx.try_send(task) {
            Ok(()) => {
                self.accepted();
                Ok(handle)
            }
            Err(async_channel::TrySendError::Full(_)) => {
                self.shared.rejected.fetch_add(1, Ordering::Relaxed);
                Shared::scale_up(&self.shared);
                tracing::debug!(pool = %self.shared.config.name, "try_submit refused: queue full");
                Err(Error::Full {
                    pool: self.shared.config.name.clone(),
                    capacity: self.shared.config.queue_size,
                })
            }
            Err(async_channel::TrySendError::Closed(_)) => Err(self.closed_error()),
        }
    }

    fn accepted(&self) {
        self.shared.submitted.fetch_add(1, Ordering::Relaxed);
        // More tasks waiting than idle workers to take them. (Comparing `idle` with zero is not
        // enough: an idle worker already woken for an earlier task still counts as idle until it
        // runs, so a burst arriving at an idle pool would never grow it.)
        if self.shared.rx.len() > self.shared.idle.load(Ordering::Acquire) {
            Shared::scale_up(&self.shared);
        }
    }

    fn closed_error(&self) -> Error {
        Error::Closed {
            pool: self.shared.config.name.clone(),
        }
    }

    /// Mean task run time so far (cheap: two atomic loads), zero before the first task.
    pub fn mean_run_time(&self) -> Duration {
        self.shared.run_time.mean()
    }

    /// A snapshot of the pool's counters and gauges.
    pub fn metrics(&self) -> PoolMetrics {
        let s = &self.shared;
        let workers = s.workers.load(Ordering::Relaxed);
        let busy = s.busy.load(Ordering::Relaxed).min(workers);
        PoolMetrics {
            name: s.config.name.clone(),
            workers,
            active_workers: busy,
            idle_workers: workers - busy,
            min_workers: s.config.min_workers,
            max_workers: s.config.max_workers,
            queue_length: s.rx.len(),
            queue_capacity: s.config.queue_size,
            submitted: s.submitted.load(Ordering::Relaxed),
            completed: s.completed.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            panicked: s.panicked.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            abandoned: s.abandoned.load(Ordering::Relaxed),
            workers_started: s.started.load(Ordering::Relaxed),
            workers_retired: s.retired.load(Ordering::Relaxed),
            mean_run_time: s.run_time.mean(),
            p99_run_time: s.run_time.quantile(0.99),
            closed: s.closed.load(Ordering::Relaxed),
        }
    }

    /// Whether shutdown has begun.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Stops intake, lets queued and running tasks finish for up to `shutdown_timeout`, then
    /// abandons what is left and says how many tasks that was. Calling it again returns at once.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.shutdown_within(self.shared.config.shutdown_timeout)
            .await
    }

    /// Like [`Self::shutdown`] with a drain time other than the configured one (for a process
    /// whose overall shutdown budget is partly spent).
    pub async fn shutdown_within(&self, timeout: Duration) -> ShutdownReport {
        let s = &self.shared;
        let first = !s.closed.swap(true, Ordering::AcqRel);
        s.tx.close();
        let before = s.completed.load(Ordering::Relaxed) + s.panicked.load(Ordering::Relaxed);
        // Drain faster: every task left is waiting for a worker.
        Shared::scale_up_even_if_closed(s);
        let mut set = match s.handles.lock() {
            Ok(mut guard) => std::mem::take(&mut *guard),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        let drained =
            tokio::time::timeout(timeout, async { while set.join_next().await.is_some() {} })
                .await
                .is_ok();
        let abandoned_before = s.abandoned.load(Ordering::Acquire);
        if !drained {
            // Workers still running: each task aborted mid-run counts itself (see `BusyGuard`).
            set.abort_all();
            while set.join_next().await.is_some() {}
            // Tasks never picked up: dropping one wakes its handle with `Abandoned`.
            let mut unrun = 0;
            while let Ok(task) = s.rx.try_recv() {
                drop(task);
                unrun += 1;
            }
            s.abandoned.fetch_add(unrun, Ordering::AcqRel);
        }
        let abandoned = s.abandoned.load(Ordering::Acquire) - abandoned_before;
        let after = s.completed.load(Ordering::Relaxed) + s.panicked.load(Ordering::Relaxed);
        if first {
            if abandoned > 0 {
                tracing::warn!(pool = %s.config.name, abandoned, "pool shut down with tasks abandoned");
            } else {
                tracing::debug!(pool = %s.config.name, "pool shut down cleanly");
            }
        }
        ShutdownReport {
            drained: after - before,
            abandoned,
            clean: abandoned == 0,
        }
    }
}

fn wrap<F>(task: F) -> (Task, TaskHandle<F::Output>)
where
    F: Future + Send + 'static,
    F::Output: TaskOutput + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let task = Box::pin(async move {
        match AssertUnwindSafe(task).catch_unwind().await {
            Ok(output) => {
                let status = if output.is_failure() {
                    Status::Failed
                } else {
                    Status::Completed
                };
                // A dropped handle means the submitter detached: the output is not wanted.
                let _detached = tx.send(Ok(output));
                status
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                let _detached = tx.send(Err(Error::Panicked { message }));
                Status::Panicked
            }
        }
    });
    (task, TaskHandle { rx })
}

impl Shared {
    /// Adds a worker when work waits, up to `max_workers`; never after shutdown has begun.
    fn scale_up(this: &Arc<Self>) {
        if !this.closed.load(Ordering::Acquire) {
            Self::scale_up_even_if_closed(this);
        }
    }

    fn scale_up_even_if_closed(this: &Arc<Self>) {
        if this.rx.is_empty() {
            return;
        }
        let max = this.config.max_workers;
        let mut current = this.workers.load(Ordering::Acquire);
        while current < max {
            match this.workers.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    Self::spawn_worker(this);
                    return;
                }
                Err(now) => current = now,
            }
        }
    }

    /// Spawns one worker; the caller has already counted it in `workers`.
    fn spawn_worker(this: &Arc<Self>) {
        this.started.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::clone(this);
        let fut = worker_loop(shared);
        match this.handles.lock() {
            Ok(mut set) => {
                while set.try_join_next().is_some() {}
                set.spawn_on(fut, &this.runtime);
            }
            Err(poisoned) => {
                poisoned.into_inner().spawn_on(fut, &this.runtime);
            }
        }
    }

    /// Retires a worker if that keeps at least `min_workers`.
    fn try_retire(&self) -> bool {
        let min = self.config.min_workers;
        let mut current = self.workers.load(Ordering::Acquire);
        while current > min {
            match self.workers.compare_exchange_weak(
                current,
                current - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
        false
    }
}

/// Decrements the worker count when a worker ends for any reason but retirement (which has
/// already counted itself out), including being aborted at shutdown.
struct WorkerGuard {
    shared: Arc<Shared>,
    counted: bool,
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        if self.counted {
            self.shared.workers.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Marks a worker busy for one task; if the task is dropped before it finished (the worker was
/// aborted at shutdown), counts it as abandoned.
struct BusyGuard<'a> {
    shared: &'a Shared,
    finished: bool,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.shared.busy.fetch_sub(1, Ordering::AcqRel);
        if !self.finished {
            self.shared.abandoned.fetch_add(1, Ordering::AcqRel);
        }
    }
}

async fn worker_loop(shared: Arc<Shared>) {
    let mut guard = WorkerGuard {
        shared: Arc::clone(&shared),
        counted: true,
    };
    let idle_timeout = shared.config.idle_timeout;
    let mut last_active = Instant::now();
    // One timer for the worker's life, re-armed only when it fires: waiting costs no timer work.
    let idle_timer = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle_timer);
    let mut just_ran = false;
    loop {
        let mut next = shared.rx.try_recv();
        if just_ran && matches!(next, Err(async_channel::TryRecvError::Empty)) {
            // Let the task we just woke (often the submitter, awaiting this result) run first: it
            // commonly submits again at once, and we then take that task without parking and
            // being woken, which is most of the cost of a submit-await round trip.
            tokio::task::yield_now().await;
            next = shared.rx.try_recv();
        }
        let task = match next {
            Ok(task) => task,
            Err(async_channel::TryRecvError::Closed) => break,
            Err(async_channel::TryRecvError::Empty) => {
                shared.idle.fetch_add(1, Ordering::AcqRel);
                let received = loop {
                    tokio::select! {
                        biased;
                        r = shared.rx.recv() => break r.ok(),
                        () = &mut idle_timer => {
                            let deadline = last_active + idle_timeout;
                            if Instant::now() >= deadline {
                                if shared.try_retire() {
                                    shared.idle.fetch_sub(1, Ordering::AcqRel);
                                    shared.retired.fetch_add(1, Ordering::Relaxed);
                                    guard.counted = false;
                                    // A task may have slipped in while we were leaving.
                                    Shared::scale_up(&shared);
                                    return;
                                }
                                idle_timer.as_mut().reset(Instant::now() + idle_timeout);
                            } else {
                                idle_timer.as_mut().reset(deadline);
                            }
                        }
                    }
                };
                shared.idle.fetch_sub(1, Ordering::AcqRel);
                match received {
                    Some(task) => {
                        // A submit that ran while this worker still counted as idle may have
                        // skipped scaling up; check again now that it no longer does.
                        if shared.rx.len() > shared.idle.load(Ordering::Acquire) {
                            Shared::scale_up(&shared);
                        }
                        task
                    }
                    None => break,
                }
            }
        };
        shared.busy.fetch_add(1, Ordering::AcqRel);
        let mut busy = BusyGuard {
            shared: &shared,
            finished: false,
        };
        let start = Instant::now();
        let status = task.await;
        last_active = Instant::now();
        busy.finished = true;
        drop(busy);
        just_ran = true;
        shared.run_time.record(last_active - start);
        match status {
            Status::Completed => shared.completed.fetch_add(1, Ordering::Relaxed),
            Status::Failed => {
                shared.completed.fetch_add(1, Ordering::Relaxed);
                shared.failed.fetch_add(1, Ordering::Relaxed)
            }
            Status::Panicked => shared.panicked.fetch_add(1, Ordering::Relaxed),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn defaults_match_the_design() {
        let c = PoolConfig::default();
        assert_eq!(c.min_workers, 2);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.max_workers, 2 * cpus);
        assert_eq!(c.queue_size, 1000);
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
    }

    #[test]
    fn invalid_sizes_are_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let e = WorkerPool::new(PoolConfig::new("x").min_workers(5).max_workers(2));
            assert!(matches!(e, Err(Error::InvalidConfig(_))));
            let e = WorkerPool::new(PoolConfig::new("x").max_workers(0).min_workers(0));
            assert!(matches!(e, Err(Error::InvalidConfig(_))));
            let e = WorkerPool::new(PoolConfig::new("x").queue_size(0));
            assert!(matches!(e, Err(Error::InvalidConfig(_))));
        });
    }

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        assert!(matches!(
            WorkerPool::new(PoolConfig::new("x")),
            Err(Error::NoRuntime)
        ));
    }

    #[tokio::test]
    async fn results_failures_and_panics_are_reported_and_counted() {
        let pool = WorkerPool::new(PoolConfig::new("t").max_workers(2)).unwrap();
        let ok = pool.submit(async { Ok::<_, String>(1) }).await.unwrap();
        let bad = pool.submit(async { Err::<u8, _>("no") }).await.unwrap();
        let boom = pool
            .submit(async {
                if true {
                    panic!("kaboom");
                }
            })
            .await
            .unwrap();
        assert_eq!(ok.await.unwrap(), Ok(1));
        assert_eq!(bad.await.unwrap(), Err("no"));
        match boom.await {
            Err(Error::Panicked { message }) => assert_eq!(message, "kaboom"),
            other => panic!("expected panic, got {other:?}"),
        }
        // The worker lived on.
        assert_eq!(pool.submit(async { 5u8 }).await.unwrap().await.unwrap(), 5);
        let m = pool.metrics();
        assert_eq!(m.submitted, 4);
        assert_eq!(m.completed, 3);
        assert_eq!(m.failed, 1);
        assert_eq!(m.panicked, 1);
        assert!(m.mean_run_time > Duration::ZERO || m.p99_run_time >= Duration::ZERO);
    }

    #[tokio::test]
    async fn try_submit_refuses_when_full_and_counts_it() {
        let pool = WorkerPool::new(
            PoolConfig::new("full")
                .min_workers(1)
                .max_workers(1)
                .queue_size(1),
        )
        .unwrap();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g = gate.clone();
        let running = pool
            .submit(async move {
                let _p = g.acquire().await;
            })
            .await
            .unwrap();
        // Wait until the worker has taken it, so the queue is empty.
        while pool.metrics().active_workers == 0 {
            tokio::task::yield_now().await;
        }
        let queued = pool.try_submit(async {}).unwrap();
        let err = pool.try_submit(async {}).unwrap_err();
        assert!(matches!(err, Error::Full { capacity: 1, .. }), "{err:?}");
        assert_eq!(pool.metrics().rejected, 1);
        gate.add_permits(10);
        running.await.unwrap();
        queued.await.unwrap();
    }

    #[tokio::test]
    async fn submit_waits_for_room_instead_of_failing() {
        let pool = WorkerPool::new(
            PoolConfig::new("bp")
                .min_workers(1)
                .max_workers(1)
                .queue_size(2),
        )
        .unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..50 {
            let d = done.clone();
            handles.push(
                pool.submit(async move {
                    tokio::task::yield_now().await;
                    d.fetch_add(1, Ordering::SeqCst);
                })
                .await
                .unwrap(),
            );
            assert!(pool.metrics().queue_length <= 2);
        }
        for h in handles {
            h.await.unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), 50);
        assert_eq!(pool.metrics().rejected, 0);
    }

    #[tokio::test]
    async fn submit_after_shutdown_is_refused() {
        let pool = WorkerPool::new(PoolConfig::new("closed")).unwrap();
        let report = pool.shutdown().await;
        assert!(report.clean);
        assert!(pool.is_closed());
        assert!(matches!(
            pool.submit(async {}).await,
            Err(Error::Closed { .. })
        ));
        assert!(matches!(
            pool.try_submit(async {}),
            Err(Error::Closed { .. })
        ));
        // Idempotent.
        assert_eq!(pool.shutdown().await.abandoned, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_drains_then_abandons_what_is_left() {
        let pool = WorkerPool::new(
            PoolConfig::new("drain")
                .min_workers(1)
                .max_workers(1)
                .queue_size(10)
                .shutdown_timeout(Duration::from_secs(5)),
        )
        .unwrap();
        // Three quick tasks and three that outlive the drain.
        let mut quick = Vec::new();
        for _ in 0..3 {
            quick.push(
                pool.submit(async { tokio::time::sleep(Duration::from_millis(10)).await })
                    .await
                    .unwrap(),
            );
        }
        let mut slow = Vec::new();
        for _ in 0..3 {
            slow.push(
                pool.submit(async { tokio::time::sleep(Duration::from_secs(60)).await })
                    .await
                    .unwrap(),
            );
        }
        let report = pool.shutdown().await;
        assert_eq!(report.drained, 3);
        assert_eq!(report.abandoned, 3, "one running + two queued");
        assert!(!report.clean);
        for h in quick {
            h.await.unwrap();
        }
        for h in slow {
            assert_eq!(h.await, Err(Error::Abandoned));
        }
        let m = pool.metrics();
        assert_eq!(m.abandoned, 3);
        assert_eq!(m.workers, 0);
    }
}
