//! Autoscaling of `WorkerPool` under paused time: growth to `max_workers` under a backlog,
//! shrinking back to `min_workers` after `idle_timeout`, and scale-to-zero with `min_workers(0)`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use malaka_runtime::{PoolConfig, WorkerPool};

const IDLE: Duration = Duration::from_secs(30);
const TASK: Duration = Duration::from_secs(1);

/// Lets every runnable task run until none is left (paused time does not move while we yield).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[allow(
    clippy::unwrap_used,
    reason = "test helper; clippy.toml only covers #[test] fns"
)]
fn pool(name: &str, min: usize, max: usize) -> WorkerPool {
    WorkerPool::new(
        PoolConfig::new(name)
            .min_workers(min)
            .max_workers(max)
            .queue_size(100)
            .idle_timeout(IDLE)
            .shutdown_timeout(Duration::from_secs(5)),
    )
    .unwrap()
}

/// Submits `n` tasks that each sleep `TASK`, tracking the peak number running at once.
#[allow(
    clippy::unwrap_used,
    reason = "test helper; clippy.toml only covers #[test] fns"
)]
async fn submit_slow(
    pool: &WorkerPool,
    n: usize,
    running: &Arc<AtomicUsize>,
    peak: &Arc<AtomicUsize>,
) -> Vec<malaka_runtime::TaskHandle<()>> {
    let mut handles = Vec::new();
    for _ in 0..n {
        let running = Arc::clone(running);
        let peak = Arc::clone(peak);
        handles.push(
            pool.submit(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(TASK).await;
                running.fetch_sub(1, Ordering::SeqCst);
            })
            .await
            .unwrap(),
        );
    }
    handles
}

#[tokio::test(start_paused = true)]
async fn scales_up_to_max_under_backlog_then_back_down_to_min() {
    let pool = pool("autoscale", 1, 4);
    // Let the first worker start and go idle, so the backlog arrives at an idle pool.
    settle().await;
    let m = pool.metrics();
    assert_eq!(m.workers, 1);
    assert_eq!(m.idle_workers, 1);
    assert_eq!(m.workers_started, 1);

    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let handles = submit_slow(&pool, 12, &running, &peak).await;
    settle().await;

    let m = pool.metrics();
    assert_eq!(
        m.workers, 4,
        "a backlog of slow tasks must grow the pool to max: {m:?}"
    );
    assert_eq!(m.active_workers, 4, "{m:?}");
    assert_eq!(m.workers_started, 4, "{m:?}");
    assert_eq!(m.queue_length, 8, "{m:?}");
    assert_eq!(running.load(Ordering::SeqCst), 4);

    let t0 = tokio::time::Instant::now();
    for h in handles {
        h.await.unwrap();
    }
    // 12 one-second tasks on 4 workers take three rounds.
    assert_eq!(t0.elapsed(), 3 * TASK);
    assert_eq!(peak.load(Ordering::SeqCst), 4);
    settle().await;
    let m = pool.metrics();
    assert_eq!(m.completed, 12);
    assert_eq!(m.workers, 4, "nobody retires before idle_timeout: {m:?}");
    assert_eq!(m.workers_retired, 0);

    // Just short of the idle timeout: still 4.
    tokio::time::advance(IDLE - Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(pool.metrics().workers, 4);

    // Past it: back to exactly min_workers, and no further.
    tokio::time::sleep(Duration::from_millis(2)).await;
    settle().await;
    let m = pool.metrics();
    assert_eq!(m.workers, 1, "{m:?}");
    assert_eq!(m.workers_retired, 3, "{m:?}");
    assert_eq!(m.idle_workers, 1);

    tokio::time::sleep(IDLE * 5).await;
    settle().await;
    let m = pool.metrics();
    assert_eq!(m.workers, 1, "never below min_workers: {m:?}");
    assert_eq!(m.workers_retired, 3);
    assert_eq!(m.workers_started, 4);

    let report = pool.shutdown().await;
    assert!(report.clean);
    assert_eq!(pool.metrics().workers, 0);
}

#[tokio::test(start_paused = true)]
async fn backlog_submitted_before_the_first_worker_ran_also_scales_to_max() {
    let pool = pool("cold", 1, 4);
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let handles = submit_slow(&pool, 8, &running, &peak).await;
    settle().await;
    let m = pool.metrics();
    assert_eq!(m.workers, 4, "{m:?}");
    assert_eq!(running.load(Ordering::SeqCst), 4);
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 4);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn min_zero_scales_to_zero_when_idle_and_still_runs_later_work() {
    let pool = pool("zero", 0, 3);
    settle().await;
    let m = pool.metrics();
    assert_eq!(m.workers, 0, "min 0 starts no workers: {m:?}");
    assert_eq!(m.workers_started, 0);

    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let handles = submit_slow(&pool, 6, &running, &peak).await;
    settle().await;
    assert_eq!(pool.metrics().workers, 3);
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 3);

    tokio::time::sleep(IDLE + Duration::from_secs(1)).await;
    settle().await;
    let m = pool.metrics();
    assert_eq!(m.workers, 0, "{m:?}");
    assert_eq!(m.idle_workers, 0);
    assert_eq!(m.workers_retired, m.workers_started, "{m:?}");

    // Work submitted to an empty pool still runs.
    let started_before = m.workers_started;
    let h = pool.submit(async { 7u32 }).await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(1), h)
        .await
        .expect("a task submitted to a pool scaled to zero must still run");
    assert_eq!(out.unwrap(), 7);
    let m = pool.metrics();
    assert_eq!(m.workers_started, started_before + 1);
    assert_eq!(m.completed, 7);

    // And it scales back to zero again.
    tokio::time::sleep(IDLE + Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(pool.metrics().workers, 0);
    assert!(pool.shutdown().await.clean);
}
