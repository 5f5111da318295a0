//! `malaka inbox`: what other systems sent and what became of it.

mod output;

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::{Cli, DbArgs, open_quietly};
use malaka_server::db::DatabaseExt as _;

#[derive(Debug, clap::Args)]
pub(crate) struct InboxArgs {
    #[command(subcommand)]
    pub(crate) command: InboxCommand,
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
pub(crate) enum InboxCommand {
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

pub(crate) async fn command(cli: &Cli, args: &InboxArgs) -> anyhow::Result<()> {
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
            output::list(&inventory, &filter, args.json).await
        }
        InboxCommand::Show { id } => output::show(&inventory, *id, args.json).await,
        InboxCommand::Replay { id } => {
            // Events of a replayed command reach the listeners of `serve` through the outbox.
            let bus = malaka_runtime::EventBus::new(malaka_runtime::WorkerPool::new(
                malaka_runtime::PoolConfig::new("events"),
            )?);
            let commands = malaka_server::sqs::Commands::new(
                &inventory,
                &bus,
                std::sync::Arc::new(|| {}),
                config.sqs.park_after,
            )
            .publishing_all();
            output::replay(&commands, *id, args.json).await
        }
    };
    database.close().await;
    print!("{}", result.context("inbox command")?);
    Ok(())
}
