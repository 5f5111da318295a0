//! `malaka jobs` and `malaka worker`: the durable job queue from the command line.

mod output;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use malaka_server::{Config, telemetry};

use crate::{Cli, DbArgs, humantime_duration, overrides};
use malaka_server::db::DatabaseExt as _;

#[derive(Debug, clap::Args)]
pub(crate) struct WorkerArgs {
    /// Time running jobs get to finish after SIGINT/SIGTERM before they are given back to the
    /// queue, e.g. 5s.
    #[arg(long, value_name = "DURATION", value_parser = humantime_duration)]
    pub(crate) shutdown_timeout: Option<Duration>,
    #[command(flatten)]
    pub(crate) db: DbArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct JobsArgs {
    #[command(subcommand)]
    pub(crate) command: JobsCommand,
    /// Print JSON instead of a readable table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) database_url: Option<String>,
    /// Folder of the SQLite file (when no database URL is given).
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum JobsCommand {
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
pub(crate) struct JobsListArgs {
    /// Only jobs of this queue.
    #[arg(long, value_name = "QUEUE")]
    pub(crate) queue: Option<String>,
    /// Only jobs in these states (repeat, or separate with commas): available, scheduled,
    /// running, retryable, completed, discarded, cancelled.
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = job_state)]
    pub(crate) state: Vec<malaka_jobs::JobState>,
    /// Only jobs of this kind.
    #[arg(long, value_name = "KIND")]
    pub(crate) kind: Option<String>,
    /// Jobs per page, 1 to 1000.
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) limit: u32,
    /// Only jobs with an id below this one (the last id of the previous page).
    #[arg(long, value_name = "ID")]
    pub(crate) before: Option<i64>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct JobsEnqueueArgs {
    /// The job's kind: which handler runs it (built in: `noop`, and `sleep` with payload
    /// {"ms": N}).
    pub(crate) kind: String,
    /// The payload, as JSON.
    #[arg(long, value_name = "JSON", default_value = "{}", value_parser = json_value)]
    pub(crate) payload: serde_json::Value,
    /// The queue.
    #[arg(long, value_name = "QUEUE", default_value = malaka_jobs::DEFAULT_QUEUE)]
    pub(crate) queue: String,
    /// Priority: lower runs first.
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub(crate) priority: i16,
    /// Run no earlier than this long from now, e.g. 5s or 10m.
    #[arg(long, value_name = "DURATION", value_parser = humantime_duration)]
    pub(crate) delay: Option<Duration>,
    /// While an unfinished job holds this key, enqueueing another with it does nothing.
    #[arg(long, value_name = "KEY")]
    pub(crate) unique_key: Option<String>,
    /// Attempts allowed before the job is discarded.
    #[arg(long, value_name = "N", default_value_t = malaka_jobs::DEFAULT_MAX_ATTEMPTS)]
    pub(crate) max_attempts: i32,
}

pub(crate) fn job_state(s: &str) -> Result<malaka_jobs::JobState, String> {
    s.parse().map_err(|e: malaka_jobs::JobsError| e.to_string())
}

pub(crate) fn json_value(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

pub(crate) async fn command(cli: &Cli, args: &JobsArgs) -> anyhow::Result<()> {
    let db = DbArgs {
        database_url: args.database_url.clone(),
        data_dir: args.data_dir.clone(),
    };
    let config = Config::load(cli.config.as_deref(), &overrides(cli, None, Some(&db)))?;
    telemetry::init_logging(&malaka_server::config::LogConfig {
        format: config.log.format,
        filter: "warn".to_owned(),
    });
    let (database, queue) = output::open(&config)
        .await
        .context("opening the database")?;
    let json = args.json;
    let result = match &args.command {
        JobsCommand::List(a) => {
            let mut filter = malaka_jobs::ListFilter::default();
            filter.queue = a.queue.clone();
            filter.kind = a.kind.clone();
            filter.states = a.state.clone();
            filter.before_id = a.before;
            filter.limit = Some(a.limit);
            output::list(&queue, &filter, json).await
        }
        JobsCommand::Show { id } => output::show(&queue, *id, json).await,
        JobsCommand::Stats => output::stats(&queue, json).await,
        JobsCommand::Retry { id } => output::retry(&queue, *id, json).await,
        JobsCommand::Cancel { id } => output::cancel(&queue, *id, json).await,
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
            output::enqueue(&queue, job, json).await
        }
    };
    database.close().await;
    print!("{}", result?);
    Ok(())
}
