//! Logs (tracing, text or JSON) and metrics (Prometheus text exposition, `malaka_` names).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogConfig, LogFormat};

/// Installs the global log subscriber. `RUST_LOG`, when set, wins over the configured filter.
/// Calling it twice keeps the first subscriber.
pub fn init_logging(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_writer(std::io::stderr);
    // An error means a subscriber is already installed (tests start many apps in one process).
    let _already_installed = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The process's metrics recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".to_owned()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; ours then just renders nothing new.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

/// Copies a pool's snapshot into gauges and counters labelled `pool=<name>`.
pub fn export_pool(m: &malaka_runtime::PoolMetrics) {
    let pool = m.name.clone();
    let g = |name: &'static str, v: f64| metrics::gauge!(name, "pool" => pool.clone()).set(v);
    metrics::gauge!("malaka_pool_workers", "pool" => pool.clone(), "state" => "active")
        .set(m.active_workers as f64);
    metrics::gauge!("malaka_pool_workers", "pool" => pool.clone(), "state" => "idle")
        .set(m.idle_workers as f64);
    g("malaka_pool_min_workers", m.min_workers as f64);
    g("malaka_pool_max_workers", m.max_workers as f64);
    g("malaka_pool_queue_length", m.queue_length as f64);
    g("malaka_pool_queue_capacity", m.queue_capacity as f64);
    g(
        "malaka_pool_task_run_seconds_mean",
        m.mean_run_time.as_secs_f64(),
    );
    g(
        "malaka_pool_task_run_seconds_p99",
        m.p99_run_time.as_secs_f64(),
    );
    let c =
        |name: &'static str, v: u64| metrics::counter!(name, "pool" => pool.clone()).absolute(v);
    c("malaka_pool_tasks_submitted_total", m.submitted);
    c("malaka_pool_tasks_completed_total", m.completed);
    c("malaka_pool_tasks_failed_total", m.failed);
    c("malaka_pool_tasks_panicked_total", m.panicked);
    c("malaka_pool_tasks_rejected_total", m.rejected);
    c("malaka_pool_tasks_abandoned_total", m.abandoned);
    c("malaka_pool_workers_started_total", m.workers_started);
    c("malaka_pool_workers_retired_total", m.workers_retired);
}

/// Copies the event bus's per-listener counters into counters labelled `listener=<name>`.
pub fn export_bus(bus: &malaka_runtime::EventBus) {
    for s in bus.stats() {
        let labels = [("listener", s.name.to_string()), ("topic", s.topic.clone())];
        metrics::counter!("malaka_bus_deliveries_total", &labels).absolute(s.delivered);
        metrics::counter!("malaka_bus_failures_total", &labels).absolute(s.failed);
        metrics::counter!("malaka_bus_panics_total", &labels).absolute(s.panicked);
        metrics::counter!("malaka_bus_retries_total", &labels).absolute(s.retries);
    }
}

/// Copies the supervised tasks' states: `malaka_task_up{task}` (1 while running and healthy,
/// 0 while degraded, restarting or stopped) and `malaka_task_restarts_total{task}`.
pub fn export_tasks(tasks: &[malaka_runtime::TaskStatus]) {
    for t in tasks {
        let up = f64::from(u8::from(t.state == malaka_runtime::TaskState::Running));
        metrics::gauge!("malaka_task_up", "task" => t.name.clone()).set(up);
        metrics::counter!("malaka_task_restarts_total", "task" => t.name.clone())
            .absolute(t.restarts);
    }
}

/// Sets one job queue's gauges: `malaka_jobs{queue,state}` for every state,
/// `malaka_jobs_available{queue}` (jobs that could run now and have not started; the promoter
/// moves due scheduled and retryable jobs there every second), `malaka_jobs_running{queue}` and
/// `malaka_jobs_oldest_available_seconds{queue}` (0 when none waits).
pub fn export_job_queue(
    queue: &str,
    count: impl Fn(malaka_jobs::JobState) -> i64,
    oldest_available: Option<std::time::Duration>,
) {
    use malaka_jobs::JobState;
    for state in JobState::ALL {
        metrics::gauge!("malaka_jobs", "queue" => queue.to_owned(), "state" => state.as_str())
            .set(count(state) as f64);
    }
    metrics::gauge!("malaka_jobs_available", "queue" => queue.to_owned())
        .set(count(JobState::Available) as f64);
    metrics::gauge!("malaka_jobs_running", "queue" => queue.to_owned())
        .set(count(JobState::Running) as f64);
    metrics::gauge!("malaka_jobs_oldest_available_seconds", "queue" => queue.to_owned())
        .set(oldest_available.map_or(0.0, |d| d.as_secs_f64()));
}
