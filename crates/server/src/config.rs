//! Configuration: defaults, then `malaka.toml`, then `MALAKA_*` environment variables, then flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use malaka_notify::{BreakerConfig, NotifyConfig, SmtpConfig, SmtpTls};

use malaka_db::secret::Secret;

/// Everything `malaka serve` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Folder for the SQLite database and other local files.
    pub data_dir: PathBuf,
    /// Time allowed, after SIGINT or SIGTERM, to finish requests and drain work.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Database connection.
    pub database: DatabaseConfig,
    /// Logging.
    pub log: LogConfig,
    /// Worker pools, by name.
    pub pools: PoolsConfig,
    /// The durable job queue's workers and maintenance.
    pub jobs: JobsConfig,
    /// The HTTP API (`/api/v1`): per-token rate limits.
    pub api: ApiConfig,
    /// Live events: the outbox relay, the stock alert sweep and WebSocket clients.
    pub live: LiveConfig,
    /// Notifications: SMTP, webhooks, circuit breakers.
    pub notify: NotifyConfig,
    /// Reports: how long their files are kept.
    pub reports: ReportsConfig,
    /// Amazon SQS: inbound command queues, the outbound event queue.
    pub sqs: SqsConfig,
    /// How long-lived tasks (the posting committer, the outbox relay, ...) are restarted.
    pub supervision: SupervisionConfig,
}

/// Restarts of the node's long-lived tasks: a task that panics or ends unexpectedly is started
/// again after a backoff doubling from `min_backoff` to `max_backoff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisionConfig {
    /// Wait before the first restart.
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    /// Longest wait between restarts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        Self {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl SupervisionConfig {
    /// The runtime's supervisor settings.
    pub fn to_runtime(&self) -> malaka_runtime::SupervisorConfig {
        malaka_runtime::SupervisorConfig::default()
            .min_backoff(self.min_backoff)
            .max_backoff(self.max_backoff)
    }
}

/// Amazon SQS. Nothing runs unless a queue is configured. Credentials come from the standard
/// AWS chain (environment, profile, instance role) unless `access_key_id` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqsConfig {
    /// AWS region.
    pub region: String,
    /// A local or SQS-compatible server's address (empty: AWS).
    pub endpoint_url: String,
    /// Static credentials (empty: the standard chain).
    pub access_key_id: String,
    /// Its secret (printed as `***`).
    pub secret_access_key: Secret,
    /// Queues of commands from other systems.
    pub inbound: Vec<InboundQueue>,
    /// The queue outbox events are published to (empty: none).
    pub outbound_url: String,
    /// Long-poll wait per receive.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// Attempts of a command refused for a reason that can change (insufficient stock, an
    /// unknown article) before Malaka parks it for a person to replay.
    pub park_after: i32,
    /// Final inbox records are deleted this long after they were received.
    #[serde(with = "humantime_serde")]
    pub inbox_retention: Duration,
}

impl Default for SqsConfig {
    fn default() -> Self {
        Self {
            region: "us-east-1".to_owned(),
            endpoint_url: String::new(),
            access_key_id: String::new(),
            secret_access_key: Secret::default(),
            inbound: Vec::new(),
            outbound_url: String::new(),
            wait: Duration::from_secs(20),
            park_after: 10,
            inbox_retention: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

/// One inbound queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboundQueue {
    /// The queue's URL.
    pub url: String,
    /// Messages handled at once.
    pub concurrency: usize,
    /// Concurrent receive loops.
    pub pollers: usize,
    /// Visibility timeout asked for, renewed while a message is handled.
    #[serde(with = "humantime_serde")]
    pub visibility: Duration,
}

impl Default for InboundQueue {
    fn default() -> Self {
        Self {
            url: String::new(),
            concurrency: 16,
            pollers: 2,
            visibility: Duration::from_secs(30),
        }
    }
}

/// Reports (they run on the `reports` job queue: `[jobs.queues.reports] concurrency` limits how
/// many run at once on each node, default 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportsConfig {
    /// Finished reports (and their files) are deleted this long after they finish.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often expired reports are looked for.
    #[serde(with = "humantime_serde")]
    pub prune_every: Duration,
    /// Reports one token may have queued or running at once; more are refused with 429.
    pub max_active_per_token: u32,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            prune_every: Duration::from_secs(600),
            max_active_per_token: 4,
        }
    }
}

/// The outbox relay, the alert sweep and the WebSocket hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LiveConfig {
    /// How often the sweep recomputes alert levels from the balances and repairs alerts the
    /// event path missed (0: never).
    #[serde(with = "humantime_serde")]
    pub sweep_every: Duration,
    /// Published events are kept this long, for WebSocket clients resuming with `since`.
    #[serde(with = "humantime_serde")]
    pub outbox_retention: Duration,
    /// How often the relay and each hub look for events when no wake-up arrives.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often the server pings each WebSocket client; a client silent for two of these is
    /// dropped.
    #[serde(with = "humantime_serde")]
    pub ws_ping_interval: Duration,
    /// Messages waiting for one WebSocket client before it is closed as lagged.
    pub ws_buffer: usize,
    /// Lifetime of a ticket from `POST /api/v1/ws/ticket`.
    #[serde(with = "humantime_serde")]
    pub ws_ticket_ttl: Duration,
    /// Attempts to deliver an event to a listener (the first included) before the failure is
    /// parked for a person to replay.
    pub delivery_attempts: i32,
    /// Wait before a failed delivery is tried again, doubling up to 10 minutes.
    #[serde(with = "humantime_serde")]
    pub delivery_backoff: Duration,
    /// WebSocket connections one token may hold open on this node; more are closed with 1008.
    pub ws_max_per_token: usize,
    /// WebSocket connections this node holds open at most; more are closed with 1013.
    pub ws_max_connections: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            sweep_every: Duration::from_secs(60),
            outbox_retention: Duration::from_secs(7 * 24 * 3600),
            poll_interval: Duration::from_secs(1),
            ws_ping_interval: Duration::from_secs(20),
            ws_buffer: 1024,
            ws_ticket_ttl: Duration::from_secs(60),
            delivery_attempts: 10,
            delivery_backoff: Duration::from_secs(1),
            ws_max_per_token: 50,
            ws_max_connections: 10_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("malaka-data"),
            shutdown_timeout: Duration::from_secs(5),
            database: DatabaseConfig::default(),
            log: LogConfig::default(),
            pools: PoolsConfig::default(),
            jobs: JobsConfig::default(),
            api: ApiConfig::default(),
            live: LiveConfig::default(),
            notify: NotifyConfig::default(),
            reports: ReportsConfig::default(),
            sqs: SqsConfig::default(),
            supervision: SupervisionConfig::default(),
        }
    }
}

/// The HTTP API's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Requests each token may make per second, sustained; 0 disables the limit.
    pub rate_limit_per_second: u32,
    /// Requests each token may make at once above the sustained rate (0: the rate).
    pub rate_limit_burst: u32,
    /// Longest a request may take before it is answered 503 (what it committed stays committed;
    /// a retry with its `Idempotency-Key` gets that answer).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests that fail authentication each client address may make per minute, sustained;
    /// past that (and the burst) its requests are answered 429 before any token is looked at.
    pub failed_auth_per_minute: u32,
    /// Failed requests a client may make at once above the sustained rate.
    pub failed_auth_burst: u32,
    /// Proxies (CIDRs, e.g. `10.0.0.0/8`) whose `X-Forwarded-For` names the client; a request
    /// from anywhere else is the client itself, whatever it claims. Default: none.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            rate_limit_per_second: 50,
            rate_limit_burst: 100,
            request_timeout: Duration::from_secs(30),
            failed_auth_per_minute: 30,
            failed_auth_burst: 20,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Which database, and how to talk to it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://...`; empty means `sqlite://<data_dir>/malaka.db`. A
    /// password in it is printed as `***`.
    #[serde(serialize_with = "url_without_password")]
    pub url: String,
    /// Connections in the pool.
    pub max_connections: u32,
    /// SQLite `synchronous` setting: `full` (every commit reaches the disk before it is
    /// acknowledged) or `normal` (WAL: survives a process crash, may lose the last commits on a
    /// power cut).
    pub sqlite_synchronous: SqliteSync,
}

fn url_without_password<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&malaka_db::secret::redact_url_password(url))
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &malaka_db::secret::redact_url_password(&self.url))
            .field("max_connections", &self.max_connections)
            .field("sqlite_synchronous", &self.sqlite_synchronous)
            .finish()
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 8,
            sqlite_synchronous: SqliteSync::Full,
        }
    }
}

/// SQLite durability level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    /// fsync on every commit.
    Full,
    /// fsync at checkpoints (safe against process crashes in WAL mode).
    Normal,
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (readable) or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `malaka=debug,sqlx=warn`; `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Sizes of the server's worker pools.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolsConfig {
    /// The pool behind the event bus's asynchronous dispatch.
    pub events: PoolSettings,
}

/// One pool's sizes; unset values take `malaka-runtime`'s defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSettings {
    /// Workers kept when idle.
    pub min_workers: Option<usize>,
    /// Most workers (and so tasks running at once).
    pub max_workers: Option<usize>,
    /// Tasks that may wait.
    pub queue_size: Option<usize>,
    /// Idle time before a worker above the minimum retires.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
}

impl PoolSettings {
    /// The runtime's pool configuration for pool `name`, draining within `shutdown_timeout`.
    pub fn to_pool_config(
        &self,
        name: &str,
        shutdown_timeout: Duration,
    ) -> malaka_runtime::PoolConfig {
        let mut c = malaka_runtime::PoolConfig::new(name).shutdown_timeout(shutdown_timeout);
        if let Some(n) = self.min_workers {
            c = c.min_workers(n);
        }
        if let Some(n) = self.max_workers {
            c = c.max_workers(n);
        }
        if let Some(n) = self.queue_size {
            c = c.queue_size(n);
        }
        if let Some(d) = self.idle_timeout {
            c = c.idle_timeout(d);
        }
        c
    }
}

/// The job queue: which queues this node works, leases, polling and retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Queues this node works, by name (default: `default` with concurrency 10,
    /// `notifications` with 32, `reports` with 2). Settings merge with the defaults, so these are
    /// always listed; give one `concurrency = 0` to leave it to other nodes.
    pub queues: BTreeMap<String, JobQueueSettings>,
    /// Lease on each claimed job; a heartbeat renews it every third of it. A job whose worker
    /// dies runs again once its lease has expired.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often an idle worker looks for jobs when no wake-up arrives (PostgreSQL
    /// `LISTEN/NOTIFY` and SQLite commit hooks wake it at once otherwise).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// On SQLite: how often each worker checks (`PRAGMA data_version`, no table read) whether
    /// another connection committed, and then looks for new waiting jobs: the bound on picking up
    /// a job another process enqueued (`malaka jobs enqueue`, a second server). Zero turns it off
    /// (such jobs then wait for `poll_interval`). Ignored on PostgreSQL, where `NOTIFY` reaches
    /// every process.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
    /// Completed jobs are deleted this long after they finished; zero (the default) deletes
    /// each as it completes, which costs the database least. Discarded and cancelled jobs are
    /// kept (`failed_retention`) for inspection and retry either way.
    #[serde(with = "humantime_serde")]
    pub completed_retention: Duration,
    /// Discarded and cancelled jobs are deleted this long after they finished.
    #[serde(with = "humantime_serde")]
    pub failed_retention: Duration,
    /// How often running jobs with an expired lease are looked for and made retryable.
    #[serde(with = "humantime_serde")]
    pub rescue_every: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            queues: BTreeMap::from([
                (
                    malaka_jobs::DEFAULT_QUEUE.to_owned(),
                    JobQueueSettings::default(),
                ),
                (
                    malaka_notify::QUEUE.to_owned(),
                    JobQueueSettings {
                        concurrency: 32,
                        ..JobQueueSettings::default()
                    },
                ),
                (
                    malaka_reports::QUEUE.to_owned(),
                    JobQueueSettings {
                        concurrency: 2,
                        min_workers: Some(1),
                        prefetch: Some(0),
                    },
                ),
            ]),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(2),
            watch_interval: malaka_jobs::sqlite::DEFAULT_WATCH_INTERVAL,
            completed_retention: Duration::ZERO,
            failed_retention: Duration::from_secs(7 * 24 * 3600),
            rescue_every: Duration::from_secs(5),
        }
    }
}

/// One queue's worker settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobQueueSettings {
    /// Jobs of this queue run at once on this node; 0 means this node does not work the queue.
    pub concurrency: usize,
    /// Pool workers kept when idle (default 1).
    pub min_workers: Option<usize>,
    /// Jobs claimed ahead of free workers (default: the concurrency, at least 10).
    pub prefetch: Option<usize>,
}

impl Default for JobQueueSettings {
    fn default() -> Self {
        Self {
            concurrency: 10,
            min_workers: None,
            prefetch: None,
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--shutdown-timeout`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub shutdown_timeout: Option<Duration>,
    /// `--database-url` and friends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseOverrides>,
    /// `--log-format`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<LogOverrides>,
}

/// Database flags.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DatabaseOverrides {
    /// `--database-url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Log flags.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogOverrides {
    /// `--log-format`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer had a bad value or an unknown key.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    /// An explicitly named config file is missing.
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    /// A value has the right type but cannot work.
    #[error("invalid configuration: `{key}` {message}")]
    Value {
        /// The key, dotted (`jobs.lease`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Environment variables under this prefix that are not configuration (test harness settings).
const NOT_CONFIG: &str = "test_";

/// `MALAKA_*` variables that are read directly, not configuration keys.
const NOT_CONFIG_VARS: &[&str] = &["bootstrap_token"];

impl Config {
    /// Loads the layers: defaults, the TOML file (`path`, or `malaka.toml` in the working folder
    /// when it exists), `MALAKA_*` variables (nested keys joined by `__`, e.g.
    /// `MALAKA_DATABASE__URL`), then `overrides`.
    ///
    /// # Errors
    /// An unknown key, a value of the wrong type, or a named file that does not exist.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::load_from(path, overrides, Env::prefixed("MALAKA_"))
    }

    fn load_from(
        path: Option<&Path>,
        overrides: &Overrides,
        env: Env,
    ) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match path {
            Some(p) if !p.exists() => return Err(ConfigError::MissingFile(p.to_owned())),
            Some(p) => fig = fig.merge(Toml::file_exact(p)),
            None => {
                if Path::new("malaka.toml").exists() {
                    fig = fig.merge(Toml::file_exact("malaka.toml"));
                }
            }
        }
        let env = env
            .filter(|k| {
                let k = k.as_str().to_ascii_lowercase();
                !k.starts_with(NOT_CONFIG) && !NOT_CONFIG_VARS.contains(&k.as_str())
            })
            .split("__");
        fig = fig.merge(env).merge(Serialized::defaults(overrides));
        let config: Self = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        config.check()?;
        Ok(config)
    }

    /// Rejects values that parse but cannot work: every duration, interval, size and count is
    /// checked against its range, and the first one outside it is named with the range.
    fn check(&self) -> Result<(), ConfigError> {
        const MS: Duration = Duration::from_millis(1);
        const SEC: Duration = Duration::from_secs(1);
        const MIN: Duration = Duration::from_secs(60);
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(24 * 3600);
        const YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
        let h = |d: Duration| humantime_serde::re::humantime::format_duration(d).to_string();
        let dur = |key: &str, d: Duration, min: Duration, max: Duration| {
            if d < min || d > max {
                return Err(ConfigError::Value {
                    key: key.to_owned(),
                    message: format!("must be between {} and {}, not {}", h(min), h(max), h(d)),
                });
            }
            Ok(())
        };
        // Zero, or within the range.
        let off_or = |key: &str, d: Duration, min: Duration, max: Duration| {
            if d.is_zero() {
                return Ok(());
            }
            dur(key, d, min, max).map_err(|_| ConfigError::Value {
                key: key.to_owned(),
                message: format!(
                    "must be 0s (off) or between {} and {}, not {}",
                    h(min),
                    h(max),
                    h(d)
                ),
            })
        };
        let count = |key: &str, n: u64, min: u64, max: u64| {
            if n < min || n > max {
                return Err(ConfigError::Value {
                    key: key.to_owned(),
                    message: format!("must be between {min} and {max}, not {n}"),
                });
            }
            Ok(())
        };
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);

        dur("shutdown_timeout", self.shutdown_timeout, 100 * MS, HOUR)?;
        count(
            "database.max_connections",
            u64::from(self.database.max_connections),
            1,
            1000,
        )?;
        let p = &self.pools.events;
        if let Some(v) = p.min_workers {
            count("pools.events.min_workers", n(v), 0, 10_000)?;
        }
        if let Some(v) = p.max_workers {
            count("pools.events.max_workers", n(v), 1, 10_000)?;
            if p.min_workers.is_some_and(|m| m > v) {
                return Err(ConfigError::Value {
                    key: "pools.events.min_workers".into(),
                    message: format!("must be at most max_workers ({v})"),
                });
            }
        }
        if let Some(v) = p.queue_size {
            count("pools.events.queue_size", n(v), 1, 1_000_000)?;
        }
        if let Some(d) = p.idle_timeout {
            dur("pools.events.idle_timeout", d, MS, DAY)?;
        }

        let j = &self.jobs;
        dur("jobs.lease", j.lease, 100 * MS, DAY)?;
        dur("jobs.poll_interval", j.poll_interval, 10 * MS, HOUR)?;
        off_or("jobs.watch_interval", j.watch_interval, MS, j.poll_interval)?;
        dur("jobs.rescue_every", j.rescue_every, 10 * MS, HOUR)?;
        dur(
            "jobs.completed_retention",
            j.completed_retention,
            Duration::ZERO,
            YEARS,
        )?;
        dur(
            "jobs.failed_retention",
            j.failed_retention,
            Duration::ZERO,
            YEARS,
        )?;
        for (name, q) in &j.queues {
            if name.is_empty() || name.len() > 100 {
                return Err(ConfigError::Value {
                    key: "jobs.queues".into(),
                    message: "names must be 1 to 100 characters".into(),
                });
            }
            let key = |k: &str| format!("jobs.queues.{name}.{k}");
            count(&key("concurrency"), n(q.concurrency), 0, 10_000)?;
            if let Some(m) = q.min_workers {
                count(&key("min_workers"), n(m), 0, n(q.concurrency.max(1)))?;
            }
            if let Some(pf) = q.prefetch {
                count(&key("prefetch"), n(pf), 0, 100_000)?;
            }
        }

        let a = &self.api;
        count(
            "api.rate_limit_per_second",
            u64::from(a.rate_limit_per_second),
            0,
            1_000_000,
        )?;
        count(
            "api.rate_limit_burst",
            u64::from(a.rate_limit_burst),
            0,
            1_000_000,
        )?;
        dur("api.request_timeout", a.request_timeout, 10 * MS, HOUR)?;
        count(
            "api.failed_auth_per_minute",
            u64::from(a.failed_auth_per_minute),
            1,
            1_000_000,
        )?;
        count(
            "api.failed_auth_burst",
            u64::from(a.failed_auth_burst),
            1,
            1_000_000,
        )?;

        let l = &self.live;
        off_or("live.sweep_every", l.sweep_every, SEC, DAY)?;
        dur("live.outbox_retention", l.outbox_retention, MIN, YEARS)?;
        dur("live.poll_interval", l.poll_interval, 10 * MS, MIN)?;
        dur("live.ws_ping_interval", l.ws_ping_interval, SEC, HOUR)?;
        count("live.ws_buffer", n(l.ws_buffer), 1, 1_000_000)?;
        dur("live.ws_ticket_ttl", l.ws_ticket_ttl, SEC, DAY)?;
        count(
            "live.delivery_attempts",
            l.delivery_attempts.try_into().unwrap_or(0),
            1,
            1000,
        )?;
        dur("live.delivery_backoff", l.delivery_backoff, 10 * MS, HOUR)?;
        count("live.ws_max_per_token", n(l.ws_max_per_token), 1, 1_000_000)?;
        count(
            "live.ws_max_connections",
            n(l.ws_max_connections),
            1,
            10_000_000,
        )?;

        let no = &self.notify;
        count(
            "notify.max_attempts",
            no.max_attempts.try_into().unwrap_or(0),
            1,
            1000,
        )?;
        dur(
            "notify.webhook_timeout",
            no.webhook_timeout,
            100 * MS,
            10 * MIN,
        )?;
        count("notify.smtp.port", u64::from(no.smtp.port), 1, 65_535)?;
        count(
            "notify.smtp.pool_size",
            u64::from(no.smtp.pool_size),
            1,
            1000,
        )?;
        dur("notify.smtp.timeout", no.smtp.timeout, 100 * MS, 10 * MIN)?;
        let rate = no.breaker.failure_rate;
        if !(rate > 0.0 && rate <= 1.0) {
            return Err(ConfigError::Value {
                key: "notify.breaker.failure_rate".into(),
                message: format!("must be above 0 and at most 1, not {rate}"),
            });
        }
        count(
            "notify.breaker.minimum_calls",
            u64::from(no.breaker.minimum_calls),
            1,
            100_000,
        )?;
        dur(
            "notify.breaker.open_for",
            no.breaker.open_for,
            100 * MS,
            DAY,
        )?;

        let r = &self.reports;
        dur("reports.retention", r.retention, MIN, YEARS)?;
        dur("reports.prune_every", r.prune_every, SEC, DAY)?;
        count(
            "reports.max_active_per_token",
            u64::from(r.max_active_per_token),
            1,
            10_000,
        )?;

        let q = &self.sqs;
        dur("sqs.wait", q.wait, Duration::ZERO, 20 * SEC)?;
        count(
            "sqs.park_after",
            q.park_after.try_into().unwrap_or(0),
            1,
            1000,
        )?;
        dur("sqs.inbox_retention", q.inbox_retention, HOUR, YEARS)?;
        for (i, inbound) in q.inbound.iter().enumerate() {
            let key = |k: &str| format!("sqs.inbound[{i}].{k}");
            if inbound.url.is_empty() {
                return Err(ConfigError::Value {
                    key: key("url"),
                    message: "must be the queue's URL (it is empty)".into(),
                });
            }
            count(&key("concurrency"), n(inbound.concurrency), 1, 10_000)?;
            count(&key("pollers"), n(inbound.pollers), 1, 100)?;
            dur(&key("visibility"), inbound.visibility, SEC, 12 * HOUR)?;
        }

        let sv = &self.supervision;
        dur("supervision.min_backoff", sv.min_backoff, MS, MIN)?;
        dur(
            "supervision.max_backoff",
            sv.max_backoff,
            sv.min_backoff,
            HOUR,
        )?;
        Ok(())
    }

    /// The database URL, defaulting to the SQLite file in `data_dir`.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("malaka.db").display())
        } else {
            self.database.url.clone()
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return its own (large) error
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "custom.toml",
                r#"
                listen = "127.0.0.1:9000"
                shutdown_timeout = "7s"
                [database]
                url = "sqlite://file.db"
                [log]
                format = "json"
                [pools.events]
                max_workers = 3
                "#,
            )?;
            jail.set_env("MALAKA_LISTEN", "127.0.0.1:9001");
            jail.set_env("MALAKA_POOLS__EVENTS__QUEUE_SIZE", "77");
            jail.set_env("MALAKA_TEST_DATABASE_URL", "ignored");
            let overrides = Overrides {
                database: Some(DatabaseOverrides {
                    url: Some("postgres://x/y".into()),
                }),
                ..Overrides::default()
            };
            let c = Config::load(Some(Path::new("custom.toml")), &overrides)
                .map_err(|e| e.to_string())?;
            assert_eq!(c.listen, "127.0.0.1:9001".parse().unwrap()); // env beats file
            assert_eq!(c.shutdown_timeout, Duration::from_secs(7)); // file beats default
            assert_eq!(c.database.url, "postgres://x/y"); // flag beats file
            assert_eq!(c.log.format, LogFormat::Json);
            assert_eq!(c.pools.events.max_workers, Some(3));
            assert_eq!(c.pools.events.queue_size, Some(77));
            Ok(())
        });
    }

    #[test]
    fn defaults_need_nothing() {
        figment::Jail::expect_with(|_jail| {
            let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c, Config::default());
            assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(c.database_url(), "sqlite://malaka-data/malaka.db");
            Ok(())
        });
    }

    #[test]
    fn malaka_toml_in_the_working_folder_is_read() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("malaka.toml", "data_dir = \"elsewhere\"")?;
            let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.data_dir, PathBuf::from("elsewhere"));
            Ok(())
        });
    }

    #[test]
    fn jobs_section_has_defaults_and_layers() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.jobs.lease, Duration::from_secs(30));
            assert_eq!(c.jobs.poll_interval, Duration::from_secs(2));
            assert_eq!(c.jobs.watch_interval, Duration::from_millis(5));
            assert_eq!(c.jobs.completed_retention, Duration::ZERO);
            assert_eq!(c.jobs.failed_retention, Duration::from_secs(7 * 24 * 3600));
            assert_eq!(c.jobs.rescue_every, Duration::from_secs(5));
            assert_eq!(c.jobs.queues.len(), 3);
            assert_eq!(c.jobs.queues["reports"].concurrency, 2);
            assert_eq!(c.jobs.queues["default"].concurrency, 10);
            assert_eq!(c.jobs.queues["notifications"].concurrency, 32);

            jail.create_file(
                "malaka.toml",
                r#"
                [jobs]
                lease = "2s"
                rescue_every = "250ms"
                watch_interval = "0s"
                completed_retention = "1h"
                [jobs.queues.mail]
                concurrency = 4
                prefetch = 2
                [jobs.queues.default]
                concurrency = 0
                "#,
            )?;
            jail.set_env("MALAKA_JOBS__POLL_INTERVAL", "500ms");
            jail.set_env("MALAKA_JOBS__QUEUES__MAIL__MIN_WORKERS", "2");
            let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.jobs.lease, Duration::from_secs(2));
            assert_eq!(c.jobs.rescue_every, Duration::from_millis(250));
            assert_eq!(c.jobs.watch_interval, Duration::ZERO);
            assert_eq!(c.jobs.completed_retention, Duration::from_secs(3600));
            assert_eq!(c.jobs.poll_interval, Duration::from_millis(500));
            assert_eq!(
                c.jobs.queues["mail"],
                JobQueueSettings {
                    concurrency: 4,
                    min_workers: Some(2),
                    prefetch: Some(2),
                }
            );
            assert_eq!(c.jobs.queues["default"].concurrency, 0);

            // The section prints and reads back.
            let text = toml::to_string_pretty(&c).map_err(|e| e.to_string())?;
            assert!(text.contains("[jobs.queues.mail]"), "{text}");
            let back: Config = toml::from_str(&text).map_err(|e| e.to_string())?;
            assert_eq!(back, c);

            // Typos and values that cannot work are named.
            jail.create_file("malaka.toml", "[jobs.queues.mail]\nconcurency = 3\n")?;
            let e = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("concurency"), "{e}");
            jail.create_file("malaka.toml", "[jobs]\nlease = \"0s\"\n")?;
            let e = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("jobs.lease"), "{e}");
            jail.create_file("malaka.toml", "[jobs]\nrescue_every = \"often\"\n")?;
            let e = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("rescue_every"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn api_section_has_defaults_and_layers() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.api.rate_limit_per_second, 50);
            assert_eq!(c.api.rate_limit_burst, 100);
            jail.create_file("malaka.toml", "[api]\nrate_limit_burst = 7\n")?;
            jail.set_env("MALAKA_API__RATE_LIMIT_PER_SECOND", "0");
            // Read by `serve` itself, not a configuration key.
            jail.set_env(
                "MALAKA_BOOTSTRAP_TOKEN",
                "mlk_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            );
            let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.api.rate_limit_per_second, 0);
            assert_eq!(c.api.rate_limit_burst, 7);
            jail.set_env("MALAKA_API__RATE_LIMIT", "3");
            let e = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("rate_limit"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn zero_and_absurd_values_are_refused_with_the_key_and_its_range() {
        figment::Jail::expect_with(|jail| {
            for (toml, key) in [
                ("[live]\nws_ping_interval = \"0s\"", "live.ws_ping_interval"),
                ("[live]\npoll_interval = \"0s\"", "live.poll_interval"),
                ("[live]\nws_buffer = 0", "live.ws_buffer"),
                ("[live]\nsweep_every = \"1ms\"", "live.sweep_every"),
                ("[jobs]\npoll_interval = \"0s\"", "jobs.poll_interval"),
                ("[jobs]\nwatch_interval = \"10s\"", "jobs.watch_interval"),
                ("[jobs]\nlease = \"400days\"", "jobs.lease"),
                (
                    "[jobs.queues.mail]\nconcurrency = 1000000",
                    "jobs.queues.mail.concurrency",
                ),
                (
                    "[database]\nmax_connections = 0",
                    "database.max_connections",
                ),
                (
                    "[pools.events]\nmax_workers = 0",
                    "pools.events.max_workers",
                ),
                (
                    "[pools.events]\nmin_workers = 9\nmax_workers = 3",
                    "pools.events.min_workers",
                ),
                ("[notify]\nmax_attempts = 0", "notify.max_attempts"),
                ("[notify.smtp]\nport = 0", "notify.smtp.port"),
                (
                    "[notify.breaker]\nfailure_rate = 1.5",
                    "notify.breaker.failure_rate",
                ),
                ("[reports]\nprune_every = \"0s\"", "reports.prune_every"),
                ("[sqs]\nwait = \"1m\"", "sqs.wait"),
                (
                    "[[sqs.inbound]]\nurl = \"http://q\"\nvisibility = \"0s\"",
                    "sqs.inbound[0].visibility",
                ),
                ("[[sqs.inbound]]\nurl = \"\"", "sqs.inbound[0].url"),
                (
                    "[supervision]\nmin_backoff = \"0s\"",
                    "supervision.min_backoff",
                ),
                (
                    "[supervision]\nmin_backoff = \"5s\"\nmax_backoff = \"1s\"",
                    "supervision.max_backoff",
                ),
                ("shutdown_timeout = \"0s\"", "shutdown_timeout"),
            ] {
                jail.create_file("malaka.toml", toml)?;
                let e = Config::load(None, &Overrides::default())
                    .expect_err(toml)
                    .to_string();
                assert!(e.contains(&format!("`{key}`")), "{toml}: {e}");
                assert!(e.contains("must be"), "{toml}: {e}");
            }
            // Zero where zero means something is accepted.
            jail.create_file(
                "malaka.toml",
                "[live]\nsweep_every = \"0s\"\n[jobs]\ncompleted_retention = \"0s\"\n[api]\nrate_limit_per_second = 0",
            )?;
            assert!(Config::load(None, &Overrides::default()).is_ok());
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("malaka.toml", "lisen = \"127.0.0.1:1\"")?;
            let e = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("lisen"), "{e}");
            jail.create_file("malaka.toml", "shutdown_timeout = \"soon\"")?;
            let e = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("shutdown_timeout"), "{e}");
            let e = Config::load(Some(Path::new("nope.toml")), &Overrides::default()).unwrap_err();
            assert!(matches!(e, ConfigError::MissingFile(_)));
            Ok(())
        });
    }

    #[test]
    fn trusted_proxies_are_cidrs_and_secrets_print_as_stars() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "malaka.toml",
                "[api]\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n",
            )?;
            jail.set_env("MALAKA_NOTIFY__SMTP__PASSWORD", "hunter2");
            let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.api.trusted_proxies.len(), 2);
            assert_eq!(c.notify.smtp.password.expose(), "hunter2");
            let text = toml::to_string_pretty(&c).map_err(|e| e.to_string())?;
            assert!(!text.contains("hunter2") && text.contains("password = \"***\""));
            assert!(!format!("{c:?}").contains("hunter2"));
            jail.create_file(
                "malaka.toml",
                "[api]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
            )?;
            let e = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("trusted_proxies"), "{e}");
            Ok(())
        });
    }
}
