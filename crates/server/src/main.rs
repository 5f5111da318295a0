//! The `malaka` command: serve the API, run job workers, manage jobs, run migrations, print the
//! configuration, run benchmarks.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use malaka::config::{DatabaseOverrides, LogFormat, LogOverrides, Overrides};
use malaka::{Application, Config, telemetry};

/// Malaka: an inventory ERP backend. With no configuration it keeps its data in an SQLite file
/// under ./malaka-data/ and listens on 127.0.0.1:8080.
#[derive(Debug, Parser)]
#[command(name = "malaka", version, about, long_about = None)]
struct Cli {
    /// Configuration file (default: ./malaka.toml when it exists). Environment variables
    /// MALAKA_* override it (nested keys joined by `__`), and flags override both.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: HTTP API, /healthz, /readyz and /metrics, until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Create the database if needed, apply pending migrations, and exit.
    Migrate(DbArgs),
    /// Recompute every balance from the ledger and report differences (exit status 1 if any).
    Verify(DbArgs),
    /// Print the effective configuration (all layers applied) as TOML.
    Config(ServeArgs),
    /// Run a benchmark suite and print its figures (a table, or one JSON object with --json).
    Bench(BenchArgs),
    /// Run the job workers and queue maintenance without the HTTP server, until SIGINT or
    /// SIGTERM (then let running jobs finish within the shutdown timeout, and exit).
    Worker(WorkerArgs),
    /// Inspect and manage the durable job queue: list, show, stats, enqueue, cancel, retry.
    Jobs(JobsArgs),
    /// Manage API tokens: create (prints only the new token), list, revoke.
    Token(TokenArgs),
    /// Notifications: send a test message through a rule.
    Notify(NotifyArgs),
    /// Run a report now (not through the queue), with a progress bar, to a file or stdout.
    Report(ReportArgs),
    /// What other systems sent (SQS commands) and what became of it: list, show, replay.
    Inbox(InboxArgs),
}

#[derive(Debug, clap::Args)]
struct InboxArgs {
    #[command(subcommand)]
    command: InboxCommand,
    /// Print JSON instead of a readable table.
    #[arg(long, global = true)]
    json: bool,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// Folder of the SQLite file (when no database URL is given).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum InboxCommand {
    /// List records, newest first.
    List {
        /// Only this state: processed, ignored, malformed, refused, retrying, parked,
        /// dead_lettered.
        #[arg(long)]
        state: Option<String>,
        /// Only this sender.
        #[arg(long)]
        source: Option<String>,
        /// Records older than this id (the last id of the previous page).
        #[arg(long)]
        before: Option<i64>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One record: every attempt's reason, and the message as received.
    Show {
        /// The record's id.
        id: i64,
    },
    /// Run a parked, refused or dead-lettered command again, now.
    Replay {
        /// The record's id.
        id: i64,
    },
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// stock_balance, ledger, valuation, low_stock or ageing.
    #[arg(value_name = "TYPE")]
    kind: String,
    /// csv or json.
    #[arg(long, default_value = "csv")]
    format: String,
    /// Write here instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Only this article.
    #[arg(long)]
    sku: Option<String>,
    /// Only this warehouse.
    #[arg(long)]
    warehouse: Option<String>,
    /// Ledger rows posted at or after (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_parser = report_time)]
    from: Option<chrono::DateTime<chrono::Utc>>,
    /// Ledger rows posted before (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_parser = report_time)]
    to: Option<chrono::DateTime<chrono::Utc>>,
    #[command(flatten)]
    db: DbArgs,
}

fn report_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        })
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor a YYYY-MM-DD date"))
}

#[derive(Debug, clap::Args)]
struct NotifyArgs {
    #[command(subcommand)]
    command: NotifyCommand,
}

#[derive(Debug, Subcommand)]
enum NotifyCommand {
    /// Send a test message through rule ID now (not through the queue); exit 1 if it fails.
    Test {
        /// The rule's id (see GET /api/v1/notification-rules).
        #[arg(long)]
        rule: i64,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
    #[command(flatten)]
    db: DbArgs,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it (only it) on stdout; it is not shown again.
    Create {
        /// A name saying who or what uses the token (1 to 100 characters).
        #[arg(long)]
        name: String,
        /// admin (everything), manager (read, movements, catalog), clerk (read, movements) or
        /// viewer (read).
        #[arg(long, value_parser = role)]
        role: malaka::auth::Role,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id: it stops working at once.
    Revoke {
        /// The token's id.
        id: i64,
    },
}

fn role(s: &str) -> Result<malaka::auth::Role, String> {
    s.parse()
        .map_err(|e: malaka::auth::UnknownRole| e.to_string())
}

#[derive(Debug, clap::Args)]
struct WorkerArgs {
    /// Time running jobs get to finish after SIGINT/SIGTERM before they are given back to the
    /// queue, e.g. 5s.
    #[arg(long, value_name = "DURATION", value_parser = humantime_duration)]
    shutdown_timeout: Option<Duration>,
    #[command(flatten)]
    db: DbArgs,
}

#[derive(Debug, clap::Args)]
struct JobsArgs {
    #[command(subcommand)]
    command: JobsCommand,
    /// Print JSON instead of a readable table.
    #[arg(long, global = true)]
    json: bool,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// Folder of the SQLite file (when no database URL is given).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// List jobs, newest first, filtered by queue, state and kind; page with --before.
    List(JobsListArgs),
    /// Show one job: payload, state, attempts, lease, and every failed attempt's error.
    Show {
        /// The job's id.
        id: i64,
    },
    /// Count jobs per queue and state, with the age of the oldest job waiting to run.
    Stats,
    /// Run a discarded, cancelled, retryable or scheduled job again, now.
    Retry {
        /// The job's id.
        id: i64,
    },
    /// Cancel a job that has not finished: at once if it is waiting; if it is running, its
    /// worker is asked to stop it.
    Cancel {
        /// The job's id.
        id: i64,
    },
    /// Add a job: a kind with a JSON payload, on a queue, with a priority, delay or unique key.
    Enqueue(JobsEnqueueArgs),
}

#[derive(Debug, clap::Args)]
struct JobsListArgs {
    /// Only jobs of this queue.
    #[arg(long, value_name = "QUEUE")]
    queue: Option<String>,
    /// Only jobs in these states (repeat, or separate with commas): available, scheduled,
    /// running, retryable, completed, discarded, cancelled.
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = job_state)]
    state: Vec<malaka_jobs::JobState>,
    /// Only jobs of this kind.
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// Jobs per page, 1 to 1000.
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Only jobs with an id below this one (the last id of the previous page).
    #[arg(long, value_name = "ID")]
    before: Option<i64>,
}

#[derive(Debug, clap::Args)]
struct JobsEnqueueArgs {
    /// The job's kind: which handler runs it (built in: `noop`, and `sleep` with payload
    /// {"ms": N}).
    kind: String,
    /// The payload, as JSON.
    #[arg(long, value_name = "JSON", default_value = "{}", value_parser = json_value)]
    payload: serde_json::Value,
    /// The queue.
    #[arg(long, value_name = "QUEUE", default_value = malaka_jobs::DEFAULT_QUEUE)]
    queue: String,
    /// Priority: lower runs first.
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    priority: i16,
    /// Run no earlier than this long from now, e.g. 5s or 10m.
    #[arg(long, value_name = "DURATION", value_parser = humantime_duration)]
    delay: Option<Duration>,
    /// While an unfinished job holds this key, enqueueing another with it does nothing.
    #[arg(long, value_name = "KEY")]
    unique_key: Option<String>,
    /// Attempts allowed before the job is discarded.
    #[arg(long, value_name = "N", default_value_t = malaka_jobs::DEFAULT_MAX_ATTEMPTS)]
    max_attempts: i32,
}

fn job_state(s: &str) -> Result<malaka_jobs::JobState, String> {
    s.parse().map_err(|e: malaka_jobs::JobsError| e.to_string())
}

fn json_value(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

#[derive(Debug, clap::Args)]
struct DbArgs {
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Folder for the SQLite file and other local data.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Time to finish requests and work after SIGINT/SIGTERM, e.g. 5s.
    #[arg(long, value_name = "DURATION", value_parser = humantime_duration)]
    shutdown_timeout: Option<Duration>,
    #[command(flatten)]
    db: DbArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Suite {
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
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BenchBackend {
    Sqlite,
    Postgres,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// The suite to run.
    #[arg(value_enum)]
    suite: Suite,
    /// Print exactly one JSON object mapping figure names to numbers.
    #[arg(long)]
    json: bool,
    /// Database kind, for suites that touch one.
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: BenchBackend,
    /// Database URL, for suites that touch one (a fresh database is created in it).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// A small, fast run that checks the suite works; its figures are not to be quoted.
    #[arg(long)]
    quick: bool,
    /// jobs suite: jobs to enqueue and drain.
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// jobs suite: jobs run at once.
    #[arg(long, default_value_t = 24)]
    workers: usize,
    /// jobs suite: latency samples (after 50 warm-ups); alerts suite: timed postings of the idle
    /// phase (after 20 warm-ups) and of the loaded one (after 5).
    #[arg(long, default_value_t = 500)]
    samples: usize,
    /// jobs suite: jobs claimed ahead of free workers (default 4 x --workers, 10 to 1000).
    #[arg(long)]
    prefetch: Option<usize>,
    /// jobs suite on SQLite: `normal` (the job store's setting: WAL, survives a process crash)
    /// or `full` (every commit fsynced, as the ledger's connections run).
    #[arg(long, default_value = "normal")]
    sqlite_synchronous: String,
    /// jobs suite: keep completed jobs in the table, as a non-zero `jobs.completed_retention`
    /// does (default: deleted as they complete, the server's default).
    #[arg(long)]
    keep_completed: bool,
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
    enqueue_from: Vec<malaka::bench_jobs::EnqueueFrom>,
    /// jobs suite, internal: be the enqueueing child process of `--enqueue-from process` (one
    /// job on this queue per line read, the commit time printed after each).
    #[arg(long, hide = true, value_name = "QUEUE")]
    enqueue_child: Option<String>,
    /// sqs suite: the SQS-compatible server (e.g. moto: scripts/bench-sqs starts one).
    #[arg(long, value_name = "URL")]
    sqs_endpoint: Option<String>,
    /// reports suite: ledger rows to seed.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// reports suite: open FIFO layers to seed for the ageing report.
    #[arg(long, default_value_t = 100_000)]
    layers: usize,
    /// notify suite: messages per channel.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// notify suite: the SMTP server to send to (`host:port`; default: a sink in the process).
    #[arg(long, value_name = "HOST:PORT")]
    smtp: Option<String>,
    /// movements suite: concurrent HTTP clients (and direct posting tasks).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// movements suite: timed seconds of each path (after a 1 s warm-up of each).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// movements suite: also time the HTTP path with an `Idempotency-Key` on every request
    /// (`keyed_*` figures, interleaved with the unkeyed ones).
    #[arg(long)]
    idempotency_keys: bool,
    /// movements suite: articles in the catalog (every other one FIFO).
    #[arg(long, default_value_t = 64)]
    articles: usize,
    /// movements suite: ledger rows to load through `POST /movements/batch` before timing
    /// (quote 0 and 1,000,000 with `--articles 10000`).
    #[arg(long, default_value_t = 0)]
    ledger_rows: usize,
    /// alerts suite: clients posting a background mix while the loaded alert postings are timed
    /// (0: no loaded phase).
    #[arg(long, default_value_t = 32)]
    load_clients: usize,
    /// alerts suite: WebSocket clients that each time every fan-out posting's alert (0: no
    /// fan-out phase).
    #[arg(long, default_value_t = 0)]
    ws_clients: usize,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn overrides(cli: &Cli, args: Option<&ServeArgs>, db: Option<&DbArgs>) -> Overrides {
    let db = db.or(args.map(|a| &a.db));
    Overrides {
        listen: args.and_then(|a| a.listen),
        data_dir: db.and_then(|d| d.data_dir.clone()),
        shutdown_timeout: args.and_then(|a| a.shutdown_timeout),
        database: db.and_then(|d| {
            d.database_url
                .clone()
                .map(|url| DatabaseOverrides { url: Some(url) })
        }),
        log: cli.log_format.map(|f| LogOverrides { format: Some(f) }),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(run(cli));
    // Everything that must finish has finished inside `run`; don't wait for idle blocking threads.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve(args) => {
            let config = Config::load(cli.config.as_deref(), &overrides(&cli, Some(args), None))?;
            telemetry::init_logging(&config.log);
            let app = Application::build(&config)
                .await
                .context("starting the server")?;
            bootstrap_token(&app).await?;
            let addr = app.local_addr().context("reading the bound address")?;
            tracing::info!(%addr, database = app.state().db().backend().as_str(), "malaka is listening");
            app.run_until(malaka::app::shutdown_signal())
                .await
                .context("serving")?;
        }
        Command::Migrate(db) => {
            let config = Config::load(cli.config.as_deref(), &overrides(&cli, None, Some(db)))?;
            telemetry::init_logging(&config.log);
            let database = malaka::db::Database::connect(&config.database_url(), &config.database)
                .await
                .context("connecting to the database")?;
            database.migrate().await.context("migrating")?;
            database.close().await;
            tracing::info!("migrations applied");
        }
        Command::Verify(db) => {
            let config = Config::load(cli.config.as_deref(), &overrides(&cli, None, Some(db)))?;
            telemetry::init_logging(&config.log);
            let database = malaka::db::Database::connect(&config.database_url(), &config.database)
                .await
                .context("connecting to the database")?;
            database.migrate().await.context("migrating")?;
            let report = database
                .inventory()
                .verify()
                .await
                .context("verifying the ledger")?;
            database.close().await;
            println!(
                "{} balances, {} ledger rows checked: {}",
                report.balances,
                report.ledger_rows,
                if report.discrepancies.is_empty() {
                    "the ledger and the balances agree".to_owned()
                } else {
                    format!("{} differences", report.discrepancies.len())
                }
            );
            for d in &report.discrepancies {
                println!(
                    "{} in {}: ledger qty {} value {}, balance qty {} value {}",
                    d.sku, d.warehouse, d.ledger.0, d.ledger.1, d.balance.0, d.balance.1
                );
            }
            if !report.discrepancies.is_empty() {
                std::process::exit(1);
            }
        }
        Command::Config(args) => {
            let config = Config::load(cli.config.as_deref(), &overrides(&cli, Some(args), None))?;
            let text = toml::to_string_pretty(&config).context("printing the configuration")?;
            print!("{text}");
        }
        Command::Worker(args) => {
            let mut flags = overrides(&cli, None, Some(&args.db));
            flags.shutdown_timeout = args.shutdown_timeout;
            let config = Config::load(cli.config.as_deref(), &flags)?;
            telemetry::init_logging(&config.log);
            malaka::jobs::run_worker(&config, malaka::app::shutdown_signal())
                .await
                .context("running the job worker")?;
        }
        Command::Jobs(args) => jobs_command(&cli, args).await?,
        Command::Token(args) => token_command(&cli, args).await?,
        Command::Notify(args) => notify_command(&cli, args).await?,
        Command::Report(args) => report_command(&cli, args).await?,
        Command::Inbox(args) => inbox_command(&cli, args).await?,
        Command::Bench(args) => {
            telemetry::init_logging(&malaka::config::LogConfig {
                format: cli.log_format.unwrap_or(LogFormat::Text),
                filter: "warn".to_owned(),
            });
            let figures = match args.suite {
                Suite::Runtime => {
                    let size = if args.quick {
                        malaka::bench::Size::QUICK
                    } else {
                        malaka::bench::Size::FULL
                    };
                    // On a runtime worker thread, as server code runs (not on the main thread
                    // that `block_on` borrows).
                    if args.database_url.is_some() || !matches!(args.backend, BenchBackend::Sqlite)
                    {
                        tracing::warn!(
                            "the runtime suite touches no database; --backend and --database-url are ignored"
                        );
                    }
                    tokio::spawn(malaka::bench::runtime_suite(size))
                        .await
                        .context("benchmark task")??
                }
                Suite::Jobs if args.enqueue_child.is_some() => {
                    let backend = match args.backend {
                        BenchBackend::Sqlite => malaka::bench_jobs::Backend::Sqlite,
                        BenchBackend::Postgres => malaka::bench_jobs::Backend::Postgres,
                    };
                    let url = args
                        .database_url
                        .clone()
                        .context("--enqueue-child needs --database-url")?;
                    let queue = args.enqueue_child.clone().unwrap_or_default();
                    malaka::bench_jobs::enqueue_child(backend, &url, &queue).await?;
                    return Ok(());
                }
                Suite::Jobs => {
                    let quick = args.quick;
                    let spec = malaka::bench_jobs::JobsBench {
                        backend: match args.backend {
                            BenchBackend::Sqlite => malaka::bench_jobs::Backend::Sqlite,
                            BenchBackend::Postgres => malaka::bench_jobs::Backend::Postgres,
                        },
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
                            other => anyhow::bail!(
                                "--sqlite-synchronous must be full or normal, not {other}"
                            ),
                        },
                    };
                    tokio::spawn(async move { malaka::bench_jobs::jobs_suite(&spec).await })
                        .await
                        .context("benchmark task")??
                }
                Suite::Movements => {
                    let spec = malaka::bench_movements::MovementsBench {
                        backend: match args.backend {
                            BenchBackend::Sqlite => malaka::bench_jobs::Backend::Sqlite,
                            BenchBackend::Postgres => malaka::bench_jobs::Backend::Postgres,
                        },
                        database_url: args.database_url.clone(),
                        clients: args.clients,
                        seconds: if args.quick { 1.0 } else { args.seconds },
                        idempotency_keys: args.idempotency_keys,
                        articles: args.articles,
                        ledger_rows: if args.quick { 0 } else { args.ledger_rows },
                    };
                    tokio::spawn(
                        async move { malaka::bench_movements::movements_suite(&spec).await },
                    )
                    .await
                    .context("benchmark task")??
                }
                Suite::Alerts => {
                    let spec = malaka::bench_alerts::AlertsBench {
                        backend: match args.backend {
                            BenchBackend::Sqlite => malaka::bench_jobs::Backend::Sqlite,
                            BenchBackend::Postgres => malaka::bench_jobs::Backend::Postgres,
                        },
                        database_url: args.database_url.clone(),
                        samples: if args.quick { 20 } else { args.samples },
                        load_clients: args.load_clients,
                        ws_clients: args.ws_clients,
                        fanout_rounds: if args.quick { 5 } else { 20 },
                    };
                    tokio::spawn(async move { malaka::bench_alerts::alerts_suite(&spec).await })
                        .await
                        .context("benchmark task")??
                }
                Suite::Notify => {
                    let spec = malaka::bench_notify::NotifyBench {
                        backend: match args.backend {
                            BenchBackend::Sqlite => malaka::bench_jobs::Backend::Sqlite,
                            BenchBackend::Postgres => malaka::bench_jobs::Backend::Postgres,
                        },
                        database_url: args.database_url.clone(),
                        messages: if args.quick { 50 } else { args.messages },
                        smtp: args.smtp.clone(),
                    };
                    tokio::spawn(async move { malaka::bench_notify::notify_suite(&spec).await })
                        .await
                        .context("benchmark task")??
                }
                Suite::Sqs => {
                    let spec = malaka::bench_sqs::SqsBench {
                        backend: match args.backend {
                            BenchBackend::Sqlite => malaka::bench_jobs::Backend::Sqlite,
                            BenchBackend::Postgres => malaka::bench_jobs::Backend::Postgres,
                        },
                        database_url: args.database_url.clone(),
                        endpoint: args
                            .sqs_endpoint
                            .clone()
                            .context("the sqs suite needs --sqs-endpoint URL (scripts/bench-sqs starts moto)")?,
                        messages: if args.quick { 50 } else { args.messages.min(5000) },
                    };
                    tokio::spawn(async move { malaka::bench_sqs::sqs_suite(&spec).await })
                        .await
                        .context("benchmark task")??
                }
                Suite::Reports => {
                    let spec = malaka::bench_reports::ReportsBench {
                        backend: match args.backend {
                            BenchBackend::Sqlite => malaka::bench_jobs::Backend::Sqlite,
                            BenchBackend::Postgres => malaka::bench_jobs::Backend::Postgres,
                        },
                        database_url: args.database_url.clone(),
                        rows: if args.quick { 5_000 } else { args.rows },
                        layers: if args.quick { 2_000 } else { args.layers },
                    };
                    tokio::spawn(async move { malaka::bench_reports::reports_suite(&spec).await })
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
            malaka::bench::environment(
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
        }
    }
    Ok(())
}

/// On an empty token table, stores `MALAKA_BOOTSTRAP_TOKEN` as the admin token, or creates one
/// and prints it once on stdout.
async fn bootstrap_token(app: &Application) -> anyhow::Result<()> {
    use malaka::auth::{BOOTSTRAP_ENV, Bootstrap};
    let given = std::env::var(BOOTSTRAP_ENV).ok().filter(|t| !t.is_empty());
    match malaka::auth::bootstrap(&app.state().auth().tokens, given.as_deref())
        .await
        .context("creating the bootstrap admin token")?
    {
        Bootstrap::NotNeeded => {}
        Bootstrap::FromEnvironment => {
            tracing::info!(
                "no API token existed: stored {BOOTSTRAP_ENV} as admin token `bootstrap`"
            );
        }
        Bootstrap::Created(token) => {
            tracing::warn!(
                "no API token existed: created admin token `bootstrap`, printed once on stdout"
            );
            println!("admin token (shown once): {}", token.expose());
        }
    }
    Ok(())
}

/// For the admin commands: the configuration (warnings only in the log) and the migrated
/// database it names.
async fn open_quietly(cli: &Cli, db: &DbArgs) -> anyhow::Result<(Config, malaka::db::Database)> {
    let config = Config::load(cli.config.as_deref(), &overrides(cli, None, Some(db)))?;
    telemetry::init_logging(&malaka::config::LogConfig {
        format: config.log.format,
        filter: "warn".to_owned(),
    });
    let database = malaka::db::Database::connect(&config.database_url(), &config.database)
        .await
        .context("connecting to the database")?;
    database.migrate().await.context("migrating")?;
    Ok((config, database))
}

async fn inbox_command(cli: &Cli, args: &InboxArgs) -> anyhow::Result<()> {
    use malaka::inbox_cli;
    let db = DbArgs {
        database_url: args.database_url.clone(),
        data_dir: args.data_dir.clone(),
    };
    let (config, database) = open_quietly(cli, &db).await?;
    let inventory = database.inventory();
    let result = match &args.command {
        InboxCommand::List {
            state,
            source,
            before,
            limit,
        } => {
            let filter = malaka_inventory::InboxFilter {
                state: state
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(|e: malaka_inventory::InventoryError| anyhow::anyhow!("--{e}"))?,
                source: source.clone(),
                before: *before,
                limit: Some(*limit),
            };
            inbox_cli::list(&inventory, &filter, args.json).await
        }
        InboxCommand::Show { id } => inbox_cli::show(&inventory, *id, args.json).await,
        InboxCommand::Replay { id } => {
            // Events of a replayed command reach the listeners of `serve` through the outbox.
            let bus = malaka_runtime::EventBus::new(malaka_runtime::WorkerPool::new(
                malaka_runtime::PoolConfig::new("events"),
            )?);
            let commands = malaka::sqs::Commands::new(
                &inventory,
                &bus,
                std::sync::Arc::new(|| {}),
                config.sqs.park_after,
            )
            .publishing_all();
            inbox_cli::replay(&commands, *id, args.json).await
        }
    };
    database.close().await;
    print!("{}", result.context("inbox command")?);
    Ok(())
}

async fn report_command(cli: &Cli, args: &ReportArgs) -> anyhow::Result<()> {
    let kind: malaka_inventory::ReportKind =
        args.kind.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let format = malaka::reports::Format::parse(&args.format)
        .ok_or_else(|| anyhow::anyhow!("--format must be csv or json, not {:?}", args.format))?;
    let (config, database) = open_quietly(cli, &args.db).await?;
    let reports = malaka::reports::Reports::new(
        database.clone(),
        database.inventory(),
        config.reports.retention,
    );
    let params = malaka::reports::StoredParams {
        sku: args.sku.clone(),
        warehouse: args.warehouse.clone(),
        from: args.from,
        to: args.to,
    };
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {pos}/{len} rows ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(kind.as_str());
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let mut out: Box<dyn std::io::Write + Send> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let result = reports
        .run_to(kind, &params, format, &mut *out, &progress)
        .await;
    database.close().await;
    let summary = result.context("running the report")?;
    bar.finish_and_clear();
    let totals: Vec<String> = summary
        .totals
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    // The summary goes to stderr, so that stdout holds only the report.
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "{}: {} (as of {})",
        kind.as_str(),
        totals.join(", "),
        summary.as_of
    )?;
    for n in &summary.notes {
        writeln!(err, "note: {n}")?;
    }
    Ok(())
}

async fn notify_command(cli: &Cli, args: &NotifyArgs) -> anyhow::Result<()> {
    let NotifyCommand::Test { rule, db } = &args.command;
    let (config, database) = open_quietly(cli, db).await?;
    let notifier =
        malaka::notify::Notifier::new(database.clone(), &malaka::app::notify_config(&config, None))
            .context("notification settings")?;
    let result = notifier.test(*rule).await;
    database.close().await;
    let sent = result.with_context(|| format!("sending a test message through rule {rule}"))?;
    println!("{sent}");
    Ok(())
}

async fn token_command(cli: &Cli, args: &TokenArgs) -> anyhow::Result<()> {
    let (_config, database) = open_quietly(cli, &args.db).await?;
    let tokens = malaka::auth::TokenStore::new(database.clone());
    let result = match &args.command {
        TokenCommand::Create { name, role } => {
            let name = malaka::auth::check_name(name).map_err(|m| anyhow::anyhow!("--name {m}"))?;
            tokens
                .create(name, *role)
                .await
                .map(|t| format!("{}\n", t.token.expose()))
        }
        TokenCommand::List => tokens
            .list()
            .await
            .map(|list| malaka::auth::render_table(&list)),
        TokenCommand::Revoke { id } => match tokens.revoke(*id).await {
            Ok(true) => Ok(format!("token {id} revoked\n")),
            Ok(false) => {
                database.close().await;
                anyhow::bail!("no token {id}");
            }
            Err(e) => Err(e),
        },
    };
    database.close().await;
    print!("{}", result.context("token command")?);
    Ok(())
}

async fn jobs_command(cli: &Cli, args: &JobsArgs) -> anyhow::Result<()> {
    use malaka::jobs::cli;
    let db = DbArgs {
        database_url: args.database_url.clone(),
        data_dir: args.data_dir.clone(),
    };
    let config = Config::load(cli.config.as_deref(), &overrides(cli, None, Some(&db)))?;
    telemetry::init_logging(&malaka::config::LogConfig {
        format: config.log.format,
        filter: "warn".to_owned(),
    });
    let (database, queue) = cli::open(&config).await.context("opening the database")?;
    let json = args.json;
    let result = match &args.command {
        JobsCommand::List(a) => {
            let mut filter = malaka_jobs::ListFilter::default();
            filter.queue = a.queue.clone();
            filter.kind = a.kind.clone();
            filter.states = a.state.clone();
            filter.before_id = a.before;
            filter.limit = Some(a.limit);
            cli::list(&queue, &filter, json).await
        }
        JobsCommand::Show { id } => cli::show(&queue, *id, json).await,
        JobsCommand::Stats => cli::stats(&queue, json).await,
        JobsCommand::Retry { id } => cli::retry(&queue, *id, json).await,
        JobsCommand::Cancel { id } => cli::cancel(&queue, *id, json).await,
        JobsCommand::Enqueue(a) => {
            let mut job = malaka_jobs::NewJob::new(&a.kind, a.payload.clone())
                .queue(&a.queue)
                .priority(a.priority)
                .max_attempts(a.max_attempts);
            if let Some(d) = a.delay {
                job = job.delay(d);
            }
            if let Some(k) = &a.unique_key {
                job = job.unique_key(k);
            }
            cli::enqueue(&queue, job, json).await
        }
    };
    database.close().await;
    print!("{}", result?);
    Ok(())
}
