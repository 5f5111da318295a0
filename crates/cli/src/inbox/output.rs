//! What `malaka inbox list|show|replay` prints: tables or JSON.

use malaka_inventory::{InboxFilter, InboxRecord, InventoryError};

use malaka_server::sqs::Commands;

use crate::table::{clip, table, time};

/// The records matching `filter`, newest first.
///
/// # Errors
/// A database error.
pub(crate) async fn list(
    inventory: &malaka_inventory::Inventory,
    filter: &InboxFilter,
    json: bool,
) -> Result<String, InventoryError> {
    let records = inventory.inbox_list(filter).await?;
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&records)?));
    }
    if records.is_empty() {
        return Ok("no inbox records match\n".to_owned());
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.state.as_str().to_owned(),
                r.attempts.to_string(),
                clip(&r.source, 24),
                clip(&r.message_id, 24),
                r.kind.clone(),
                time(r.updated_at),
                clip(r.errors.last().map_or("", |a| a.error.as_str()), 60),
            ]
        })
        .collect();
    Ok(table(
        &[
            "ID",
            "STATE",
            "TRIES",
            "SOURCE",
            "MESSAGE",
            "TYPE",
            "UPDATED",
            "LAST REASON",
        ],
        &rows,
    ))
}

/// One record, with every attempt's reason and the message.
pub(crate) fn render(r: &InboxRecord) -> String {
    let mut out = format!(
        "inbox record {}\n  source:    {}\n  message:   {}\n  type:      {}\n  state:     {}\n  \
         attempts:  {}\n  received:  {}\n  updated:   {}\n",
        r.id,
        r.source,
        r.message_id,
        r.kind,
        r.state.as_str(),
        r.attempts,
        time(r.received_at),
        time(r.updated_at),
    );
    if !r.movements.is_empty() {
        out.push_str(&format!("  movements: {}\n", r.movements.join(", ")));
    }
    for a in &r.errors {
        out.push_str(&format!("  {}  {}\n", time(a.at), a.error));
    }
    out.push_str(&format!("  body: {}\n", r.payload));
    out
}

/// One record.
///
/// # Errors
/// `NotFound` or a database error.
pub(crate) async fn show(
    inventory: &malaka_inventory::Inventory,
    id: i64,
    json: bool,
) -> Result<String, InventoryError> {
    let r = inventory.inbox_record(id).await?;
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&r)?));
    }
    Ok(render(&r))
}

/// Runs a parked, refused or dead-lettered command again; the record as it then is.
///
/// # Errors
/// As `Commands::replay`.
pub(crate) async fn replay(
    commands: &Commands,
    id: i64,
    json: bool,
) -> Result<String, InventoryError> {
    let r = commands.replay(id).await?;
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&r)?));
    }
    Ok(render(&r))
}
