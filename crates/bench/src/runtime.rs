//! `malaka bench runtime`: the worker pool's overhead over bare `tokio::spawn`, the event bus's
//! delivery rate and `parallel`'s throughput.

use std::time::{Duration, Instant};

use malaka_runtime::{Event, EventBus, PoolConfig, WorkerPool};

use crate::Figures;

/// Why a suite could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The runtime refused a pool.
    #[error(transparent)]
    Runtime(#[from] malaka_runtime::Error),
}

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Tasks per timed round.
    pub tasks: usize,
    /// Rounds per measurement; the median round counts.
    pub rounds: usize,
}

impl Size {
    /// The figures to quote.
    pub const FULL: Size = Size {
        tasks: 200_000,
        rounds: 5,
    };
    /// A smoke run that checks the suite works, in well under a second.
    pub const QUICK: Size = Size {
        tasks: 2_000,
        rounds: 1,
    };
}
/// Submitted, then awaited, in chunks this big (the pool's default queue size).
const CHUNK: usize = 1000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn spawn_chunked(n: usize) -> Duration {
    let start = Instant::now();
    let mut handles = Vec::with_capacity(CHUNK);
    for chunk_start in (0..n).step_by(CHUNK) {
        for _ in chunk_start..(chunk_start + CHUNK).min(n) {
            handles.push(tokio::spawn(async {}));
        }
        for h in handles.drain(..) {
            let _ = h.await;
        }
    }
    start.elapsed()
}

async fn pool_chunked(pool: &WorkerPool, n: usize) -> Result<Duration, BenchError> {
    let start = Instant::now();
    let mut handles = Vec::with_capacity(CHUNK);
    for chunk_start in (0..n).step_by(CHUNK) {
        for _ in chunk_start..(chunk_start + CHUNK).min(n) {
            handles.push(pool.submit(async {}).await?);
        }
        for h in handles.drain(..) {
            h.await?;
        }
    }
    Ok(start.elapsed())
}

async fn spawn_sequential(n: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        let _ = tokio::spawn(async {}).await;
    }
    start.elapsed()
}

async fn pool_sequential(pool: &WorkerPool, n: usize) -> Result<Duration, BenchError> {
    let start = Instant::now();
    for _ in 0..n {
        pool.submit(async {}).await?.await?;
    }
    Ok(start.elapsed())
}

fn per_task_ns(d: Duration, n: usize) -> f64 {
    d.as_nanos() as f64 / n as f64
}

/// `pool_overhead_ratio`, `bus_deliveries_per_sec_{1,4,16}`, `parallel_tasks_per_sec`.
///
/// # Errors
/// A pool could not be created.
pub async fn runtime_suite(size: Size) -> Result<Figures, BenchError> {
    let Size { tasks, rounds } = size;
    let mut f = Figures::default();
    let pool = WorkerPool::new(PoolConfig::new("bench"))?;

    // Warm up both paths, then alternate so both see the same machine state.
    let _ = spawn_chunked(tasks / 4).await;
    let _ = pool_chunked(&pool, tasks / 4).await?;
    let (mut spawn, mut pooled) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        spawn.push(spawn_chunked(tasks).await);
        pooled.push(pool_chunked(&pool, tasks).await?);
    }
    let (spawn_ns, pool_ns) = (
        per_task_ns(median(spawn), tasks),
        per_task_ns(median(pooled), tasks),
    );
    f.push("spawn_await_ns_per_task", spawn_ns);
    f.push("pool_submit_await_ns_per_task", pool_ns);
    f.push("pool_overhead_ratio", pool_ns / spawn_ns);

    let seq = tasks / 4;
    let (mut spawn, mut pooled) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        spawn.push(spawn_sequential(seq).await);
        pooled.push(pool_sequential(&pool, seq).await?);
    }
    let (spawn_ns, pool_ns) = (
        per_task_ns(median(spawn), seq),
        per_task_ns(median(pooled), seq),
    );
    f.push("spawn_await_sequential_ns_per_task", spawn_ns);
    f.push("pool_submit_await_sequential_ns_per_task", pool_ns);
    f.push("pool_overhead_ratio_sequential", pool_ns / spawn_ns);

    for listeners in [1usize, 4, 16] {
        let rate = bus_rate(&pool, listeners, size).await;
        f.push(format!("bus_deliveries_per_sec_{listeners}"), rate);
    }

    let mut times = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let out = malaka_runtime::parallel(0..tasks, 256, |i| async move { i }).await;
        times.push(start.elapsed());
        debug_assert_eq!(out.len(), tasks);
    }
    f.push(
        "parallel_tasks_per_sec",
        tasks as f64 / median(times).as_secs_f64(),
    );
    pool.shutdown().await;
    Ok(f)
}

/// Listener deliveries per second: `dispatchers` tasks each dispatch fresh events to
/// `listeners` no-op listeners.
async fn bus_rate(pool: &WorkerPool, listeners: usize, size: Size) -> f64 {
    #[derive(Clone)]
    struct Tick(#[allow(dead_code)] u64);
    let bus = EventBus::new(pool.clone());
    for i in 0..listeners {
        bus.on::<Tick, _, _>(&format!("noop-{i}"), |_| async { Ok(()) });
    }
    let dispatchers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let events = size.tasks * 5 / listeners.max(1);
    let per = events / dispatchers;
    let mut rounds = Vec::new();
    for _ in 0..size.rounds {
        let start = Instant::now();
        let tasks: Vec<_> = (0..dispatchers)
            .map(|_| {
                let bus = bus.clone();
                tokio::spawn(async move {
                    let mut delivered = 0usize;
                    for i in 0..per {
                        let report = bus.dispatch(Event::new("tick", Tick(i as u64))).await;
                        delivered += report.outcomes.len();
                    }
                    delivered
                })
            })
            .collect();
        let mut delivered = 0;
        for t in tasks {
            delivered += t.await.unwrap_or(0);
        }
        rounds.push((start.elapsed(), delivered));
    }
    rounds.sort_by_key(|(d, _)| *d);
    let (elapsed, delivered) = rounds[rounds.len() / 2];
    delivered as f64 / elapsed.as_secs_f64()
}
