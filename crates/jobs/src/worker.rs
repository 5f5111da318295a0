//! Workers: per-queue fetchers that claim in batches into `malaka-runtime` pools, a heartbeat
//! that renews leases and delivers cancels, a completer that records outcomes in batches, and a
//! shutdown that drains, then gives unfinished jobs back at once.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use malaka_runtime::{PoolConfig, Supervised, Supervisor, TaskSpec, WorkerPool};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::JobsError;
use crate::job::{JobContext, Registry};
use crate::storage::Storage;
use crate::types::{Finish, JobId, JobRecord, Outcome, Wakeup};

/// One queue's worker settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueConfig {
    /// Queue name.
    pub name: String,
    /// Pool workers kept when idle.
    pub min_workers: usize,
    /// Jobs run at once (the pool's maximum).
    pub concurrency: usize,
    /// Most jobs claimed ahead of free workers (the real number adapts to the jobs' run time),
    /// so a backlog drains without a claim per job.
    pub prefetch: usize,
}

impl QueueConfig {
    /// `concurrency` jobs at once, claiming up to 1000 ahead. How many are really claimed ahead
    /// adapts to the jobs' mean run time (about 250 ms of work, at least one per worker), so a
    /// backlog of quick jobs drains in large claims while slow jobs stay free for other nodes.
    pub fn new(name: impl Into<String>, concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            name: name.into(),
            min_workers: 1,
            concurrency,
            prefetch: 1000,
        }
    }
    /// Sets the pool's idle minimum.
    #[must_use]
    pub fn min_workers(mut self, n: usize) -> Self {
        self.min_workers = n.min(self.concurrency);
        self
    }
    /// Sets the most jobs claimed ahead (0: claim only for free workers).
    #[must_use]
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }
}

/// Worker settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// This worker's name in `locked_by` (default: host-pid-random).
    pub id: String,
    /// Queues to work.
    pub queues: Vec<QueueConfig>,
    /// Lease on each claimed job, renewed by the heartbeat (default 30 s).
    pub lease: Duration,
    /// Heartbeat period (default 10 s; keep it well under `lease`).
    pub heartbeat: Duration,
    /// Fallback poll when no wake-up arrives (default 2 s).
    pub poll_interval: Duration,
    /// Drain time at shutdown before unfinished jobs are given back (default 5 s).
    pub shutdown_timeout: Duration,
    /// Most jobs claimed by one statement (default 500).
    pub claim_batch: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into());
        Self {
            id: format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..)),
            queues: vec![QueueConfig::new(crate::types::DEFAULT_QUEUE, 10)],
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            poll_interval: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(5),
            claim_batch: 500,
        }
    }
}

impl WorkerConfig {
    /// Works these queues.
    #[must_use]
    pub fn queues(mut self, queues: Vec<QueueConfig>) -> Self {
        self.queues = queues;
        self
    }
    /// Sets the lease; the heartbeat becomes a third of it.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self.heartbeat = lease / 3;
        self
    }
    /// Sets the shutdown drain time.
    #[must_use]
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }
    /// Sets the fallback poll.
    #[must_use]
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }
    /// Sets the worker id.
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

/// Claimed jobs waiting for a worker on this node, most urgent first; a worker task takes the
/// best one when it starts, so the order of claims (two claimers, prefetch) does not decide the
/// order of runs, and an urgent job claimed later overtakes prefetched ones.
struct Local {
    ready: Mutex<std::collections::BinaryHeap<Pending>>,
    /// The last claim filled every slot it asked for: the second claimer joins in.
    backlog: AtomicBool,
    backlog_started: Notify,
    /// Jobs of the queue this node holds (waiting here or running): [`JobSlot`]s alive.
    in_flight: Arc<AtomicUsize>,
    /// Recent run time of the queue's jobs, microseconds (a moving average, so a change of
    /// workload shows within a few dozen jobs); 0 before the first.
    recent_run_us: AtomicU64,
}

impl Local {
    /// Folds one job's run time into [`Self::recent_run_us`] (weight 1/16).
    fn record_run(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let _prev = self
            .recent_run_us
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    old - old / 16 + sample / 16
                })
            });
    }

    fn recent_run(&self) -> Duration {
        Duration::from_micros(self.recent_run_us.load(Ordering::Acquire))
    }
}

/// A worker slot with one claimed job in it; counted in [`Local::in_flight`] while it lives.
struct JobSlot {
    _permit: OwnedSemaphorePermit,
    in_flight: Arc<AtomicUsize>,
}

impl JobSlot {
    fn new(permit: OwnedSemaphorePermit, local: &Local) -> Self {
        local.in_flight.fetch_add(1, Ordering::AcqRel);
        Self {
            _permit: permit,
            in_flight: Arc::clone(&local.in_flight),
        }
    }
}

impl Drop for JobSlot {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Pending {
    job: JobRecord,
    held: Arc<Held>,
    slot: JobSlot,
}

impl Pending {
    fn key(&self) -> (i16, chrono::DateTime<Utc>, JobId) {
        (self.job.priority, self.job.run_at, self.job.id)
    }
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    /// Reversed: `BinaryHeap` pops the greatest, and the most urgent job has the smallest key.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.key().cmp(&self.key())
    }
}

/// A job this worker holds.
struct Held {
    attempt: i32,
    queue: String,
    cancel: CancellationToken,
    cancel_requested: AtomicBool,
    started: AtomicBool,
}

/// A worker's offer to take jobs of one queue the moment they are enqueued in this process.
///
/// A storage that supports it ([`Storage::attach`]) inserts a new job already claimed for an
/// idle worker and hands it over, instead of inserting it available and waking a claimer that
/// claims it with a second statement. Only while one of the queue's workers is idle; the job is
/// claimed by the same rules (attempt 1, a lease, fenced by the attempt), so a crash before it
/// runs leaves it to the rescuer as any claimed job.
pub struct Taker {
    queue: String,
    worker: String,
    lease: Duration,
    concurrency: usize,
    slots: Arc<Semaphore>,
    pool: WorkerPool,
    local: Arc<Local>,
    shared: std::sync::Weak<Shared>,
}

impl std::fmt::Debug for Taker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taker")
            .field("queue", &self.queue)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

/// A worker slot reserved by [`Taker::reserve`]; dropping it gives the slot back.
#[derive(Debug)]
pub struct Slot(OwnedSemaphorePermit);

impl Taker {
    /// The queue it takes jobs of.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The worker id to claim the job for.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// The lease to claim the job under.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// A slot for one job, if one of the queue's workers is idle (not merely room to claim
    /// ahead) and the worker is not stopping.
    pub fn reserve(&self) -> Option<Slot> {
        let shared = self.shared.upgrade()?;
        if shared.stopping.is_cancelled() {
            return None;
        }
        // Jobs, not slots: the room a claimer holds for a claim under way (which may find the
        // queue empty) must not hide an idle worker from the job enqueued meanwhile.
        if self.local.in_flight.load(Ordering::Acquire) >= self.concurrency {
            return None;
        }
        Arc::clone(&self.slots).try_acquire_owned().ok().map(Slot)
    }

    /// Runs `job`, which the storage claimed for [`Self::worker`] (attempt and lease set), in
    /// `slot`. Gives the job back if the worker has stopped: the caller then releases it.
    ///
    /// # Errors
    /// The worker stopped; the job is returned.
    pub fn take(&self, job: JobRecord, slot: Slot) -> Result<(), Box<JobRecord>> {
        let Some(shared) = self.shared.upgrade() else {
            return Err(Box::new(job));
        };
        if shared.stopping.is_cancelled() {
            return Err(Box::new(job));
        }
        let held = hold(&shared, &job);
        self.local
            .ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Pending {
                job,
                held,
                slot: JobSlot::new(slot.0, &self.local),
            });
        // The slot guarantees room in the pool's queue; a closed pool means shutdown, which
        // gives every held job back.
        if let Err(e) = self
            .pool
            .try_submit(run_next(Arc::clone(&shared), Arc::clone(&self.local)))
        {
            tracing::debug!(queue = %self.queue, error = %e, "handed-over job left to shutdown");
        }
        Ok(())
    }
}

/// Registers a claimed job as held by this worker and records how long it waited.
fn hold(shared: &Shared, job: &JobRecord) -> Arc<Held> {
    let held = Arc::new(Held {
        attempt: job.attempt,
        queue: job.queue.clone(),
        cancel: CancellationToken::new(),
        cancel_requested: AtomicBool::new(false),
        started: AtomicBool::new(false),
    });
    shared.held().insert(job.id, Arc::clone(&held));
    let wait = (Utc::now() - job.run_at).to_std().unwrap_or_default();
    metrics::histogram!("malaka_jobs_wait_seconds", "queue" => job.queue.clone())
        .record(wait.as_secs_f64());
    held
}

struct Shared {
    storage: Arc<dyn Storage>,
    registry: Registry,
    config: WorkerConfig,
    held: Mutex<HashMap<JobId, Arc<Held>>>,
    completions: mpsc::Sender<Finish>,
    stopping: CancellationToken,
    /// Jobs that were claimed but not started when shutdown began.
    unstarted: Mutex<Vec<(JobId, i32)>>,
}

impl Shared {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Arc<Held>>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What `shutdown` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerReport {
    /// Jobs given back to the queue (unfinished at the deadline, or claimed but never started).
    pub released: u64,
}

/// A running worker; call [`Worker::shutdown`] to stop it.
pub struct Worker {
    shared: Arc<Shared>,
    pools: Vec<WorkerPool>,
    tasks: Vec<Supervised>,
    completer: Supervised,
    flush: CancellationToken,
    /// Offered to the storage for jobs enqueued in this process (it keeps weak references).
    _takers: Vec<Arc<Taker>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.shared.config.id)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts working `config.queues` with the kinds in `registry`.
    ///
    /// # Errors
    /// A pool could not be created or the wake-up subscription failed.
    pub async fn start(
        storage: Arc<dyn Storage>,
        registry: Registry,
        config: WorkerConfig,
    ) -> Result<Self, JobsError> {
        Self::start_supervised(storage, registry, config, &Supervisor::default()).await
    }

    /// As [`Self::start`], with the worker's long-lived tasks under `supervisor`: the claimers
    /// (`jobs.claimer.<queue>.<n>`), the wake-up listener (`jobs.wakeups`), the heartbeat
    /// (`jobs.heartbeat`) and the completer (`jobs.completer`). Each is restarted with backoff
    /// if it panics or ends unexpectedly; a job it held meanwhile runs or is rescued after its
    /// lease.
    ///
    /// # Errors
    /// A pool could not be created.
    pub async fn start_supervised(
        storage: Arc<dyn Storage>,
        registry: Registry,
        config: WorkerConfig,
        supervisor: &Supervisor,
    ) -> Result<Self, JobsError> {
        let (tx, rx) = mpsc::channel(8192);
        let shared = Arc::new(Shared {
            storage: Arc::clone(&storage),
            registry,
            config: config.clone(),
            held: Mutex::new(HashMap::new()),
            completions: tx,
            stopping: CancellationToken::new(),
            unstarted: Mutex::new(Vec::new()),
        });
        let flush = CancellationToken::new();
        let completer = {
            let (storage, rx, flush) = (
                Arc::clone(&storage),
                Arc::new(tokio::sync::Mutex::new(rx)),
                flush.clone(),
            );
            supervisor.spawn(
                TaskSpec::new("jobs.completer").stop_on(flush.clone()),
                move |_| {
                    let (storage, rx, flush) =
                        (Arc::clone(&storage), Arc::clone(&rx), flush.clone());
                    async move {
                        // A restarted completer takes the same outcomes over.
                        let mut rx = rx.lock().await;
                        completer(storage, &mut rx, flush).await;
                    }
                },
            )
        };
        let mut wakers = HashMap::new();
        let mut pools = Vec::new();
        let mut tasks = Vec::new();
        let mut takers = Vec::new();
        for q in &config.queues {
            let pool = WorkerPool::new(
                PoolConfig::new(format!("jobs:{}", q.name))
                    .min_workers(q.min_workers.min(q.concurrency))
                    .max_workers(q.concurrency)
                    .queue_size(q.concurrency + q.prefetch + 1)
                    .shutdown_timeout(config.shutdown_timeout),
            )?;
            let notify = Arc::new(Notify::new());
            wakers.insert(q.name.clone(), Arc::clone(&notify));
            pools.push(pool.clone());
            // Two claimers per queue: one claims while the other's batch is being handed out,
            // so a backlog never waits on a claim's round trip. They share the queue's slots.
            let slots = Arc::new(Semaphore::new(q.concurrency + q.prefetch));
            let local = Arc::new(Local {
                ready: Mutex::new(std::collections::BinaryHeap::new()),
                backlog: AtomicBool::new(false),
                backlog_started: Notify::new(),
                in_flight: Arc::new(AtomicUsize::new(0)),
                recent_run_us: AtomicU64::new(0),
            });
            let taker = Arc::new(Taker {
                queue: q.name.clone(),
                worker: config.id.clone(),
                lease: config.lease,
                concurrency: q.concurrency,
                slots: Arc::clone(&slots),
                pool: pool.clone(),
                local: Arc::clone(&local),
                shared: Arc::downgrade(&shared),
            });
            storage.attach(Arc::clone(&taker));
            takers.push(taker);
            for index in 0..FETCHERS_PER_QUEUE {
                let (shared, q, pool, notify, slots, local) = (
                    Arc::clone(&shared),
                    q.clone(),
                    pool.clone(),
                    Arc::clone(&notify),
                    Arc::clone(&slots),
                    Arc::clone(&local),
                );
                let spec = TaskSpec::new(format!("jobs.claimer.{}.{index}", q.name))
                    .stop_on(shared.stopping.clone());
                tasks.push(supervisor.spawn(spec, move |_| {
                    fetcher(
                        Arc::clone(&shared),
                        q.clone(),
                        pool.clone(),
                        Arc::clone(&notify),
                        Arc::clone(&slots),
                        Arc::clone(&local),
                        index,
                    )
                }));
            }
        }
        // The first subscription is made here, so a database without wake-ups fails the start;
        // a restarted listener subscribes again.
        let first = tokio::sync::Mutex::new(Some(storage.subscribe().await?));
        let first = Arc::new(first);
        let wakers = Arc::new(wakers);
        {
            let shared = Arc::clone(&shared);
            let spec = TaskSpec::new("jobs.wakeups").stop_on(shared.stopping.clone());
            tasks.push(supervisor.spawn(spec, move |_| {
                let (shared, wakers, first) =
                    (Arc::clone(&shared), Arc::clone(&wakers), Arc::clone(&first));
                async move {
                    let rx = match first.lock().await.take() {
                        Some(rx) => rx,
                        None => shared.storage.subscribe().await?,
                    };
                    dispatch_wakeups(shared, rx, &wakers).await;
                    Ok::<(), JobsError>(())
                }
            }));
        }
        {
            let shared = Arc::clone(&shared);
            let spec = TaskSpec::new("jobs.heartbeat").stop_on(shared.stopping.clone());
            tasks.push(supervisor.spawn(spec, move |_| heartbeat(Arc::clone(&shared))));
        }
        tracing::info!(worker = %config.id, queues = ?config.queues.iter().map(|q| &q.name).collect::<Vec<_>>(), "job worker started");
        Ok(Self {
            shared,
            pools,
            tasks,
            completer,
            flush,
            _takers: takers,
        })
    }

    /// The pools running jobs, one per queue (named `jobs:<queue>`), for metrics.
    pub fn pools(&self) -> &[WorkerPool] {
        &self.pools
    }

    /// This worker's id.
    pub fn id(&self) -> &str {
        &self.shared.config.id
    }

    /// Stops claiming, lets running jobs finish within `shutdown_timeout` (within `budget` if
    /// given and shorter), records every outcome, and gives unfinished jobs back to the queue so
    /// another worker takes them at once.
    pub async fn shutdown_within(self, budget: Option<Duration>) -> WorkerReport {
        let s = &self.shared;
        let timeout = budget.map_or(s.config.shutdown_timeout, |b| {
            b.min(s.config.shutdown_timeout)
        });
        let deadline = Instant::now() + timeout;
        s.stopping.cancel();
        // Shortly before the deadline, tell the jobs still running to stop (`ctx.cancelled()`),
        // so a cooperative job can end cleanly before its task is aborted.
        let grace = (timeout / 5).min(Duration::from_secs(1));
        let warn = {
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline - grace).await;
                for h in shared.held().values() {
                    h.cancel.cancel();
                }
            })
        };
        // Jobs still queued in a pool see `stopping` and hand themselves back without running.
        let drains = self.pools.iter().map(|p| p.shutdown_within(timeout));
        futures::future::join_all(drains).await;
        warn.abort();
        // Whatever is still held did not finish: give it back.
        let mut back: Vec<(JobId, i32, bool)> = s
            .held()
            .drain()
            .map(|(id, h)| {
                h.cancel.cancel();
                (id, h.attempt, h.started.load(Ordering::Acquire))
            })
            .collect();
        back.extend(
            s.unstarted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .drain(..)
                .map(|(id, a)| (id, a, false)),
        );
        for t in &self.tasks {
            t.abort();
        }
        // Record every outcome that was reported before giving leases back.
        drop(self.tasks);
        let Self {
            shared,
            completer,
            flush,
            ..
        } = self;
        let storage = Arc::clone(&shared.storage);
        drop(shared);
        flush.cancel();
        // Writing the last outcomes gets what is left of the budget (at least a second).
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        if tokio::time::timeout(left, completer).await.is_err() {
            tracing::warn!("last job outcomes not recorded in time; those jobs will run again");
        }
        let released = match storage.release(&back).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, jobs = back.len(), "could not give jobs back at shutdown; the rescuer will after their lease");
                0
            }
        };
        tracing::info!(released, "job worker stopped");
        WorkerReport { released }
    }

    /// [`Self::shutdown_within`] with the configured timeout.
    pub async fn shutdown(self) -> WorkerReport {
        self.shutdown_within(None).await
    }
}

/// Claims jobs for one queue while there is room, and waits for wake-ups when it is empty.
const FETCHERS_PER_QUEUE: usize = 2;

/// How far ahead a node claims: about this much work beyond what its workers are running.
const PREFETCH_HORIZON: Duration = Duration::from_millis(250);

/// Jobs to claim ahead of free workers: enough for [`PREFETCH_HORIZON`] at the jobs' mean run
/// time, at most the configured prefetch and at least one job per worker (or the configured
/// prefetch, if smaller). Before any job has run, the configured prefetch.
fn adaptive_prefetch(q: &QueueConfig, mean_run: Duration) -> usize {
    if mean_run.is_zero() {
        return q.prefetch;
    }
    let per_worker = PREFETCH_HORIZON.as_secs_f64() / mean_run.as_secs_f64();
    let want = (q.concurrency as f64 * per_worker).min(q.prefetch as f64) as usize;
    want.clamp(q.concurrency.min(q.prefetch), q.prefetch)
}

async fn fetcher(
    shared: Arc<Shared>,
    q: QueueConfig,
    pool: WorkerPool,
    notify: Arc<Notify>,
    slots: Arc<Semaphore>,
    local: Arc<Local>,
    index: usize,
) {
    let total = q.concurrency + q.prefetch;
    let mut failures = 0u32;
    loop {
        if index > 0 && !local.backlog.load(Ordering::Acquire) {
            // Only while a backlog drains does a second claimer help (two claims in flight);
            // otherwise one claimer keeps claims whole and in order.
            tokio::select! {
                () = shared.stopping.cancelled() => return,
                () = local.backlog_started.notified() => {}
                () = tokio::time::sleep(shared.config.poll_interval) => {}
            }
            continue;
        }
        let first = tokio::select! {
            () = shared.stopping.cancelled() => return,
            p = Arc::clone(&slots).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        // Hold no more than this node will get through soon, so other nodes get their share of
        // slow jobs while a backlog of quick ones still drains in large claims.
        let limit = q.concurrency + adaptive_prefetch(&q, local.recent_run());
        // Claim in worthwhile batches: while every worker is busy anyway, wait until a share of
        // the slots is free instead of claiming a job or two per statement.
        let low_water =
            (limit / (2 * FETCHERS_PER_QUEUE)).clamp(1, shared.config.claim_batch.max(1));
        let mut permits = vec![first];
        loop {
            while permits.len() < shared.config.claim_batch {
                match Arc::clone(&slots).try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let in_flight = total - slots.available_permits() - permits.len();
            permits.truncate(limit.saturating_sub(in_flight).max(1));
            if permits.len() >= low_water || in_flight < q.concurrency {
                break;
            }
            tokio::select! {
                () = shared.stopping.cancelled() => return,
                p = Arc::clone(&slots).acquire_owned() => match p { Ok(p) => permits.push(p), Err(_) => return },
            }
        }
        let wanted = permits.len();
        let claimed_jobs = shared
            .storage
            .claim(&q.name, wanted, &shared.config.id, shared.config.lease)
            .await;
        let jobs = match claimed_jobs {
            Ok(jobs) => {
                failures = 0;
                jobs
            }
            Err(e) => {
                failures += 1;
                let wait = Duration::from_millis(100 * u64::from(failures.min(50)));
                tracing::warn!(queue = %q.name, error = %e, ?wait, "claim failed");
                metrics::counter!("malaka_jobs_claim_errors_total", "queue" => q.name.clone())
                    .increment(1);
                drop(permits);
                tokio::select! {
                    () = shared.stopping.cancelled() => return,
                    () = tokio::time::sleep(wait) => continue,
                }
            }
        };
        let got = jobs.len();
        if got == wanted {
            if !local.backlog.swap(true, Ordering::AcqRel) {
                local.backlog_started.notify_waiters();
            }
        } else {
            local.backlog.store(false, Ordering::Release);
        }
        let mut permits = permits.into_iter();
        let mut claimed = 0;
        {
            let mut ready = local
                .ready
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for job in jobs {
                let Some(permit) = permits.next() else { break };
                let held = hold(&shared, &job);
                let slot = JobSlot::new(permit, &local);
                ready.push(Pending { job, held, slot });
                claimed += 1;
            }
        }
        drop(permits);
        for _ in 0..claimed {
            if pool
                .submit(run_next(Arc::clone(&shared), Arc::clone(&local)))
                .await
                .is_err()
            {
                // The pool closed: shutdown is under way and will give held jobs back.
                return;
            }
        }
        if got < wanted && index > 0 {
            // The backlog is drained: this claimer goes back to waiting for the next one. It
            // must not wait on the queue's wake-ups: it would take one the first claimer needs
            // (each wakes one waiter) and then claim nothing.
            continue;
        }
        if got < wanted {
            // The queue is empty (for now): sleep until a wake-up, the next scheduled job, or
            // the fallback poll.
            let mut until = Instant::now() + shared.config.poll_interval;
            if let Ok(Some(next)) = shared.storage.next_run_at(&q.name).await {
                let delta = (next - Utc::now()).to_std().unwrap_or_default();
                until = until.min(Instant::now() + delta);
            }
            tokio::select! {
                () = shared.stopping.cancelled() => return,
                () = notify.notified() => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }
}

/// Runs the most urgent job waiting on this node (one task is submitted per claimed job).
async fn run_next(shared: Arc<Shared>, local: Arc<Local>) {
    let next = local
        .ready
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop();
    if let Some(Pending { job, held, slot }) = next
        && let Some(took) = run_job(shared, job, held, slot).await
    {
        local.record_run(took);
    }
}

/// Runs one job and records its outcome; how long it ran, if it ran.
async fn run_job(
    shared: Arc<Shared>,
    job: JobRecord,
    held: Arc<Held>,
    slot: JobSlot,
) -> Option<Duration> {
    let _slot = slot;
    if shared.stopping.is_cancelled() {
        // Claimed ahead but never started: give it back at shutdown.
        shared.held().remove(&job.id);
        shared
            .unstarted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((job.id, job.attempt));
        return None;
    }
    held.started.store(true, Ordering::Release);
    let queue = job.queue.clone();
    let kind = job.kind.clone();
    let started = Instant::now();
    let outcome = match shared.registry.get(&job.kind) {
        None => Outcome::Discard {
            error: format!(
                "unknown job kind `{}`: no handler is registered for it on worker {}",
                job.kind, shared.config.id
            ),
        },
        Some(handler) => {
            let ctx = JobContext::new(&job, held.cancel.clone());
            let fut = AssertUnwindSafe((handler.run)(job.payload.clone(), ctx)).catch_unwind();
            let result = match tokio::time::timeout(handler.options.timeout, fut).await {
                Ok(Ok(r)) => r,
                Ok(Err(panic)) => Err(crate::error::JobError::retryable(format!(
                    "panicked: {}",
                    panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic".into())
                ))),
                Err(_) => Err(crate::error::JobError::retryable(format!(
                    "timed out after {:?}",
                    handler.options.timeout
                ))),
            };
            if result.is_err()
                && shared.stopping.is_cancelled()
                && held.cancel.is_cancelled()
                && !held.cancel_requested.load(Ordering::Acquire)
            {
                // Told to stop because the worker is shutting down: not a failure. The job stays
                // held, and shutdown gives it back to the queue at once, attempt counted.
                tracing::info!(job = job.id, "job stopped for shutdown; giving it back");
                return None;
            }
            match result {
                // A job that stops early because it was cancelled returns `Ok` as often as not:
                // once a cancel was asked for, the job ends `cancelled` however its run returns.
                Ok(()) if held.cancel_requested.load(Ordering::Acquire) => {
                    Outcome::Cancelled { error: None }
                }
                Ok(()) => Outcome::Completed,
                Err(e) if held.cancel_requested.load(Ordering::Acquire) => Outcome::Cancelled {
                    error: Some(e.message().to_owned()),
                },
                Err(e) if e.snoozed_for().is_some() => {
                    let delay = e.snoozed_for().unwrap_or_default();
                    tracing::debug!(job = job.id, ?delay, reason = e.message(), "job snoozed");
                    Outcome::Snooze {
                        at: Utc::now()
                            + chrono::Duration::from_std(delay)
                                .unwrap_or(chrono::Duration::hours(1)),
                    }
                }
                Err(e) if e.is_retryable() && job.attempt < job.max_attempts => {
                    let delay = handler
                        .options
                        .backoff
                        .backoff(u32::try_from(job.attempt).unwrap_or(1));
                    Outcome::Retry {
                        at: Utc::now()
                            + chrono::Duration::from_std(delay)
                                .unwrap_or(chrono::Duration::hours(1)),
                        error: e.message().to_owned(),
                    }
                }
                Err(e) => Outcome::Discard {
                    error: e.message().to_owned(),
                },
            }
        }
    };
    let label = match &outcome {
        Outcome::Completed => "completed",
        Outcome::Retry { .. } => "retried",
        Outcome::Snooze { .. } => "snoozed",
        Outcome::Discard { .. } => "discarded",
        Outcome::Cancelled { .. } => "cancelled",
    };
    metrics::counter!("malaka_jobs_finished_total", "queue" => queue.clone(), "kind" => kind.clone(), "outcome" => label)
        .increment(1);
    let took = started.elapsed();
    metrics::histogram!("malaka_jobs_run_seconds", "queue" => queue, "kind" => kind)
        .record(took.as_secs_f64());
    if let Outcome::Discard { error } | Outcome::Retry { error, .. } = &outcome {
        tracing::warn!(job = job.id, attempt = job.attempt, outcome = label, %error, "job failed");
    }
    shared.held().remove(&job.id);
    let finish = Finish {
        id: job.id,
        attempt: job.attempt,
        outcome,
    };
    // Waits for room: the completer is never skipped, only slowed.
    if shared.completions.send(finish).await.is_err() {
        tracing::error!(
            job = job.id,
            "completer gone; the job's lease will expire and it will run again"
        );
    }
    Some(took)
}

/// Writes outcomes in batches: whatever has arrived while the previous batch was written.
/// A batch of outcomes at least this big means the queue is busy: wait a moment for more.
const COALESCE_ABOVE: usize = 32;
/// Stop waiting for more outcomes at this many.
const COALESCE_UP_TO: usize = 2000;
/// How long a busy completer waits for more outcomes before writing.
const COALESCE_FOR: Duration = Duration::from_millis(2);

async fn completer(
    storage: Arc<dyn Storage>,
    rx: &mut mpsc::Receiver<Finish>,
    flush_and_stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(1024);
    loop {
        let got = tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, 4096) => n,
            () = flush_and_stop.cancelled() => {
                // Shutdown: take what has been reported, write it, and stop.
                while let Ok(f) = rx.try_recv() {
                    batch.push(f);
                }
                if batch.is_empty() {
                    return;
                }
                batch.len()
            }
        };
        if got == 0 {
            return;
        }
        if (COALESCE_ABOVE..COALESCE_UP_TO).contains(&batch.len()) && !flush_and_stop.is_cancelled()
        {
            // Busy: outcomes are arriving faster than single writes. Let a few more arrive so
            // each statement records hundreds (a job's outcome is at most this much later).
            tokio::time::sleep(COALESCE_FOR).await;
            while batch.len() < COALESCE_UP_TO {
                match rx.try_recv() {
                    Ok(f) => batch.push(f),
                    Err(_) => break,
                }
            }
        }
        let mut failures = 0u32;
        loop {
            match storage.finish(&batch).await {
                Ok(_) => break,
                Err(e) => {
                    failures += 1;
                    let wait = Duration::from_millis(100 * u64::from(failures.min(50)));
                    tracing::warn!(error = %e, jobs = batch.len(), ?wait, "recording job outcomes failed; retrying");
                    metrics::counter!("malaka_jobs_finish_errors_total").increment(1);
                    tokio::time::sleep(wait).await;
                }
            }
        }
        batch.clear();
        if flush_and_stop.is_cancelled() && rx.is_empty() {
            return;
        }
    }
}

async fn dispatch_wakeups(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Wakeup>,
    wakers: &HashMap<String, Arc<Notify>>,
) {
    while let Some(w) = rx.recv().await {
        match w {
            Wakeup::Available(q) => {
                if let Some(n) = wakers.get(&q) {
                    n.notify_one();
                }
            }
            Wakeup::Resync => {
                for n in wakers.values() {
                    n.notify_one();
                }
            }
            Wakeup::Cancel(id) => {
                let held = shared.held().get(&id).cloned();
                if let Some(h) = held {
                    h.cancel_requested.store(true, Ordering::Release);
                    h.cancel.cancel();
                }
            }
        }
    }
}

/// Renews the leases of every held job; cancels jobs whose lease was lost or whose cancel was
/// asked for.
async fn heartbeat(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.heartbeat.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let jobs: Vec<(JobId, i32)> = shared
            .held()
            .iter()
            .map(|(id, h)| (*id, h.attempt))
            .collect();
        if jobs.is_empty() {
            continue;
        }
        match shared.storage.heartbeat(&jobs, shared.config.lease).await {
            Ok(statuses) => {
                let kept: HashMap<JobId, bool> = statuses
                    .iter()
                    .map(|s| (s.id, s.cancel_requested))
                    .collect();
                let held = shared.held();
                for (id, attempt) in jobs {
                    let Some(h) = held.get(&id) else { continue };
                    if h.attempt != attempt {
                        continue;
                    }
                    match kept.get(&id) {
                        Some(true) => {
                            h.cancel_requested.store(true, Ordering::Release);
                            h.cancel.cancel();
                        }
                        Some(false) => {}
                        None => {
                            tracing::warn!(job = id, queue = %h.queue, "lease lost; stopping the job");
                            h.cancel.cancel();
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed; leases not renewed this round");
                metrics::counter!("malaka_jobs_heartbeat_errors_total").increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_adapts_to_run_time() {
        let q = QueueConfig::new("q", 24);
        // Nothing has run yet: the configured cap.
        assert_eq!(adaptive_prefetch(&q, Duration::ZERO), 1000);
        // Quick jobs: the cap.
        assert_eq!(adaptive_prefetch(&q, Duration::from_micros(10)), 1000);
        // 10 ms jobs: 250 ms of work for 24 workers = 600.
        assert_eq!(adaptive_prefetch(&q, Duration::from_millis(10)), 600);
        // Slow jobs: one per worker.
        assert_eq!(adaptive_prefetch(&q, Duration::from_secs(5)), 24);
        // A smaller cap always wins.
        let small = QueueConfig::new("q", 24).prefetch(5);
        assert_eq!(adaptive_prefetch(&small, Duration::from_secs(5)), 5);
        let none = QueueConfig::new("q", 24).prefetch(0);
        assert_eq!(adaptive_prefetch(&none, Duration::from_millis(1)), 0);
    }
}
