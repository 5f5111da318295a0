//! The running application: its shared state, startup (database, pools, bus, job queue,
//! listener) and orderly shutdown within the configured time.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::Utc;
use malaka_inventory::{Balance, BalanceFilter, Inventory};
use malaka_jobs::{JobState, Queue};
use malaka_runtime::{EventBus, Supervisor, TaskSpec, WorkerPool};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::config::{Config, JobsConfig};
use crate::db::DatabaseExt as _;
use crate::db::{Database, DbError};
use crate::jobs::JobRunner;
use crate::telemetry;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Database(#[from] DbError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A worker pool's configuration is invalid.
    #[error("pool configuration: {0}")]
    Pool(#[from] malaka_runtime::Error),
    /// The job workers could not start.
    #[error("job queue: {0}")]
    Jobs(#[from] malaka_jobs::JobsError),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Serve(std::io::Error),
    /// The notification settings are unusable.
    #[error("notifications: {0}")]
    Notify(#[from] malaka_notify::NotifyError),
    /// SQS could not start.
    #[error("SQS: {0}")]
    Sqs(#[from] malaka_sqs::SqsError),
}

/// `[notify]` with the dashboard link filled in (from the address the server listens on).
pub fn notify_config(config: &Config, bound: Option<SocketAddr>) -> crate::config::NotifyConfig {
    let mut n = config.notify.clone();
    if n.dashboard_url.is_empty() {
        n.dashboard_url = format!("http://{}", bound.unwrap_or(config.listen));
    }
    n
}

struct Inner {
    db: Database,
    pools: Vec<WorkerPool>,
    bus: EventBus,
    jobs: Queue,
    inventory: Inventory,
    /// Balance reads, by (generation, filter); see `AppState::balance_cache`.
    balances: moka::future::Cache<(u64, BalanceFilter), Arc<Vec<Balance>>>,
    /// Bumped after every committed change of balances or articles on this node.
    balance_generation: std::sync::atomic::AtomicU64,
    /// The database's balance generation last seen (SQLite), and when it was read (ms after
    /// `started`).
    db_generation: std::sync::atomic::AtomicU64,
    db_generation_checked: std::sync::atomic::AtomicU64,
    started: Instant,
    /// Changes other nodes announced (PostgreSQL), and the count last acted on.
    remote_changes: Arc<std::sync::atomic::AtomicU64>,
    remote_seen: std::sync::atomic::AtomicU64,
    /// Inbound commands (SQS, replays).
    commands: crate::sqs::Commands,
    /// The job worker's pools, once `run_until` has started it.
    job_pools: Mutex<Vec<WorkerPool>>,
    /// The SQS inbound consumers' counters, once `run_until` has started them.
    sqs_inbound: Mutex<Vec<crate::sqs::InboundStats>>,
    /// Queues whose gauges /metrics keeps up to date (configured, or seen in the table).
    job_queues: Mutex<BTreeSet<String>>,
    metrics: PrometheusHandle,
    installation_id: String,
    shutting_down: AtomicBool,
    auth: Auth,
    live: crate::live::Live,
    notifier: Arc<malaka_notify::Notifier>,
    reports: Arc<malaka_reports::Reports>,
    supervisor: Supervisor,
    in_flight_keys: crate::http::idempotency::InFlightKeys,
    request_timeout: Duration,
}

/// What every request handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("backend", &self.inner.db.backend())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The database.
    pub fn db(&self) -> &Database {
        &self.inner.db
    }
    /// The event bus.
    pub fn bus(&self) -> &EventBus {
        &self.inner.bus
    }
    /// Every worker pool the server runs, the job worker's excepted (see [`Self::job_pools`]).
    pub fn pools(&self) -> &[WorkerPool] {
        &self.inner.pools
    }
    /// The durable job queue (enqueue, inspect, cancel, retry).
    pub fn jobs(&self) -> &Queue {
        &self.inner.jobs
    }
    /// The inventory.
    pub fn inventory(&self) -> &Inventory {
        &self.inner.inventory
    }
    /// The balance read cache, keyed by (generation, filter). A read takes the generation
    /// before it queries; every committed posting or article change bumps it
    /// ([`Self::balances_changed`]), so a read that raced a posting can only store its answer
    /// under the old generation, which no later read asks for. On PostgreSQL, where other nodes
    /// post too, entries also expire after a second.
    pub fn balance_cache(&self) -> &moka::future::Cache<(u64, BalanceFilter), Arc<Vec<Balance>>> {
        &self.inner.balances
    }
    /// The current balance generation. Changes by other processes count too: on SQLite the
    /// database's counter (`Inventory::generation`, bumped by every commit that changed
    /// balances, whichever process made it) is compared at most every 250 ms; on PostgreSQL
    /// every outbox `NOTIFY` (a posting on any node) counts as a change.
    pub async fn balance_generation(&self) -> u64 {
        let i = &self.inner;
        let remote = i.remote_changes.load(Ordering::Acquire);
        if i.remote_seen.swap(remote, Ordering::AcqRel) != remote {
            self.balances_changed();
        }
        if matches!(i.db, Database::Sqlite(_)) {
            let now = u64::try_from(i.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let last = i.db_generation_checked.load(Ordering::Acquire);
            if now.saturating_sub(last) >= 250
                && i.db_generation_checked
                    .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                match i.inventory.generation().await {
                    Ok(n) => {
                        let n = u64::try_from(n).unwrap_or_default();
                        if i.db_generation.swap(n, Ordering::AcqRel) != n {
                            self.balances_changed();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the balances' generation");
                        self.balances_changed();
                    }
                }
            }
        }
        i.balance_generation.load(Ordering::Acquire)
    }
    /// Counted by the PostgreSQL listener for every change another node announced.
    pub fn remote_changes(&self) -> &Arc<std::sync::atomic::AtomicU64> {
        &self.inner.remote_changes
    }
    /// Balances or articles changed (after commit): later reads go to the database.
    pub fn balances_changed(&self) {
        self.inner.balance_generation.fetch_add(1, Ordering::AcqRel);
        self.inner.balances.invalidate_all();
    }
    /// The job worker's pools, one per queue (`jobs:<queue>`); empty until the server runs.
    pub fn job_pools(&self) -> Vec<WorkerPool> {
        lock(&self.inner.job_pools).clone()
    }
    /// The SQS inbound consumers' counters (empty until [`Application::run_until`] has started
    /// them, or when no inbound queue is configured).
    pub fn sqs_inbound(&self) -> Vec<crate::sqs::InboundStats> {
        lock(&self.inner.sqs_inbound).clone()
    }
    /// The metrics recorder's handle.
    pub fn metrics(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }
    /// This installation's id.
    pub fn installation_id(&self) -> &str {
        &self.inner.installation_id
    }
    /// API tokens and the per-token rate limit.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }
    /// Reports: requests, files, retention.
    pub fn reports(&self) -> &Arc<malaka_reports::Reports> {
        &self.inner.reports
    }
    /// Notification rules and delivery.
    pub fn notifier(&self) -> &Arc<malaka_notify::Notifier> {
        &self.inner.notifier
    }
    /// Live events: alerts, the WebSocket hub, the outbox relay.
    pub fn live(&self) -> &crate::live::Live {
        &self.inner.live
    }
    /// The supervisor of the node's long-lived tasks (their states are in `/readyz`).
    pub fn supervisor(&self) -> &Supervisor {
        &self.inner.supervisor
    }
    /// Longest a request may take (`api.request_timeout`).
    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }
    /// Inbound commands: what SQS messages run, and replays of parked ones.
    pub fn commands(&self) -> &crate::sqs::Commands {
        &self.inner.commands
    }
    /// `Idempotency-Key`s with a request in flight on this node.
    pub fn in_flight_keys(&self) -> &crate::http::idempotency::InFlightKeys {
        &self.inner.in_flight_keys
    }
    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }
    /// Refreshes the metrics that are read from snapshots (pools, bus).
    pub fn export_metrics(&self) {
        for pool in &self.inner.pools {
            telemetry::export_pool(&pool.metrics());
        }
        for pool in lock(&self.inner.job_pools).iter() {
            telemetry::export_pool(&pool.metrics());
        }
        telemetry::export_bus(&self.inner.bus);
        telemetry::export_tasks(&self.inner.supervisor.snapshot());
    }

    /// Refreshes the per-queue job gauges from the jobs table (one grouped query, given up
    /// after 5 s): `malaka_jobs{queue,state}`, `malaka_jobs_available`, `malaka_jobs_running`
    /// and `malaka_jobs_oldest_available_seconds`. A queue once seen keeps reporting zeros.
    pub async fn export_job_metrics(&self) {
        let stats =
            match tokio::time::timeout(Duration::from_secs(5), self.inner.jobs.stats()).await {
                Ok(Ok(stats)) => stats,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "job statistics unavailable for /metrics");
                    return;
                }
                Err(_) => {
                    tracing::warn!("job statistics took over 5 s; skipped for this scrape");
                    return;
                }
            };
        let queues: Vec<String> = {
            let mut known = lock(&self.inner.job_queues);
            known.extend(stats.iter().map(|s| s.queue.clone()));
            known.iter().cloned().collect()
        };
        for queue in queues {
            let s = stats.iter().find(|s| s.queue == queue);
            telemetry::export_job_queue(
                &queue,
                |state: JobState| s.map_or(0, |s| s.count(state)),
                s.and_then(|s| s.oldest_available_age),
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A started (bound, migrated) server, ready to run.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
    shutdown_timeout: Duration,
    jobs: JobsConfig,
    prune_every: Duration,
    sqs: crate::config::SqsConfig,
}

impl Application {
    /// Opens and migrates the database, starts the pools, opens the job queue and binds the
    /// listen address (port 0 picks a free port). Job workers start with [`Self::run_until`].
    ///
    /// # Errors
    /// See [`ServerError`].
    pub async fn build(config: &Config) -> Result<Self, ServerError> {
        let db = Database::connect(&config.database_url(), &config.database).await?;
        db.migrate().await?;
        let installation_id = db.installation_id().await?;
        let events = WorkerPool::new(
            config
                .pools
                .events
                .to_pool_config("events", config.shutdown_timeout),
        )?;
        let bus = EventBus::new(events.clone());
        let jobs = Queue::new(db.job_storage(&config.jobs));
        let supervisor = Supervisor::new(config.supervision.to_runtime());
        let inventory = db.inventory_supervised(&supervisor);
        // The committer is critical: readiness reports it from the start.
        inventory.start();
        let ttl = match &db {
            Database::Sqlite(_) => Duration::from_secs(300),
            Database::Postgres(_) => Duration::from_secs(1),
        };
        let balances = moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(ttl)
            .build();
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let auth = Auth::new(db.clone(), &config.api);
        let remote_changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let live =
            crate::live::Live::new(&db, &inventory, &bus, Arc::clone(&remote_changes), config)
                .await?;
        // A command's posting counts as a change for this node's balance cache at once.
        let changes = Arc::clone(&remote_changes);
        let commands = crate::sqs::Commands::new(
            &inventory,
            &bus,
            Arc::new(move || {
                changes.fetch_add(1, Ordering::AcqRel);
            }),
            config.sqs.park_after,
        );
        let (db_for_reports, inventory_for_reports) = (db.clone(), inventory.clone());
        let notifier = Arc::new(malaka_notify::Notifier::new(
            db.clone(),
            &notify_config(config, listener.local_addr().ok()),
        )?);
        let state = AppState {
            inner: Arc::new(Inner {
                auth,
                db,
                pools: vec![events],
                bus,
                jobs,
                inventory,
                balances,
                balance_generation: std::sync::atomic::AtomicU64::new(0),
                db_generation: std::sync::atomic::AtomicU64::new(0),
                db_generation_checked: std::sync::atomic::AtomicU64::new(0),
                started: Instant::now(),
                remote_changes,
                remote_seen: std::sync::atomic::AtomicU64::new(0),
                commands,
                job_pools: Mutex::new(Vec::new()),
                sqs_inbound: Mutex::new(Vec::new()),
                job_queues: Mutex::new(config.jobs.queues.keys().cloned().collect()),
                metrics: telemetry::metrics_handle(),
                installation_id,
                shutting_down: AtomicBool::new(false),
                live,
                notifier,
                reports: Arc::new(
                    malaka_reports::Reports::new(
                        db_for_reports,
                        inventory_for_reports,
                        config.reports.retention,
                    )
                    .max_active_per_token(config.reports.max_active_per_token),
                ),
                supervisor,
                in_flight_keys: crate::http::idempotency::InFlightKeys::default(),
                request_timeout: config.api.request_timeout,
            }),
        };
        Ok(Self {
            listener,
            state,
            shutdown_timeout: config.shutdown_timeout,
            jobs: config.jobs.clone(),
            prune_every: config.reports.prune_every,
            sqs: config.sqs.clone(),
        })
    }

    /// The bound address.
    ///
    /// # Errors
    /// The socket has no local address (not expected for a bound TCP listener).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The shared state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Starts the job workers and maintenance, serves until `signal` resolves, then stops
    /// accepting, lets requests, jobs and pool work finish within the shutdown timeout, gives
    /// unfinished jobs back to the queue, and closes the database.
    ///
    /// # Errors
    /// The job workers could not start, or the HTTP server failed before the signal.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let Self {
            listener,
            state,
            shutdown_timeout,
            jobs,
            prune_every,
            sqs,
        } = self;
        let runner = JobRunner::start(
            Arc::clone(state.jobs().storage()),
            crate::jobs::registry(Some(state.notifier()), Some(state.reports())),
            &jobs,
            shutdown_timeout,
            state.supervisor(),
        )
        .await?;
        *lock(&state.inner.job_pools) = runner.pools().to_vec();
        state
            .live()
            .start(state.bus(), state.jobs(), state.supervisor())
            .await?;
        let inbox_retention = sqs.inbox_retention;
        let sqs =
            crate::sqs::SqsBridge::start(&sqs, state.db(), state.commands(), state.supervisor())
                .await?;
        if let Some(b) = &sqs {
            *lock(&state.inner.sqs_inbound) = b.inbound_stats().to_vec();
        }
        let prune = {
            let (reports, stop) = (Arc::clone(state.reports()), state.live().stopping());
            state.supervisor().spawn(
                TaskSpec::new("reports.pruner").stop_on(stop.clone()),
                move |_| prune_reports(Arc::clone(&reports), prune_every, stop.clone()),
            )
        };
        let prune_inbox = {
            let (state, stop) = (state.clone(), state.live().stopping());
            let keep = (inbox_retention, state.live().config().outbox_retention);
            state.supervisor().clone().spawn(
                TaskSpec::new("inbox.pruner").stop_on(stop.clone()),
                move |_| prune_inbox(state.clone(), keep, stop.clone()),
            )
        };
        let stop = CancellationToken::new();
        let app = crate::http::router(state.clone());
        let serve = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop.clone().cancelled_owned());
        let mut server = tokio::spawn(async move { serve.await });
        let mut failed = None;
        tokio::select! {
            () = signal => {}
            result = &mut server => {
                // The server stopped on its own: that is a failure.
                failed = Some(match result {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(ServerError::Serve(e)),
                    Err(e) => Err(ServerError::Serve(std::io::Error::other(e))),
                });
            }
        }
        let deadline = Instant::now() + shutdown_timeout;
        tracing::info!(timeout = ?shutdown_timeout, "shutting down: no new connections, draining");
        state.inner.shutting_down.store(true, Ordering::Release);
        stop.cancel();
        // WebSocket clients are told the server is going away; the relay stops between events.
        let http = async {
            if failed.is_none()
                && tokio::time::timeout_at(deadline, &mut server)
                    .await
                    .is_err()
            {
                tracing::warn!("requests still open at the shutdown deadline; closing them");
                server.abort();
            }
        };
        tokio::join!(state.live().shutdown(), http);
        prune.abort();
        prune_inbox.abort();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let pools =
            futures::future::join_all(
                state.inner.pools.iter().map(|p| async move {
                    (p.name().to_owned(), p.shutdown_within(remaining).await)
                }),
            );
        let sqs_stop = async {
            if let Some(b) = sqs {
                b.shutdown(remaining).await;
            }
        };
        let (reports, _jobs, ()) = tokio::join!(pools, runner.shutdown_within(remaining), sqs_stop);
        for (pool, report) in reports {
            if report.abandoned > 0 {
                tracing::warn!(%pool, abandoned = report.abandoned, "pool work abandoned at shutdown");
            }
        }
        state.supervisor().shutdown();
        state.inner.db.close().await;
        tracing::info!("shutdown complete");
        failed.unwrap_or(Ok(()))
    }
}

/// Deletes final inbox records older than `keep.0` and resolved delivery failures older than
/// `keep.1`, hourly, until `stop`.
async fn prune_inbox(state: AppState, keep: (Duration, Duration), stop: CancellationToken) {
    let ago = |d: Duration| {
        Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(3650))
    };
    loop {
        loop {
            match state.inventory().inbox_prune(ago(keep.0), 10_000).await {
                Ok(n) if n > 0 => tracing::info!(records = n, "old inbox records deleted"),
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "pruning the inbox failed");
                    break;
                }
            }
        }
        if let Err(e) = state.live().deliveries().prune(ago(keep.1)).await {
            tracing::warn!(error = %e, "pruning resolved delivery failures failed");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// Deletes expired reports every `every` until `stop`.
async fn prune_reports(
    reports: Arc<malaka_reports::Reports>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        match reports.prune().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(reports = n, "expired reports deleted"),
            Err(e) => tracing::warn!(error = %e, "pruning reports failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every.max(Duration::from_millis(100))) => {}
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT"),
        () = term => tracing::info!("received SIGTERM"),
    }
}
