//! The job queue through the server: the in-process worker and the job gauges of a running
//! server (the `malaka jobs` commands and `malaka worker` processes: crates/cli/tests/it/jobs.rs).

use crate::common;

use std::time::{Duration, Instant};

use malaka_jobs::{JobRecord, JobState, NewJob, Queue};
use serde_json::json;

/// The test looks at a completed job, which the default configuration deletes as it completes.
fn keeping_completed() -> malaka_server::config::JobsConfig {
    malaka_server::config::JobsConfig {
        completed_retention: Duration::from_secs(3600),
        ..Default::default()
    }
}

/// Polls `check` every 50 ms until it gives a value, for at most `limit`.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn job(queue: &Queue, id: i64) -> JobRecord {
    queue.get(id).await.unwrap().expect("job exists")
}

#[tokio::test]
async fn serve_runs_jobs_and_reports_queue_gauges() {
    let app = common::spawn_app_with(common::Backend::Sqlite, |c| c.jobs = keeping_completed())
        .await
        .unwrap();
    let queue = app.state.jobs();
    // Enqueued through the state: the commit hook wakes the in-process worker at once.
    let quick = queue
        .enqueue(NewJob::new("sleep", json!({"ms": 1})))
        .await
        .unwrap()
        .id;
    let done = eventually(
        Duration::from_secs(10),
        "the job completes",
        || async move {
            let j = job(queue, quick).await;
            (j.state == JobState::Completed).then_some(j)
        },
    )
    .await;
    assert_eq!(done.attempt, 1);

    // A running sleep job stops early when cancelled.
    let long = queue
        .enqueue(NewJob::new("sleep", json!({"ms": 60_000})))
        .await
        .unwrap()
        .id;
    eventually(
        Duration::from_secs(10),
        "the long job runs",
        || async move { (job(queue, long).await.state == JobState::Running).then_some(()) },
    )
    .await;
    queue
        .enqueue(NewJob::new("noop", json!(null)).delay(Duration::from_secs(3600)))
        .await
        .unwrap();

    let text = app.get("/metrics").await.text().await.unwrap();
    for needle in [
        r#"malaka_jobs{queue="default",state="completed"} 1"#,
        r#"malaka_jobs{queue="default",state="running"} 1"#,
        r#"malaka_jobs{queue="default",state="scheduled"} 1"#,
        r#"malaka_jobs{queue="default",state="discarded"} 0"#,
        r#"malaka_jobs_available{queue="default"} 0"#,
        r#"malaka_jobs_running{queue="default"} 1"#,
        r#"malaka_jobs_oldest_available_seconds{queue="default"} 0"#,
        r#"malaka_pool_workers{pool="jobs:default",state="active"}"#,
        r#"malaka_pool_tasks_completed_total{pool="jobs:default"}"#,
        r#"malaka_jobs_enqueued_total{queue="default",kind="sleep"} "#,
        r#"malaka_jobs_finished_total{queue="default",kind="sleep",outcome="completed"} "#,
        r#"malaka_jobs_run_seconds_bucket{queue="default",kind="sleep""#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }

    let started = Instant::now();
    queue.cancel(long).await.unwrap();
    let cancelled = eventually(
        Duration::from_secs(10),
        "the long job stops",
        || async move {
            let j = job(queue, long).await;
            (j.state == JobState::Cancelled).then_some(j)
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        cancelled.errors[0].error.contains("told to stop"),
        "{:?}",
        cancelled.errors
    );
    app.stop().await;
}
