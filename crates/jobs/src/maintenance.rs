//! Maintenance that keeps the queue healthy on every node: the rescuer (expired leases back to
//! retryable), the pruner (finished jobs past retention), the promoter (due jobs to available) and
//! the cron scheduler (each tick enqueued exactly once across nodes).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use malaka_runtime::{Supervised, Supervisor, TaskSpec};
use tokio_util::sync::CancellationToken;

use crate::error::JobsError;
use crate::storage::Storage;
use crate::types::NewJob;

/// A job enqueued on a cron schedule.
#[derive(Debug, Clone)]
pub struct CronEntry {
    name: String,
    schedule: Cron,
    job: NewJob,
}

impl CronEntry {
    /// `schedule` is a standard 5-field cron expression (minute hour day-of-month month
    /// day-of-week, UTC), or 6 fields with seconds first.
    ///
    /// ```
    /// use malaka_jobs::{CronEntry, NewJob};
    /// let e = CronEntry::new("nightly-valuation", "0 2 * * *", NewJob::new("report", serde_json::json!({})));
    /// assert!(e.is_ok());
    /// assert!(CronEntry::new("bad", "61 * * * *", NewJob::new("x", serde_json::json!({}))).is_err());
    /// ```
    ///
    /// # Errors
    /// [`JobsError::Invalid`] naming the bad expression.
    pub fn new(name: impl Into<String>, schedule: &str, job: NewJob) -> Result<Self, JobsError> {
        let schedule = Cron::new(schedule)
            .with_seconds_optional()
            .parse()
            .map_err(|e| JobsError::Invalid(format!("cron schedule `{schedule}`: {e}")))?;
        Ok(Self {
            name: name.into(),
            schedule,
            job,
        })
    }

    /// The entry's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.find_next_occurrence(&t, false).ok()
    }
}

/// How often maintenance runs and how long finished jobs are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintenanceConfig {
    /// Rescuer period (default 5 s).
    pub rescue_every: Duration,
    /// Promoter period (default 1 s).
    pub promote_every: Duration,
    /// Pruner period (default 60 s).
    pub prune_every: Duration,
    /// Completed jobs are kept this long (default 24 h).
    pub completed_retention: Duration,
    /// Discarded and cancelled jobs are kept this long (default 7 days).
    pub failed_retention: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            rescue_every: Duration::from_secs(5),
            promote_every: Duration::from_secs(1),
            prune_every: Duration::from_secs(60),
            completed_retention: Duration::from_secs(24 * 3600),
            failed_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Running maintenance; stops when dropped or on [`Maintenance::stop`].
#[derive(Debug)]
pub struct Maintenance {
    stop: CancellationToken,
    tasks: Vec<Supervised>,
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn before(d: Duration) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(3650))
}

impl Maintenance {
    /// Starts the periodic tasks and the cron entries.
    pub fn start(
        storage: Arc<dyn Storage>,
        config: MaintenanceConfig,
        cron: Vec<CronEntry>,
    ) -> Self {
        Self::start_supervised(storage, config, cron, &Supervisor::default())
    }

    /// As [`Self::start`], each task under `supervisor` (`jobs.maintenance.rescuer`,
    /// `.promoter`, `.pruner`, `jobs.cron`), restarted with backoff if it panics or ends.
    pub fn start_supervised(
        storage: Arc<dyn Storage>,
        config: MaintenanceConfig,
        cron: Vec<CronEntry>,
        supervisor: &Supervisor,
    ) -> Self {
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let every = |period: Duration,
                     name: &'static str,
                     f: Arc<
            dyn Fn() -> futures::future::BoxFuture<'static, Result<u64, JobsError>> + Send + Sync,
        >| {
            let task = match name {
                "rescued" => "jobs.maintenance.rescuer",
                "promoted" => "jobs.maintenance.promoter",
                _ => "jobs.maintenance.pruner",
            };
            let stop = stop.clone();
            let spec = TaskSpec::new(task).stop_on(stop.clone());
            supervisor.spawn(spec, move |_| {
                let (stop, f) = (stop.clone(), Arc::clone(&f));
                async move {
                    let mut tick = tokio::time::interval(period.max(Duration::from_millis(10)));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            _ = tick.tick() => {}
                        }
                        match f().await {
                            Ok(0) => {}
                            Ok(n) => {
                                tracing::debug!(task = name, n, "maintenance");
                                metrics::counter!("malaka_jobs_maintenance_total", "task" => name)
                                    .increment(n);
                            }
                            Err(e) => tracing::warn!(task = name, error = %e, "maintenance failed"),
                        }
                    }
                }
            })
        };
        let s = Arc::clone(&storage);
        tasks.push(every(
            config.rescue_every,
            "rescued",
            Arc::new(move || {
                let s = Arc::clone(&s);
                Box::pin(async move {
                    let n = s.rescue_expired().await?;
                    if n > 0 {
                        tracing::warn!(jobs = n, "rescued jobs whose lease expired");
                    }
                    Ok(n)
                })
            }),
        ));
        let s = Arc::clone(&storage);
        tasks.push(every(
            config.promote_every,
            "promoted",
            Arc::new(move || {
                let s = Arc::clone(&s);
                Box::pin(async move { s.promote_due().await })
            }),
        ));
        let s = Arc::clone(&storage);
        let (keep_done, keep_failed) = (config.completed_retention, config.failed_retention);
        tasks.push(every(
            config.prune_every,
            "pruned",
            Arc::new(move || {
                let s = Arc::clone(&s);
                Box::pin(async move {
                    let mut total = 0;
                    loop {
                        let n = s
                            .prune(before(keep_done), before(keep_failed), 10_000)
                            .await?;
                        total += n;
                        if n < 10_000 {
                            return Ok(total);
                        }
                    }
                })
            }),
        ));
        if !cron.is_empty() {
            let stop = stop.clone();
            let spec = TaskSpec::new("jobs.cron").stop_on(stop.clone());
            tasks.push(supervisor.spawn(spec, move |_| {
                run_cron(Arc::clone(&storage), cron.clone(), stop.clone())
            }));
        }
        Self { stop, tasks }
    }

    /// Stops every task.
    pub async fn stop(mut self) {
        self.stop.cancel();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

async fn run_cron(storage: Arc<dyn Storage>, entries: Vec<CronEntry>, stop: CancellationToken) {
    let now = Utc::now();
    let mut next: Vec<Option<DateTime<Utc>>> = entries.iter().map(|e| e.next_after(now)).collect();
    loop {
        let Some(soonest) = next.iter().flatten().min().copied() else {
            return;
        };
        let wait = (soonest - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let now = Utc::now();
        for (entry, slot) in entries.iter().zip(next.iter_mut()) {
            let Some(tick) = *slot else { continue };
            if tick > now {
                continue;
            }
            let job = entry.job.clone().tag(format!("cron:{}", entry.name));
            match storage.cron_tick(&entry.name, tick, job).await {
                Ok(true) => tracing::info!(cron = %entry.name, %tick, "cron tick enqueued"),
                Ok(false) => {
                    tracing::debug!(cron = %entry.name, %tick, "cron tick taken by another node")
                }
                Err(e) => {
                    tracing::warn!(cron = %entry.name, error = %e, "cron tick failed; retrying");
                    continue; // keep the tick; try again next round
                }
            }
            *slot = entry.next_after(tick.max(now - chrono::Duration::seconds(1)));
        }
    }
}
