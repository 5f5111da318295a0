//! The `malaka` command: serve the API, run migrations, print the configuration, run benchmarks.

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
    /// Print the effective configuration (all layers applied) as TOML.
    Config(ServeArgs),
    /// Run a benchmark suite and print its figures (a table, or one JSON object with --json).
    Bench(BenchArgs),
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
        Command::Config(args) => {
            let config = Config::load(cli.config.as_deref(), &overrides(&cli, Some(args), None))?;
            let text = toml::to_string_pretty(&config).context("printing the configuration")?;
            print!("{text}");
        }
        Command::Bench(args) => {
            telemetry::init_logging(&malaka::config::LogConfig {
                format: cli.log_format.unwrap_or(LogFormat::Text),
                filter: "warn".to_owned(),
            });
            if args.database_url.is_some() || !matches!(args.backend, BenchBackend::Sqlite) {
                tracing::warn!(
                    "the runtime suite touches no database; --backend and --database-url are ignored"
                );
            }
            let figures = match args.suite {
                Suite::Runtime => {
                    let size = if args.quick {
                        malaka::bench::Size::QUICK
                    } else {
                        malaka::bench::Size::FULL
                    };
                    // On a runtime worker thread, as server code runs (not on the main thread
                    // that `block_on` borrows).
                    tokio::spawn(malaka::bench::runtime_suite(size))
                        .await
                        .context("benchmark task")??
                }
            };
            if args.json {
                println!("{}", figures.to_json());
            } else {
                print!("{}", figures.to_table());
            }
        }
    }
    Ok(())
}
