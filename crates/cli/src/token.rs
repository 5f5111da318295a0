//! `malaka token`: API tokens (create, list, revoke).

use anyhow::Context;
use clap::Subcommand;

use crate::{Cli, DbArgs, open_quietly};
use malaka_server::db::DatabaseExt as _;

#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    #[command(subcommand)]
    pub(crate) command: TokenCommand,
    #[command(flatten)]
    pub(crate) db: DbArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token and print it (only it) on stdout; it is not shown again.
    Create {
        /// A name saying who or what uses the token (1 to 100 characters).
        #[arg(long)]
        name: String,
        /// admin (everything), manager (read, movements, catalog), clerk (read, movements) or
        /// viewer (read).
        #[arg(long, value_parser = role)]
        role: malaka_server::auth::Role,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id: it stops working at once.
    Revoke {
        /// The token's id.
        id: i64,
    },
}

pub(crate) fn role(s: &str) -> Result<malaka_server::auth::Role, String> {
    s.parse()
        .map_err(|e: malaka_server::auth::UnknownRole| e.to_string())
}

pub(crate) async fn command(cli: &Cli, args: &TokenArgs) -> anyhow::Result<()> {
    let (_config, database) = open_quietly(cli, &args.db).await?;
    let tokens = malaka_server::auth::TokenStore::new(database.clone());
    let result = match &args.command {
        TokenCommand::Create { name, role } => {
            let name =
                malaka_server::auth::check_name(name).map_err(|m| anyhow::anyhow!("--name {m}"))?;
            tokens
                .create(name, *role)
                .await
                .map(|t| format!("{}\n", t.token.expose()))
        }
        TokenCommand::List => tokens.list().await.map(|list| render_table(&list)),
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

/// `tokens` as a readable table (no secrets).
fn render_table(tokens: &[malaka_server::auth::TokenInfo]) -> String {
    let fmt_time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
        )
    };
    let mut out = format!(
        "{:>6}  {:<24}  {:<8}  {:<19}  {:<19}  {:<19}\n",
        "ID", "NAME", "ROLE", "CREATED", "LAST USED", "REVOKED"
    );
    for t in tokens {
        out.push_str(&format!(
            "{:>6}  {:<24}  {:<8}  {:<19}  {:<19}  {:<19}\n",
            t.id,
            t.name,
            t.role.as_str(),
            fmt_time(Some(t.created_at)),
            fmt_time(t.last_used_at),
            fmt_time(t.revoked_at),
        ));
    }
    out
}
