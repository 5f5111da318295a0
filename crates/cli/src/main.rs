//! The `malaka` command: serve the API, run job workers, manage jobs, run migrations, print the
//! configuration, run benchmarks.

mod bench;
mod inbox;
mod jobs;
mod notify;
mod report;
mod table;
mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use malaka_server::config::{DatabaseOverrides, LogFormat, LogOverrides, Overrides};
use malaka_server::db::DatabaseExt as _;
use malaka_server::{Application, Config, telemetry};

/// Malaka: an inventory ERP backend. With no configuration it keeps its data in an SQLite file
/// under ./malaka-data/ and listens on 127.0.0.1:8080.
#[derive(Debug, Parser)]
#[command(name = "malaka", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Configuration file (default: ./malaka.toml when it exists). Environment variables
    /// MALAKA_* override it (nested keys joined by `__`), and flags override both.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum)]
    pub(crate) log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the server: HTTP API, /healthz, /readyz and /metrics, until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Create the database if needed, apply pending migrations, and exit.
    Migrate(DbArgs),
    /// Recompute every balance from the ledger and report differences (exit status 1 if any).
    Verify(DbArgs),
    /// Print the effective configuration (all layers applied) as TOML.
    Config(ServeArgs),
    /// Run a benchmark suite and print its figures (a table, or one JSON object with --json).
    Bench(bench::BenchArgs),
    /// Run the job workers and queue maintenance without the HTTP server, until SIGINT or
    /// SIGTERM (then let running jobs finish within the shutdown timeout, and exit).
    Worker(jobs::WorkerArgs),
    /// Inspect and manage the durable job queue: list, show, stats, enqueue, cancel, retry.
    Jobs(jobs::JobsArgs),
    /// Manage API tokens: create (prints only the new token), list, revoke.
    Token(token::TokenArgs),
    /// Notifications: send a test message through a rule.
    Notify(notify::NotifyArgs),
    /// Run a report now (not through the queue), with a progress bar, to a file or stdout.
    Report(report::ReportArgs),
    /// What other systems sent (SQS commands) and what became of it: list, show, replay.
    Inbox(inbox::InboxArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct DbArgs {
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, value_name = "URL")]
    pub(crate) database_url: Option<String>,
    /// Folder for the SQLite file and other local data.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// Time to finish requests and work after SIGINT/SIGTERM, e.g. 5s.
    #[arg(long, value_name = "DURATION", value_parser = humantime_duration)]
    pub(crate) shutdown_timeout: Option<Duration>,
    #[command(flatten)]
    pub(crate) db: DbArgs,
}

pub(crate) fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())
}

pub(crate) fn overrides(cli: &Cli, args: Option<&ServeArgs>, db: Option<&DbArgs>) -> Overrides {
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
            app.run_until(malaka_server::app::shutdown_signal())
                .await
                .context("serving")?;
        }
        Command::Migrate(db) => {
            let config = Config::load(cli.config.as_deref(), &overrides(&cli, None, Some(db)))?;
            telemetry::init_logging(&config.log);
            let database =
                malaka_server::db::Database::connect(&config.database_url(), &config.database)
                    .await
                    .context("connecting to the database")?;
            database.migrate().await.context("migrating")?;
            database.close().await;
            tracing::info!("migrations applied");
        }
        Command::Verify(db) => {
            let config = Config::load(cli.config.as_deref(), &overrides(&cli, None, Some(db)))?;
            telemetry::init_logging(&config.log);
            let database =
                malaka_server::db::Database::connect(&config.database_url(), &config.database)
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
            malaka_server::jobs::run_worker(&config, malaka_server::app::shutdown_signal())
                .await
                .context("running the job worker")?;
        }
        Command::Jobs(args) => jobs::command(&cli, args).await?,
        Command::Token(args) => token::command(&cli, args).await?,
        Command::Notify(args) => notify::command(&cli, args).await?,
        Command::Report(args) => report::command(&cli, args).await?,
        Command::Inbox(args) => inbox::command(&cli, args).await?,
        Command::Bench(args) => bench::command(&cli, args).await?,
    }
    Ok(())
}

/// On an empty token table, stores `MALAKA_BOOTSTRAP_TOKEN` as the admin token, or creates one
/// and prints it once on stdout.
async fn bootstrap_token(app: &Application) -> anyhow::Result<()> {
    use malaka_server::auth::{BOOTSTRAP_ENV, Bootstrap};
    let given = std::env::var(BOOTSTRAP_ENV).ok().filter(|t| !t.is_empty());
    match malaka_server::auth::bootstrap(&app.state().auth().tokens, given.as_deref())
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
pub(crate) async fn open_quietly(
    cli: &Cli,
    db: &DbArgs,
) -> anyhow::Result<(Config, malaka_server::db::Database)> {
    let config = Config::load(cli.config.as_deref(), &overrides(cli, None, Some(db)))?;
    telemetry::init_logging(&malaka_server::config::LogConfig {
        format: config.log.format,
        filter: "warn".to_owned(),
    });
    let database = malaka_server::db::Database::connect(&config.database_url(), &config.database)
        .await
        .context("connecting to the database")?;
    database.migrate().await.context("migrating")?;
    Ok((config, database))
}
