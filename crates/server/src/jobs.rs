//! The job queue in the server: built-in kinds, workers and maintenance from `[jobs]`, `worker`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use malaka_jobs::{
    Job, JobContext, JobError, JobOptions, JobsError, Maintenance, MaintenanceConfig, QueueConfig,
    Registry, Storage, Worker, WorkerConfig, WorkerReport,
};
use malaka_runtime::{Supervisor, WorkerPool};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::app::ServerError;
use crate::config::{Config, JobsConfig};
use crate::db::Database;
use crate::db::DatabaseExt as _;

/// `noop`: does nothing (smoke tests, queue plumbing checks). Any payload is accepted.
pub const NOOP: &str = "noop";

/// `sleep`: waits `ms` milliseconds, returning early when the job is told to stop, and logs
/// `job ran` at info with `job_id`, `attempt` and `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sleep {
    /// How long to sleep, in milliseconds.
    pub ms: u64,
}

impl Job for Sleep {
    const KIND: &'static str = "sleep";

    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let started = Instant::now();
        let cut_short = tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(self.ms)) => false,
            () = ctx.cancelled() => true,
        };
        tracing::info!(
            job_id = ctx.id,
            attempt = ctx.attempt,
            kind = %ctx.kind,
            ms = self.ms,
            cut_short,
            "job ran"
        );
        if cut_short {
            return Err(JobError::retryable(format!(
                "stopped after {} of {} ms: the job was told to stop",
                started.elapsed().as_millis(),
                self.ms
            )));
        }
        Ok(())
    }
}

/// Every kind this server runs: the built-in ones, and notification deliveries and reports
/// when they are given.
pub fn registry(
    notifier: Option<&Arc<malaka_notify::Notifier>>,
    reports: Option<&Arc<malaka_reports::Reports>>,
) -> Registry {
    let mut r = Registry::new().register::<Sleep>().register_fn(
        NOOP,
        JobOptions::default(),
        |_payload, _ctx| async { Ok(()) },
    );
    if let Some(n) = notifier {
        r = n.register(r);
    }
    if let Some(rep) = reports {
        r = rep.register(r);
    }
    r
}

/// The worker settings `[jobs]` describes; queues with concurrency 0 are not worked here.
pub fn worker_config(config: &JobsConfig, shutdown_timeout: Duration) -> WorkerConfig {
    let queues = config
        .queues
        .iter()
        .filter(|(_, q)| q.concurrency > 0)
        .map(|(name, q)| {
            let mut c = QueueConfig::new(name.clone(), q.concurrency);
            if let Some(n) = q.min_workers {
                c = c.min_workers(n);
            }
            if let Some(n) = q.prefetch {
                c = c.prefetch(n);
            }
            c
        })
        .collect();
    WorkerConfig::default()
        .queues(queues)
        .lease(config.lease)
        .poll_interval(config.poll_interval)
        .shutdown_timeout(shutdown_timeout)
}

/// The maintenance settings `[jobs]` describes.
pub fn maintenance_config(config: &JobsConfig) -> MaintenanceConfig {
    let mut m = MaintenanceConfig::default();
    m.rescue_every = config.rescue_every;
    m.completed_retention = config.completed_retention;
    m.failed_retention = config.failed_retention;
    m
}

/// A node's job processing: a [`Worker`] for the configured queues and [`Maintenance`] (rescuer,
/// promoter, pruner).
#[derive(Debug)]
pub struct JobRunner {
    worker: Worker,
    maintenance: Maintenance,
}

impl JobRunner {
    /// Starts working the queues in `config` over `storage`; the worker drains within
    /// `shutdown_timeout` at most.
    ///
    /// # Errors
    /// A pool could not be created or the wake-up subscription failed.
    pub async fn start(
        storage: Arc<dyn Storage>,
        registry: Registry,
        config: &JobsConfig,
        shutdown_timeout: Duration,
        supervisor: &Supervisor,
    ) -> Result<Self, JobsError> {
        let worker = Worker::start_supervised(
            Arc::clone(&storage),
            registry,
            worker_config(config, shutdown_timeout),
            supervisor,
        )
        .await?;
        let maintenance = Maintenance::start_supervised(
            storage,
            maintenance_config(config),
            Vec::new(),
            supervisor,
        );
        Ok(Self {
            worker,
            maintenance,
        })
    }

    /// The pools running jobs, one per queue (`jobs:<queue>`).
    pub fn pools(&self) -> &[WorkerPool] {
        self.worker.pools()
    }

    /// The worker's id (`locked_by` on the jobs it holds).
    pub fn worker_id(&self) -> &str {
        self.worker.id()
    }

    /// Stops maintenance, lets running jobs finish within `budget`, records their outcomes and
    /// gives unfinished jobs back to the queue.
    pub async fn shutdown_within(self, budget: Duration) -> WorkerReport {
        let deadline = Instant::now() + budget;
        let Self {
            worker,
            maintenance,
        } = self;
        if tokio::time::timeout_at(deadline, maintenance.stop())
            .await
            .is_err()
        {
            tracing::warn!("job maintenance still busy at the shutdown deadline; left behind");
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let report = worker.shutdown_within(Some(remaining)).await;
        if report.released > 0 {
            tracing::warn!(
                released = report.released,
                "unfinished jobs given back to the queue at shutdown"
            );
        }
        report
    }
}

/// `malaka worker`: opens and migrates the database, works the job queues and runs maintenance
/// until `signal` resolves, then drains within `shutdown_timeout` and closes the database.
///
/// # Errors
/// The database could not be opened or migrated, or the worker could not start.
pub async fn run_worker(
    config: &Config,
    signal: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let db = Database::connect(&config.database_url(), &config.database).await?;
    db.migrate().await?;
    let supervisor = Supervisor::new(config.supervision.to_runtime());
    let inventory = db.inventory_supervised(&supervisor);
    let notifier = Arc::new(malaka_notify::Notifier::new(
        db.clone(),
        &crate::app::notify_config(config, None),
    )?);
    let runner = JobRunner::start(
        db.job_storage(&config.jobs),
        registry(
            Some(&notifier),
            Some(&Arc::new(malaka_reports::Reports::new(
                db.clone(),
                inventory.clone(),
                config.reports.retention,
            ))),
        ),
        &config.jobs,
        config.shutdown_timeout,
        &supervisor,
    )
    .await?;
    tracing::info!(
        worker = runner.worker_id(),
        database = db.backend().as_str(),
        "malaka worker is running"
    );
    let bus = malaka_runtime::EventBus::new(malaka_runtime::WorkerPool::new(
        config
            .pools
            .events
            .to_pool_config("events", config.shutdown_timeout),
    )?);
    // A worker consumes the inbound queues; publishing stays with `serve` (one publisher per
    // SQLite file; on PostgreSQL `serve` nodes share it by lock).
    let inbound_only = crate::config::SqsConfig {
        outbound_url: String::new(),
        ..config.sqs.clone()
    };
    // Postings bump the balances' generation in the database: `serve`'s cache sees them.
    let commands =
        crate::sqs::Commands::new(&inventory, &bus, Arc::new(|| {}), config.sqs.park_after);
    let sqs = crate::sqs::SqsBridge::start(&inbound_only, &db, &commands, &supervisor).await?;
    signal.await;
    tracing::info!(timeout = ?config.shutdown_timeout, "shutting down: draining running jobs");
    let sqs_stop = async {
        if let Some(b) = sqs {
            b.shutdown(config.shutdown_timeout).await;
        }
    };
    tokio::join!(runner.shutdown_within(config.shutdown_timeout), sqs_stop);
    supervisor.shutdown();
    db.close().await;
    tracing::info!("shutdown complete");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleep_returns_early_when_told_to_stop() {
        let ctx = JobContext::detached(1, Sleep::KIND);
        let started = std::time::Instant::now();
        assert!(Sleep { ms: 5 }.run(&ctx).await.is_ok());
        assert!(started.elapsed() >= Duration::from_millis(5));
    }

    #[test]
    fn worker_settings_follow_the_config() {
        let mut c = JobsConfig::default();
        c.queues.insert(
            "mail".into(),
            crate::config::JobQueueSettings {
                concurrency: 3,
                min_workers: Some(2),
                prefetch: Some(1),
            },
        );
        c.queues.get_mut("default").unwrap().concurrency = 0;
        c.queues.get_mut("notifications").unwrap().concurrency = 0;
        c.queues.get_mut("reports").unwrap().concurrency = 0;
        c.lease = Duration::from_secs(3);
        let w = worker_config(&c, Duration::from_secs(4));
        assert_eq!(w.queues.len(), 1);
        assert_eq!(w.queues[0].name, "mail");
        assert_eq!(w.queues[0].concurrency, 3);
        assert_eq!(w.queues[0].min_workers, 2);
        assert_eq!(w.queues[0].prefetch, 1);
        assert_eq!(w.lease, Duration::from_secs(3));
        assert_eq!(w.heartbeat, Duration::from_secs(1));
        assert_eq!(w.shutdown_timeout, Duration::from_secs(4));
        let m = maintenance_config(&c);
        assert_eq!(m.rescue_every, Duration::from_secs(5));
        let r = registry(None, None);
        let mut kinds: Vec<&str> = r.kinds().collect();
        kinds.sort_unstable();
        assert_eq!(kinds, ["noop", "sleep"]);
    }
}
