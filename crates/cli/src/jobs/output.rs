//! What `malaka jobs ...` prints: list, show, stats, enqueue, cancel, retry; tables or JSON.

use chrono::{DateTime, Utc};
use malaka_jobs::{JobId, JobRecord, JobState, JobsError, ListFilter, NewJob, Queue, QueueStats};

use malaka_server::config::Config;
use malaka_server::db::DatabaseExt as _;
use malaka_server::db::{Database, DbError};

use crate::table::{clip, table, time};

/// Opens and migrates the configured database, and a queue over it.
///
/// # Errors
/// The database could not be opened or migrated.
pub(crate) async fn open(config: &Config) -> Result<(Database, Queue), DbError> {
    let db = Database::connect(&config.database_url(), &config.database).await?;
    db.migrate().await?;
    let queue = Queue::new(db.job_storage(&config.jobs));
    Ok((db, queue))
}

/// Jobs matching `filter`, newest first.
///
/// # Errors
/// A database error.
pub(crate) async fn list(
    queue: &Queue,
    filter: &ListFilter,
    json: bool,
) -> Result<String, JobsError> {
    let jobs = queue.list(filter).await?;
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&jobs)?));
    }
    let mut out = render_list(&jobs);
    if let Some(last) = jobs.last()
        && i64::try_from(jobs.len()).unwrap_or(i64::MAX) >= filter.page_size()
    {
        out.push_str(&format!("(more may follow: --before {})\n", last.id));
    }
    Ok(out)
}

/// One job, every field.
///
/// # Errors
/// [`JobsError::NotFound`] or a database error.
pub(crate) async fn show(queue: &Queue, id: JobId, json: bool) -> Result<String, JobsError> {
    let job = queue.get(id).await?.ok_or(JobsError::NotFound(id))?;
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&job)?));
    }
    Ok(render_job(&job))
}

/// Counts per queue and state.
///
/// # Errors
/// A database error.
pub(crate) async fn stats(queue: &Queue, json: bool) -> Result<String, JobsError> {
    let stats = queue.stats().await?;
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&stats)?));
    }
    Ok(render_stats(&stats))
}

/// Enqueues `job`.
///
/// # Errors
/// An invalid job or a database error.
pub(crate) async fn enqueue(queue: &Queue, job: NewJob, json: bool) -> Result<String, JobsError> {
    let (name, key) = (job.queue.clone(), job.unique_key.clone());
    let out = queue.enqueue(job).await?;
    if json {
        let v = serde_json::json!({"id": out.id, "duplicate": out.duplicate});
        return Ok(format!("{v}\n"));
    }
    Ok(if out.duplicate {
        format!(
            "job {} already holds unique key `{}` and has not finished; nothing enqueued\n",
            out.id,
            key.unwrap_or_default()
        )
    } else {
        format!("enqueued job {} on queue {name}\n", out.id)
    })
}

/// Cancels a job.
///
/// # Errors
/// [`JobsError::NotFound`], [`JobsError::WrongState`] (it already finished), or a database error.
pub(crate) async fn cancel(queue: &Queue, id: JobId, json: bool) -> Result<String, JobsError> {
    let job = queue.cancel(id).await?;
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&job)?));
    }
    Ok(if job.state == JobState::Running {
        format!(
            "job {id} is running on {}; cancel requested (it ends `cancelled` when its run stops)\n",
            job.locked_by.as_deref().unwrap_or("?")
        )
    } else {
        format!("job {id} is {}\n", job.state)
    })
}

/// Runs a discarded, cancelled, retryable or scheduled job again, now.
///
/// # Errors
/// [`JobsError::NotFound`], [`JobsError::WrongState`], or a database error.
pub(crate) async fn retry(queue: &Queue, id: JobId, json: bool) -> Result<String, JobsError> {
    let job = queue.retry(id).await?;
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&job)?));
    }
    Ok(format!(
        "job {id} is {} again (attempts used: {} of {})\n",
        job.state, job.attempt, job.max_attempts
    ))
}

fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".to_owned(), time)
}

/// The list table: one line per job.
pub(crate) fn render_list(jobs: &[JobRecord]) -> String {
    if jobs.is_empty() {
        return "no jobs match\n".to_owned();
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.state.to_string(),
                j.queue.clone(),
                j.kind.clone(),
                format!("{}/{}", j.attempt, j.max_attempts),
                j.priority.to_string(),
                time(j.run_at),
                j.errors
                    .last()
                    .map_or_else(|| "-".to_owned(), |e| clip(&e.error, 60)),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATE",
            "QUEUE",
            "KIND",
            "ATTEMPT",
            "PRIORITY",
            "RUN AT (UTC)",
            "LAST ERROR",
        ],
        &rows,
    )
}

/// Every field of one job, one per line, then its errors oldest first.
pub(crate) fn render_job(j: &JobRecord) -> String {
    let none = || "-".to_owned();
    let fields = [
        ("id", j.id.to_string()),
        ("kind", j.kind.clone()),
        ("queue", j.queue.clone()),
        ("state", j.state.to_string()),
        ("attempt", format!("{} of {}", j.attempt, j.max_attempts)),
        ("priority", j.priority.to_string()),
        ("payload", j.payload.to_string()),
        ("run at", time(j.run_at)),
        ("created at", time(j.created_at)),
        ("attempted at", opt_time(j.attempted_at)),
        ("finished at", opt_time(j.finished_at)),
        ("lease until", opt_time(j.lease_expires_at)),
        ("locked by", j.locked_by.clone().unwrap_or_else(none)),
        ("unique key", j.unique_key.clone().unwrap_or_else(none)),
        (
            "tags",
            if j.tags.is_empty() {
                none()
            } else {
                j.tags.join(", ")
            },
        ),
        (
            "cancel requested",
            if j.cancel_requested { "yes" } else { "no" }.to_owned(),
        ),
    ];
    let mut out = String::new();
    for (k, v) in fields {
        out.push_str(&format!("{:<17} {v}\n", format!("{k}:")));
    }
    if j.errors.is_empty() {
        out.push_str("errors:           none\n");
    } else {
        out.push_str("errors:\n");
        for e in &j.errors {
            out.push_str(&format!(
                "  attempt {} at {}: {}\n",
                e.attempt,
                time(e.at),
                e.error
            ));
        }
    }
    out
}

/// The stats table: one line per queue, a column per state.
pub(crate) fn render_stats(stats: &[QueueStats]) -> String {
    if stats.is_empty() {
        return "no jobs\n".to_owned();
    }
    let mut header = vec!["QUEUE"];
    header.extend(JobState::ALL.iter().map(|s| match s {
        JobState::Available => "AVAILABLE",
        JobState::Scheduled => "SCHEDULED",
        JobState::Running => "RUNNING",
        JobState::Retryable => "RETRYABLE",
        JobState::Completed => "COMPLETED",
        JobState::Discarded => "DISCARDED",
        JobState::Cancelled => "CANCELLED",
    }));
    header.push("OLDEST AVAILABLE");
    let rows: Vec<Vec<String>> = stats
        .iter()
        .map(|s| {
            let mut row = vec![s.queue.clone()];
            row.extend(JobState::ALL.iter().map(|st| s.count(*st).to_string()));
            row.push(s.oldest_available_age.map_or_else(
                || "-".to_owned(),
                |d| {
                    humantime_serde::re::humantime::format_duration(std::time::Duration::from_secs(
                        d.as_secs(),
                    ))
                    .to_string()
                },
            ));
            row
        })
        .collect();
    table(&header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: JobId) -> JobRecord {
        let at = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        JobRecord {
            id,
            queue: "default".into(),
            kind: "sleep".into(),
            payload: serde_json::json!({"ms": 5}),
            priority: 0,
            state: JobState::Retryable,
            attempt: 1,
            max_attempts: 20,
            run_at: at,
            lease_expires_at: None,
            locked_by: None,
            unique_key: None,
            tags: vec![],
            errors: vec![malaka_jobs::AttemptError {
                attempt: 1,
                at,
                error: "lease expired\nworker gone".into(),
            }],
            cancel_requested: false,
            created_at: at,
            attempted_at: Some(at),
            finished_at: None,
        }
    }

    #[test]
    fn tables_line_up_and_errors_stay_on_one_line() {
        let text = render_list(&[job(12), job(7)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID  STATE"), "{text}");
        assert!(
            lines[1].starts_with("12  retryable  default  sleep  1/20"),
            "{text}"
        );
        assert!(lines[1].ends_with("lease expired worker gone"), "{text}");
        assert_eq!(render_list(&[]), "no jobs match\n");

        let shown = render_job(&job(3));
        assert!(shown.contains("state:            retryable\n"), "{shown}");
        assert!(shown.contains("payload:          {\"ms\":5}\n"), "{shown}");
        assert!(
            shown.contains("  attempt 1 at 2027-01-15 08:00:00: lease expired"),
            "{shown}"
        );

        let mut s = QueueStats {
            queue: "default".into(),
            ..QueueStats::default()
        };
        s.counts.insert(JobState::Completed, 10_000);
        s.oldest_available_age = Some(std::time::Duration::from_secs(90));
        let t = render_stats(&[s]);
        assert!(t.starts_with("QUEUE    AVAILABLE"), "{t}");
        assert!(t.contains("10000"), "{t}");
        assert!(t.trim_end().ends_with("1m 30s"), "{t}");
        assert_eq!(clip("abcdef", 5), "ab...");
    }
}
