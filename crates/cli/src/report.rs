//! `malaka report`: a report run now, with a progress bar, to a file or stdout.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;

use crate::{Cli, DbArgs, open_quietly};
use malaka_server::db::DatabaseExt as _;

#[derive(Debug, clap::Args)]
pub(crate) struct ReportArgs {
    /// stock_balance, ledger, valuation, low_stock or ageing.
    #[arg(value_name = "TYPE")]
    pub(crate) kind: String,
    /// csv or json.
    #[arg(long, default_value = "csv")]
    pub(crate) format: String,
    /// Write here instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Only this article.
    #[arg(long)]
    pub(crate) sku: Option<String>,
    /// Only this warehouse.
    #[arg(long)]
    pub(crate) warehouse: Option<String>,
    /// Ledger rows posted at or after (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_parser = report_time)]
    pub(crate) from: Option<chrono::DateTime<chrono::Utc>>,
    /// Ledger rows posted before (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_parser = report_time)]
    pub(crate) to: Option<chrono::DateTime<chrono::Utc>>,
    #[command(flatten)]
    pub(crate) db: DbArgs,
}

pub(crate) fn report_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        })
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor a YYYY-MM-DD date"))
}

pub(crate) async fn command(cli: &Cli, args: &ReportArgs) -> anyhow::Result<()> {
    let kind: malaka_inventory::ReportKind =
        args.kind.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let format = malaka_reports::Format::parse(&args.format)
        .ok_or_else(|| anyhow::anyhow!("--format must be csv or json, not {:?}", args.format))?;
    let (config, database) = open_quietly(cli, &args.db).await?;
    let reports = malaka_reports::Reports::new(
        database.clone(),
        database.inventory(),
        config.reports.retention,
    );
    let params = malaka_reports::StoredParams {
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
