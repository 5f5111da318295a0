//! Property tests for `WorkerPool`: concurrency never exceeds `max_workers`, and at shutdown every
//! submitted task has either completed exactly once or been counted (and reported) as abandoned.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use malaka_runtime::{Error, PoolConfig, WorkerPool};
use proptest::prelude::*;

/// (`min_workers`, `max_workers`) with `min <= max`.
fn sizes() -> impl Strategy<Value = (usize, usize)> {
    (1usize..=6).prop_flat_map(|max| (0..=max, Just(max)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn never_runs_more_than_max_workers_at_once(
        (min, max) in sizes(),
        queue in 1usize..=8,
        // Per task: 0 = just yield, otherwise sleep that many hundred microseconds.
        durations in prop::collection::vec(0u64..=20, 1..=40),
        use_try_submit in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let pool = WorkerPool::new(
                PoolConfig::new("props")
                    .min_workers(min)
                    .max_workers(max)
                    .queue_size(queue)
                    .idle_timeout(Duration::from_millis(5)),
            )
            .unwrap();
            let running = Arc::new(AtomicUsize::new(0));
            let peak = Arc::new(AtomicUsize::new(0));
            let done = Arc::new(AtomicUsize::new(0));
            let make = |i: usize, d: u64| {
                let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    if d == 0 {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(Duration::from_micros(d * 100)).await;
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                    i
                }
            };
            let mut refused = 0u64;
            let mut handles = Vec::new();
            for (i, &d) in durations.iter().enumerate() {
                let handle = if use_try_submit {
                    // Retry a refused task instead of waiting: exercises the `Full` path.
                    loop {
                        match pool.try_submit(make(i, d)) {
                            Ok(h) => break h,
                            Err(Error::Full { capacity, .. }) => {
                                assert_eq!(capacity, queue);
                                refused += 1;
                                tokio::task::yield_now().await;
                            }
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                } else {
                    pool.submit(make(i, d)).await.unwrap()
                };
                handles.push(handle);
                let m = pool.metrics();
                assert!(m.workers <= max, "{m:?}");
                assert!(m.queue_length <= queue, "{m:?}");
            }
            for (i, h) in handles.into_iter().enumerate() {
                assert_eq!(h.await.unwrap(), i);
            }
            let peak = peak.load(Ordering::SeqCst);
            assert!(peak >= 1);
            assert!(peak <= max, "{peak} tasks ran at once with max_workers = {max}");
            assert_eq!(done.load(Ordering::SeqCst), durations.len());
            assert!(pool.metrics().workers <= max);
            let report = pool.shutdown().await;
            assert!(report.clean, "{report:?}");
            // After shutdown every worker has been joined, so the counters are final. (A handle
            // can resolve just before its worker records the completion.)
            let m = pool.metrics();
            assert_eq!(m.workers, 0, "{m:?}");
            assert!(m.workers_started >= 1, "{m:?}");
            assert_eq!(m.completed as usize, durations.len(), "{m:?}");
            assert_eq!(m.submitted as usize, durations.len(), "{m:?}");
            // Refused tasks were never run, but were counted.
            assert_eq!(m.rejected, refused, "{m:?}");
        });
    }

    #[test]
    fn every_task_completes_once_or_is_abandoned(
        (min, max) in sizes(),
        queue in 1usize..=16,
        // Per task: Ok(ms) = quick (well under the drain time), Err(s) = slow (outlives it).
        tasks in prop::collection::vec(prop_oneof![
            3 => (1u64..=200).prop_map(Ok),
            1 => (2u64..=30).prop_map(Err),
        ], 1..=40),
        wait_before_shutdown_ms in prop_oneof![Just(0u64), 0u64..=3_000],
    ) {
        const DRAIN: Duration = Duration::from_secs(1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            let pool = WorkerPool::new(
                PoolConfig::new("drain")
                    .min_workers(min)
                    .max_workers(max)
                    .queue_size(queue)
                    .shutdown_timeout(DRAIN),
            )
            .unwrap();
            let started: Arc<Vec<AtomicUsize>> =
                Arc::new(tasks.iter().map(|_| AtomicUsize::new(0)).collect());
            let finished: Arc<Vec<AtomicUsize>> =
                Arc::new(tasks.iter().map(|_| AtomicUsize::new(0)).collect());
            let mut handles = Vec::new();
            for (i, kind) in tasks.iter().copied().enumerate() {
                let (started, finished) = (started.clone(), finished.clone());
                let d = match kind {
                    Ok(ms) => Duration::from_millis(ms),
                    Err(s) => Duration::from_secs(s),
                };
                handles.push(
                    pool.submit(async move {
                        started[i].fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(d).await;
                        finished[i].fetch_add(1, Ordering::SeqCst);
                        i
                    })
                    .await
                    .unwrap(),
                );
            }
            tokio::time::sleep(Duration::from_millis(wait_before_shutdown_ms)).await;

            let finished_before = finished.iter().map(|c| c.load(Ordering::SeqCst)).sum::<usize>();
            let t0 = tokio::time::Instant::now();
            let report = pool.shutdown().await;
            assert!(t0.elapsed() <= DRAIN, "shutdown took {:?}", t0.elapsed());

            // Nothing runs after shutdown returned, even if time moves on.
            tokio::time::sleep(Duration::from_secs(60)).await;

            let n = tasks.len();
            let mut completed = 0;
            for i in 0..n {
                let s = started[i].load(Ordering::SeqCst);
                let f = finished[i].load(Ordering::SeqCst);
                assert!(s <= 1 && f <= 1 && f <= s, "task {i}: started {s}, finished {f}");
                completed += f;
            }
            assert_eq!(completed + report.abandoned as usize, n, "{report:?}");
            assert_eq!(report.clean, report.abandoned == 0);
            assert_eq!(report.drained as usize, completed - finished_before, "{report:?}");

            let mut abandoned_handles = 0;
            for (i, h) in handles.into_iter().enumerate() {
                match h.await {
                    Ok(out) => {
                        assert_eq!(out, i);
                        assert_eq!(finished[i].load(Ordering::SeqCst), 1, "task {i} reported Ok");
                    }
                    Err(Error::Abandoned) => {
                        assert_eq!(finished[i].load(Ordering::SeqCst), 0, "task {i} finished yet reported Abandoned");
                        abandoned_handles += 1;
                    }
                    Err(e) => panic!("task {i}: unexpected {e:?}"),
                }
            }
            assert_eq!(abandoned_handles, report.abandoned as usize);

            // When no submit had to wait and we did not wait either, no time passed before the
            // drain, so no slow task can have finished.
            if wait_before_shutdown_ms == 0 && n <= queue {
                for (i, kind) in tasks.iter().enumerate() {
                    if kind.is_err() {
                        assert_eq!(finished[i].load(Ordering::SeqCst), 0, "slow task {i} beat the drain");
                    }
                }
            }

            let m = pool.metrics();
            assert_eq!(m.submitted as usize, n);
            assert_eq!(m.completed as usize, completed);
            assert_eq!(m.abandoned, report.abandoned);
            assert_eq!(m.workers, 0, "{m:?}");
            assert!(m.closed);
            // Idempotent: a second shutdown abandons nothing more.
            assert_eq!(pool.shutdown().await.abandoned, 0);
            assert_eq!(pool.metrics().abandoned, report.abandoned);
        });
    }
}
