//! `malaka notify`: a test message through a rule.

use anyhow::Context;
use clap::Subcommand;

use crate::{Cli, DbArgs, open_quietly};
use malaka_server::db::DatabaseExt as _;

#[derive(Debug, clap::Args)]
pub(crate) struct NotifyArgs {
    #[command(subcommand)]
    pub(crate) command: NotifyCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum NotifyCommand {
    /// Send a test message through rule ID now (not through the queue); exit 1 if it fails.
    Test {
        /// The rule's id (see GET /api/v1/notification-rules).
        #[arg(long)]
        rule: i64,
        #[command(flatten)]
        db: DbArgs,
    },
}

pub(crate) async fn command(cli: &Cli, args: &NotifyArgs) -> anyhow::Result<()> {
    let NotifyCommand::Test { rule, db } = &args.command;
    let (config, database) = open_quietly(cli, db).await?;
    let notifier = malaka_notify::Notifier::new(
        database.clone(),
        &malaka_server::app::notify_config(&config, None),
    )
    .context("notification settings")?;
    let result = notifier.test(*rule).await;
    database.close().await;
    let sent = result.with_context(|| format!("sending a test message through rule {rule}"))?;
    println!("{sent}");
    Ok(())
}
