//! `malaka bench <suite>`: measured figures, printed as a table or as one JSON object.

use std::time::{Duration, Instant};

use malaka_runtime::{Event, EventBus, PoolConfig, WorkerPool};

/// Named figures, in the order they were measured, and the versions of what was measured
/// (`versions` in the JSON: Malaka's, the database's).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Figures(Vec<(String, f64)>, Vec<(String, String)>);

impl Figures {
    /// Adds a figure.
    pub fn push(&mut self, name: impl Into<String>, value: f64) {
        self.0.push((name.into(), value));
    }

    /// Records the version of something measured or compared (`malaka`, `sqlite`, ...).
    pub fn version(&mut self, name: impl Into<String>, version: impl Into<String>) {
        self.1.push((name.into(), version.into()));
    }

    /// The figure called `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// One JSON object mapping names to numbers.
    pub fn to_json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .map(|(n, v)| {
                let v = serde_json::Number::from_f64((v * 1000.0).round() / 1000.0)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number);
                (n.clone(), v)
            })
            .collect();
        let mut map = map;
        if !self.1.is_empty() {
            let versions: serde_json::Map<String, serde_json::Value> = self
                .1
                .iter()
                .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
                .collect();
            map.insert("versions".into(), serde_json::Value::Object(versions));
        }
        serde_json::Value::Object(map)
    }

    /// A readable two-column table.
    pub fn to_table(&self) -> String {
        let width = self.0.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (n, v) in &self.0 {
            let shown = if v.abs() >= 1000.0 {
                format!("{v:>16.0}")
            } else {
                format!("{v:>16.3}")
            };
            out.push_str(&format!("{n:<width$}  {shown}\n"));
        }
        for (n, v) in &self.1 {
            out.push_str(&format!("{:<width$}  {v:>16}\n", format!("{n} version")));
        }
        out
    }
}

/// Adds what every suite reports about where it ran: `cores` (the CPUs this process may use),
/// Malaka's version, and the version of the database it ran on (`sqlite`, the library linked
/// in; `postgresql`, the server at `postgres_url`).
pub async fn environment(figures: &mut Figures, sqlite: bool, postgres_url: Option<&str>) {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    figures.push("cores", cores as f64);
    figures.version("malaka", env!("CARGO_PKG_VERSION"));
    if sqlite {
        use sqlx::Connection;
        if let Ok(mut c) = sqlx::SqliteConnection::connect("sqlite::memory:").await
            && let Ok(v) = sqlx::query_scalar::<_, String>("SELECT sqlite_version()")
                .fetch_one(&mut c)
                .await
        {
            figures.version("sqlite", v);
        }
    }
    if let Some(url) = postgres_url {
        use sqlx::Connection;
        if let Ok(mut c) = sqlx::PgConnection::connect(url).await
            && let Ok(v) = sqlx::query_scalar::<_, String>("SHOW server_version")
                .fetch_one(&mut c)
                .await
        {
            figures.version("postgresql", v);
        }
    }
}

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
