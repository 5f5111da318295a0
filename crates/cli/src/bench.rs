//! `malaka bench`: runs a suite and prints its figures with the machine's cores and versions.

use anyhow::Context;
use clap::ValueEnum;
use malaka_server::config::LogFormat;
use malaka_server::telemetry;

use crate::Cli;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Suite {
    /// Worker pool overhead, event bus deliveries, parallel helper throughput.
    Runtime,
    /// Job queue: batched enqueue rate, end-to-end drain rate, idle pickup latency.
    Jobs,
    /// POST /api/v1/movements over loopback (rate, p50/p99) against the database's ceiling.
    Movements,
    /// From a posting's HTTP response to its stock alert on a WebSocket client (p50/p99).
    Alerts,
    /// Email and webhook deliveries per second through the notifications queue.
    Notify,
    /// Valuation, stock balance, full ledger export and ageing (open FIFO layers) reports, each
    /// timed end to end over HTTP (request, job, download); peak memory.
    Reports,
    /// SQS messages consumed into postings per second, against a bare receive-and-delete loop.
    Sqs,
    /// A page of every filtered list (ledger, balances, alerts, jobs, reports) on a large
    /// database, p50/p99 over HTTP, against a hand-written page of one article's ledger.
    Lists,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum BenchBackend {
    Sqlite,
    Postgres,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// The suite to run.
    #[arg(value_enum)]
    pub(crate) suite: Suite,
    /// Print exactly one JSON object mapping figure names to numbers.
    #[arg(long)]
    pub(crate) json: bool,
    /// Database kind, for suites that touch one.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub(crate) backend: BenchBackend,
    /// Database URL, for suites that touch one (a fresh database is created in it).
    #[arg(long, value_name = "URL")]
    pub(crate) database_url: Option<String>,
    /// A small, fast run that checks the suite works; its figures are not to be quoted.
    #[arg(long)]
    pub(crate) quick: bool,
    /// jobs suite: jobs to enqueue and drain.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) jobs: usize,
    /// jobs suite: jobs run at once.
    #[arg(long, default_value_t = 24)]
    pub(crate) workers: usize,
    /// jobs suite: latency samples (after 50 warm-ups); alerts suite: timed postings of the idle
    /// phase (after 20 warm-ups) and of the loaded one (after 5).
    #[arg(long, default_value_t = 500)]
    pub(crate) samples: usize,
    /// jobs suite: jobs claimed ahead of free workers (default 4 x --workers, 10 to 1000).
    #[arg(long)]
    pub(crate) prefetch: Option<usize>,
    /// jobs suite on SQLite: `normal` (the job store's setting: WAL, survives a process crash)
    /// or `full` (every commit fsynced, as the ledger's connections run).
    #[arg(long, default_value = "normal")]
    pub(crate) sqlite_synchronous: String,
    /// jobs suite: keep completed jobs in the table, as a non-zero `jobs.completed_retention`
    /// does (default: deleted as they complete, the server's default).
    #[arg(long)]
    pub(crate) keep_completed: bool,
    /// jobs suite: how the pickup-latency jobs are enqueued, one or more of `api`
    /// (`Queue::enqueue` in the worker's process: `latency_*`), `tx` (`enqueue_in` inside a
    /// committed business transaction: `tx_latency_*`, from just before COMMIT), `process`
    /// (by another OS process: `process_latency_*`, from its commit, on the wall clock).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "api",
        value_name = "api|tx|process"
    )]
    pub(crate) enqueue_from: Vec<malaka_bench::jobs::EnqueueFrom>,
    /// jobs suite, internal: be the enqueueing child process of `--enqueue-from process` (one
    /// job on this queue per line read, the commit time printed after each).
    #[arg(long, hide = true, value_name = "QUEUE")]
    pub(crate) enqueue_child: Option<String>,
    /// sqs suite: the SQS-compatible server (e.g. moto: scripts/bench-sqs starts one).
    #[arg(long, value_name = "URL")]
    pub(crate) sqs_endpoint: Option<String>,
    /// reports and lists suites: ledger rows to seed.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) rows: usize,
    /// reports suite: open FIFO layers to seed for the ageing report (default 100,000).
    /// movements suite: open layers of one FIFO article whose postings are timed against an
    /// article with one layer (default: off).
    #[arg(long)]
    pub(crate) layers: Option<usize>,
    /// notify suite: messages per channel.
    #[arg(long, default_value_t = 2000)]
    pub(crate) messages: usize,
    /// notify suite: the SMTP server to send to (`host:port`; default: a sink in the process).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) smtp: Option<String>,
    /// movements suite: concurrent HTTP clients (and direct posting tasks).
    #[arg(long, default_value_t = 32)]
    pub(crate) clients: usize,
    /// movements suite: timed seconds of each path (after a 1 s warm-up of each).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) seconds: f64,
    /// movements suite: also time the HTTP path with an `Idempotency-Key` on every request
    /// (`keyed_*` figures, interleaved with the unkeyed ones).
    #[arg(long)]
    pub(crate) idempotency_keys: bool,
    /// movements suite: articles in the catalog (every other one FIFO).
    #[arg(long, default_value_t = 64)]
    pub(crate) articles: usize,
    /// movements suite: ledger rows to load through `POST /movements/batch` before timing
    /// (quote 0 and 1,000,000 with `--articles 10000`).
    #[arg(long, default_value_t = 0)]
    pub(crate) ledger_rows: usize,
    /// alerts suite: clients posting a background mix while the loaded alert postings are timed
    /// (0: no loaded phase).
    #[arg(long, default_value_t = 32)]
    pub(crate) load_clients: usize,
    /// alerts suite: WebSocket clients that each time every fan-out posting's alert (0: no
    /// fan-out phase).
    #[arg(long, default_value_t = 0)]
    pub(crate) ws_clients: usize,
}

impl From<BenchBackend> for malaka_bench::jobs::Backend {
    fn from(b: BenchBackend) -> Self {
        match b {
            BenchBackend::Sqlite => Self::Sqlite,
            BenchBackend::Postgres => Self::Postgres,
        }
    }
}

/// Runs the suite `args` names.
pub(crate) async fn command(cli: &Cli, args: &BenchArgs) -> anyhow::Result<()> {
    telemetry::init_logging(&malaka_server::config::LogConfig {
        format: cli.log_format.unwrap_or(LogFormat::Text),
        filter: "warn".to_owned(),
    });
    let figures = match args.suite {
        Suite::Runtime => {
            let size = if args.quick {
                malaka_bench::runtime::Size::QUICK
            } else {
                malaka_bench::runtime::Size::FULL
            };
            // On a runtime worker thread, as server code runs (not on the main thread
            // that `block_on` borrows).
            if args.database_url.is_some() || !matches!(args.backend, BenchBackend::Sqlite) {
                tracing::warn!(
                    "the runtime suite touches no database; --backend and --database-url are ignored"
                );
            }
            tokio::spawn(malaka_bench::runtime::runtime_suite(size))
                .await
                .context("benchmark task")??
        }
        Suite::Jobs if args.enqueue_child.is_some() => {
            let backend = args.backend.into();
            let url = args
                .database_url
                .clone()
                .context("--enqueue-child needs --database-url")?;
            let queue = args.enqueue_child.clone().unwrap_or_default();
            malaka_bench::jobs::enqueue_child(backend, &url, &queue).await?;
            return Ok(());
        }
        Suite::Jobs => {
            let quick = args.quick;
            let spec = malaka_bench::jobs::JobsBench {
                backend: args.backend.into(),
                database_url: args.database_url.clone(),
                jobs: if quick { 500 } else { args.jobs },
                workers: args.workers,
                samples: if quick { 20 } else { args.samples },
                prefetch: args.prefetch,
                keep_completed: args.keep_completed,
                enqueue_from: args.enqueue_from.clone(),
                sqlite_synchronous_full: match args.sqlite_synchronous.as_str() {
                    "full" => true,
                    "normal" => false,
                    other => {
                        anyhow::bail!("--sqlite-synchronous must be full or normal, not {other}")
                    }
                },
            };
            tokio::spawn(async move { malaka_bench::jobs::jobs_suite(&spec).await })
                .await
                .context("benchmark task")??
        }
        Suite::Movements => {
            let spec = malaka_bench::movements::MovementsBench {
                backend: args.backend.into(),
                database_url: args.database_url.clone(),
                clients: args.clients,
                seconds: if args.quick { 1.0 } else { args.seconds },
                idempotency_keys: args.idempotency_keys,
                articles: args.articles,
                ledger_rows: if args.quick { 0 } else { args.ledger_rows },
                layers: args.layers.unwrap_or(0),
            };
            tokio::spawn(async move { malaka_bench::movements::movements_suite(&spec).await })
                .await
                .context("benchmark task")??
        }
        Suite::Alerts => {
            let spec = malaka_bench::alerts::AlertsBench {
                backend: args.backend.into(),
                database_url: args.database_url.clone(),
                samples: if args.quick { 20 } else { args.samples },
                load_clients: args.load_clients,
                ws_clients: args.ws_clients,
                fanout_rounds: if args.quick { 5 } else { 20 },
            };
            tokio::spawn(async move { malaka_bench::alerts::alerts_suite(&spec).await })
                .await
                .context("benchmark task")??
        }
        Suite::Notify => {
            let spec = malaka_bench::notify::NotifyBench {
                backend: args.backend.into(),
                database_url: args.database_url.clone(),
                messages: if args.quick { 50 } else { args.messages },
                smtp: args.smtp.clone(),
            };
            tokio::spawn(async move { malaka_bench::notify::notify_suite(&spec).await })
                .await
                .context("benchmark task")??
        }
        Suite::Sqs => {
            let spec = malaka_bench::sqs::SqsBench {
                backend: args.backend.into(),
                database_url: args.database_url.clone(),
                endpoint: args.sqs_endpoint.clone().context(
                    "the sqs suite needs --sqs-endpoint URL (scripts/bench-sqs starts moto)",
                )?,
                messages: if args.quick {
                    50
                } else {
                    args.messages.min(5000)
                },
            };
            tokio::spawn(async move { malaka_bench::sqs::sqs_suite(&spec).await })
                .await
                .context("benchmark task")??
        }
        Suite::Lists => {
            let spec = malaka_bench::lists::ListsBench {
                backend: args.backend.into(),
                database_url: args.database_url.clone(),
                rows: if args.quick { 5_000 } else { args.rows },
                walks: if args.quick { 4 } else { 40 },
                others: if args.quick { 2_000 } else { 100_000 },
            };
            tokio::spawn(async move { malaka_bench::lists::lists_suite(&spec).await })
                .await
                .context("benchmark task")??
        }
        Suite::Reports => {
            let spec = malaka_bench::reports::ReportsBench {
                backend: args.backend.into(),
                database_url: args.database_url.clone(),
                rows: if args.quick { 5_000 } else { args.rows },
                layers: if args.quick {
                    2_000
                } else {
                    args.layers.unwrap_or(100_000)
                },
            };
            tokio::spawn(async move { malaka_bench::reports::reports_suite(&spec).await })
                .await
                .context("benchmark task")??
        }
    };
    let mut figures = figures;
    let postgres = matches!(args.backend, BenchBackend::Postgres).then(|| {
        args.database_url
            .clone()
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    });
    let touches_db = !matches!(args.suite, Suite::Runtime);
    malaka_bench::environment(
        &mut figures,
        touches_db && postgres.is_none(),
        postgres.as_deref().filter(|_| touches_db),
    )
    .await;
    if args.json {
        println!("{}", figures.to_json());
    } else {
        print!("{}", figures.to_table());
    }
    Ok(())
}
