//! How notifications are sent: the `[notify]` section of the server's configuration (SMTP,
//! webhook timeout, circuit breakers), validated where the server loads it.

use std::time::Duration;

use malaka_db::Secret;
use serde::{Deserialize, Serialize};

/// How notifications are sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// The dashboard's address, for links in messages (default: `http://<listen>`).
    pub dashboard_url: String,
    /// Attempts per delivery before it is discarded (snoozes while a breaker is open do not
    /// count).
    pub max_attempts: i32,
    /// Longest a webhook may take to answer.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// The SMTP server.
    pub smtp: SmtpConfig,
    /// The circuit breaker of each target (an SMTP server, a webhook host).
    pub breaker: BreakerConfig,
    /// Let webhooks reach loopback, private, link-local and unique-local addresses (off: such
    /// targets are refused when a rule is made and at connect time, whatever DNS answers).
    pub allow_private_targets: bool,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            dashboard_url: String::new(),
            max_attempts: 10,
            webhook_timeout: Duration::from_secs(10),
            smtp: SmtpConfig::default(),
            breaker: BreakerConfig::default(),
            allow_private_targets: false,
        }
    }
}

/// The SMTP server mail goes through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// Host name; empty: email is off (email deliveries fail, with that reason).
    pub host: String,
    /// Port (25; 587 for STARTTLS submission; 465 for implicit TLS).
    pub port: u16,
    /// `none`, `starttls` or `tls`.
    pub tls: SmtpTls,
    /// User name (empty: no authentication).
    pub username: String,
    /// Password (printed as `***`).
    pub password: Secret,
    /// The sender, `Name <address>` or an address.
    pub from: String,
    /// Connections kept open to the server.
    pub pool_size: u32,
    /// Longest one SMTP command may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 25,
            tls: SmtpTls::None,
            username: String::new(),
            password: Secret::default(),
            from: "Malaka <malaka@localhost>".to_owned(),
            pool_size: 16,
            timeout: Duration::from_secs(10),
        }
    }
}

/// SMTP transport security.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text (a relay on the same host or network).
    None,
    /// Plain connection upgraded with STARTTLS (required).
    Starttls,
    /// TLS from the first byte.
    Tls,
}

/// When a target's breaker opens and how long it stays open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Failure rate (0 to 1) over the recent window at which it opens.
    pub failure_rate: f64,
    /// Calls in the window before the rate counts.
    pub minimum_calls: u32,
    /// How long it stays open before a probe is let through.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate: 0.5,
            minimum_calls: 5,
            open_for: Duration::from_secs(30),
        }
    }
}
