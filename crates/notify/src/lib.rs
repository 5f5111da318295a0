//! Notifications: rules say where stock alerts (and finished reports) go; each alert change
//! enqueues one delivery job per matching rule in the alert's own transaction; the jobs, on the
//! `notifications` queue, send email over SMTP (lettre, pooled) or signed webhooks, each target
//! behind a circuit breaker of its own. While a breaker is open, deliveries snooze until it may
//! let a probe through instead of spending their attempts.

pub mod config;
pub mod guard;
pub mod rules;
mod send;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use malaka_inventory::{AlertAction, AlertChange, AlertEffects, AlertLevel, InventoryError};
use malaka_jobs::{JobContext, JobError, JobOptions, NewJob, Registry};
use malaka_runtime::{
    CircuitBreaker, CircuitConfig, CircuitState, Error as RuntimeError, RetryPolicy,
};
use serde::{Deserialize, Serialize};

use malaka_db::Database;

pub use config::{BreakerConfig, NotifyConfig, SmtpConfig, SmtpTls};
pub use rules::{Channel, NewRule, Rule, RuleError, RuleInput, RuleStore};
pub use send::{SendError, Signature, sign};

/// Applies this crate's migrations (the rules table) that have not run yet; the crates'
/// migrators share `_sqlx_migrations`, so each leaves the others' versions alone.
///
/// # Errors
/// A migration that fails, or one that was edited after it ran.
pub async fn migrate(db: &Database) -> Result<(), sqlx::migrate::MigrateError> {
    match db {
        Database::Sqlite(pool) => {
            let mut m = sqlx::migrate!("./migrations/sqlite");
            m.set_ignore_missing(true);
            m.run(pool).await
        }
        Database::Postgres(pool) => {
            let mut m = sqlx::migrate!("./migrations/postgres");
            m.set_ignore_missing(true);
            m.run(pool).await
        }
    }
}

/// The queue deliveries run on.
pub const QUEUE: &str = "notifications";
/// The job kind of a delivery.
pub const KIND: &str = "notify";

/// Out of stock and critical alerts: first.
pub const PRIORITY_HIGH: i16 = 1;
/// Low stock, reports.
pub const PRIORITY_MEDIUM: i16 = 5;
/// Cleared alerts, digests.
pub const PRIORITY_LOW: i16 = 10;

/// A delivery job's payload: which rule, and what to tell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The rule (looked up when the job runs: a deleted rule sends nothing).
    pub rule: i64,
    /// `stock_alert`, `report_ready` or `test`.
    pub event: String,
    /// The event's data (a `stock.alert` payload, or a report's).
    pub data: serde_json::Value,
}

/// The priority of an alert change's notifications.
pub fn priority(change: &AlertChange) -> i16 {
    match (change.action, change.alert.level) {
        (AlertAction::Cleared, _) => PRIORITY_LOW,
        (_, AlertLevel::OutOfStock | AlertLevel::Critical) => PRIORITY_HIGH,
        _ => PRIORITY_MEDIUM,
    }
}

/// The delivery jobs for `change`: one per rule that wants it (raised, escalated, eased and
/// cleared alerts; not acknowledgements), each with unique key (alert, rule, action, level).
pub fn jobs_for(change: &AlertChange, rules: &[Rule], max_attempts: i32) -> Vec<NewJob> {
    if change.action == AlertAction::Acknowledged {
        return Vec::new();
    }
    let a = &change.alert;
    rules
        .iter()
        .filter(|r| r.wants_alert(&a.sku, &a.warehouse, a.level))
        .map(|r| {
            let payload = Delivery {
                rule: r.id,
                event: "stock_alert".to_owned(),
                data: change.payload(),
            };
            NewJob::new(
                KIND,
                serde_json::to_value(&payload).unwrap_or(serde_json::Value::Null),
            )
            .queue(QUEUE)
            .priority(priority(change))
            .max_attempts(max_attempts)
            .unique_key(format!(
                "notify:{}:{}:{}:{}",
                a.id,
                r.id,
                change.action.as_str(),
                a.level.as_str()
            ))
            .tag(r.channel.as_str())
            .tag("stock_alert")
        })
        .collect()
}

/// The delivery jobs for a finished report (`report.ready` payload): one per rule that wants
/// `report_ready`, medium priority, unique per (report, rule).
pub fn jobs_for_report(event: &serde_json::Value, rules: &[Rule]) -> Vec<NewJob> {
    let id = event["report_id"].as_str().unwrap_or_default();
    rules
        .iter()
        .filter(|r| r.wants_report())
        .map(|r| {
            let payload = Delivery {
                rule: r.id,
                event: "report_ready".to_owned(),
                data: event.clone(),
            };
            NewJob::new(
                KIND,
                serde_json::to_value(&payload).unwrap_or(serde_json::Value::Null),
            )
            .queue(QUEUE)
            .priority(PRIORITY_MEDIUM)
            .unique_key(format!("notify:report:{id}:{}", r.id))
            .tag(r.channel.as_str())
            .tag("report_ready")
        })
        .collect()
}

/// Enqueues alert notifications inside the alert's transaction.
#[derive(Debug, Clone, Copy)]
pub struct NotifyEffects {
    /// Attempts per delivery.
    pub max_attempts: i32,
}

fn effect_err(e: impl std::fmt::Display) -> InventoryError {
    InventoryError::Unavailable(format!("enqueueing notifications: {e}"))
}

#[async_trait]
impl AlertEffects for NotifyEffects {
    async fn sqlite(
        &self,
        conn: &mut sqlx::SqliteConnection,
        change: &AlertChange,
    ) -> Result<(), InventoryError> {
        if change.action == AlertAction::Acknowledged {
            return Ok(());
        }
        let rules = rules::enabled_sqlite(&mut *conn)
            .await
            .map_err(effect_err)?;
        for job in jobs_for(change, &rules, self.max_attempts) {
            malaka_jobs::sqlite::enqueue_in(conn, &job)
                .await
                .map_err(effect_err)?;
        }
        Ok(())
    }

    async fn postgres(
        &self,
        conn: &mut sqlx::PgConnection,
        change: &AlertChange,
    ) -> Result<(), InventoryError> {
        if change.action == AlertAction::Acknowledged {
            return Ok(());
        }
        let rules = rules::enabled_postgres(&mut *conn)
            .await
            .map_err(effect_err)?;
        for job in jobs_for(change, &rules, self.max_attempts) {
            malaka_jobs::postgres::enqueue_in(conn, &job)
                .await
                .map_err(effect_err)?;
        }
        Ok(())
    }
}

/// One circuit breaker per delivery target (an SMTP server, a webhook host).
#[derive(Debug, Default)]
struct Breakers {
    map: Mutex<HashMap<String, CircuitBreaker>>,
}

impl Breakers {
    fn get(&self, target: &str, config: &NotifyConfig) -> CircuitBreaker {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(target.to_owned())
            .or_insert_with(|| {
                let label = target.to_owned();
                metrics::gauge!("malaka_notify_breaker_open", "target" => label.clone()).set(0.0);
                CircuitBreaker::new(
                    CircuitConfig::new(target)
                        .failure_rate(config.breaker.failure_rate)
                        .minimum_calls(config.breaker.minimum_calls)
                        .open_duration(config.breaker.open_for)
                        .on_transition(move |t| {
                            let open = match t.to {
                                CircuitState::Open => 1.0,
                                CircuitState::HalfOpen => 0.5,
                                CircuitState::Closed => 0.0,
                            };
                            metrics::gauge!("malaka_notify_breaker_open", "target" => label.clone())
                                .set(open);
                        }),
                )
            })
            .clone()
    }

    fn states(&self) -> Vec<(String, CircuitState)> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<_> = map.iter().map(|(k, b)| (k.clone(), b.state())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Why a notification could not be set up or sent outside the queue (`malaka notify test`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// No such rule.
    #[error("notification rule {0} not found")]
    NoRule(i64),
    /// Sending failed.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The SMTP settings are unusable.
    #[error("SMTP settings: {0}")]
    Smtp(String),
}

/// Sends notifications: the job handler behind [`KIND`], and `malaka notify test`.
#[derive(Debug)]
pub struct Notifier {
    rules: RuleStore,
    sender: send::Sender,
    breakers: Breakers,
    config: NotifyConfig,
    /// Messages sent by this notifier: email, webhook.
    sent: [std::sync::atomic::AtomicUsize; 2],
}

impl Notifier {
    /// A notifier over `db` with `config`; `dashboard` is the link put in messages.
    ///
    /// # Errors
    /// The SMTP settings cannot make a transport (a bad host name for TLS, say).
    pub fn new(db: Database, config: &NotifyConfig) -> Result<Self, NotifyError> {
        Ok(Self {
            rules: RuleStore::new(db),
            sender: send::Sender::new(config)?,
            breakers: Breakers::default(),
            config: config.clone(),
            sent: Default::default(),
        })
    }

    /// Messages this process has sent on `channel` (`email` or `webhook`).
    pub fn sent(&self, channel: &str) -> usize {
        let i = usize::from(channel == "webhook");
        self.sent[i].load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether webhooks may reach non-public addresses (`notify.allow_private_targets`).
    pub fn allow_private_targets(&self) -> bool {
        self.config.allow_private_targets
    }

    /// The rules.
    pub fn rules(&self) -> &RuleStore {
        &self.rules
    }

    /// Each target's breaker state.
    pub fn breaker_states(&self) -> Vec<(String, CircuitState)> {
        self.breakers.states()
    }

    /// The job options of deliveries (queue, attempts, backoff from 1 s up to 10 minutes).
    pub fn job_options(&self) -> JobOptions {
        JobOptions::default()
            .queue(QUEUE)
            .max_attempts(self.config.max_attempts)
            .timeout(Duration::from_secs(120))
            .backoff(
                RetryPolicy::new(u32::MAX)
                    .initial_delay(Duration::from_secs(1))
                    .max_delay(Duration::from_secs(600)),
            )
    }

    /// `registry` with the delivery kind added.
    pub fn register(self: &Arc<Self>, registry: Registry) -> Registry {
        let me = Arc::clone(self);
        registry.register_fn(KIND, self.job_options(), move |payload, ctx| {
            let me = Arc::clone(&me);
            async move { me.run(payload, &ctx).await }
        })
    }

    async fn run(&self, payload: serde_json::Value, ctx: &JobContext) -> Result<(), JobError> {
        let d: Delivery = serde_json::from_value(payload)
            .map_err(|e| JobError::permanent(format!("not a delivery: {e}")))?;
        let Some(rule) = self.rules.get(d.rule).await? else {
            tracing::info!(
                job = ctx.id,
                rule = d.rule,
                "the rule was deleted; nothing sent"
            );
            metrics::counter!("malaka_notify_skipped_total", "reason" => "rule_deleted")
                .increment(1);
            return Ok(());
        };
        if !rule.enabled && d.event != "test" {
            tracing::info!(
                job = ctx.id,
                rule = rule.id,
                "the rule is disabled; nothing sent"
            );
            metrics::counter!("malaka_notify_skipped_total", "reason" => "rule_disabled")
                .increment(1);
            return Ok(());
        }
        let channel = rule.channel.as_str();
        let breaker = self.breakers.get(&self.sender.target(&rule), &self.config);
        let permit = match breaker.try_acquire() {
            Ok(p) => p,
            Err(RuntimeError::CircuitOpen { retry_after, name }) => {
                metrics::counter!("malaka_notify_snoozed_total", "channel" => channel).increment(1);
                // A little spread, so the snoozed jobs do not all probe at once.
                let jitter = Duration::from_millis(fastrand::u64(0..250));
                return Err(JobError::snooze(
                    retry_after + jitter,
                    format!("{name} is failing (circuit open)"),
                ));
            }
            Err(e) => return Err(JobError::retryable(e)),
        };
        match self.sender.send(&rule, &d, ctx.id).await {
            Ok(()) => {
                permit.success();
                self.sent[usize::from(rule.channel == Channel::Webhook)]
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                metrics::counter!("malaka_notify_sent_total", "channel" => channel).increment(1);
                tracing::info!(job = ctx.id, rule = rule.id, channel, "notification sent");
                Ok(())
            }
            Err(e) if e.is_target_down() => {
                permit.failure();
                let will_retry = ctx.attempt < ctx.max_attempts;
                let outcome = if will_retry { "retried" } else { "failed" };
                metrics::counter!("malaka_notify_failed_total", "channel" => channel, "outcome" => outcome)
                    .increment(1);
                if will_retry {
                    metrics::counter!("malaka_notify_retried_total", "channel" => channel)
                        .increment(1);
                }
                Err(JobError::retryable(e))
            }
            Err(e) => {
                // The target answered: it is up, the message is refused.
                permit.success();
                metrics::counter!("malaka_notify_failed_total", "channel" => channel, "outcome" => "refused")
                    .increment(1);
                if e.is_permanent() {
                    Err(JobError::permanent(e))
                } else {
                    Err(JobError::retryable(e))
                }
            }
        }
    }

    /// Sends a test message through rule `id` now, outside the queue; what was sent.
    ///
    /// # Errors
    /// No such rule, or sending failed.
    pub async fn test(&self, id: i64) -> Result<String, NotifyError> {
        let rule = self.rules.get(id).await?.ok_or(NotifyError::NoRule(id))?;
        let d = Delivery {
            rule: id,
            event: "test".to_owned(),
            data: send::sample_alert(),
        };
        self.sender.send(&rule, &d, 0).await?;
        let to = match rule.channel {
            Channel::Email => rule.target.clone(),
            Channel::Webhook => malaka_db::secret::origin(&rule.target),
        };
        Ok(format!(
            "test message sent through rule {id} ({} to {to})",
            rule.channel.as_str(),
        ))
    }
}
