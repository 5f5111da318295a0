//! Sending one notification: rendering the templates and handing the message to the SMTP server
//! (lettre's pooled async transport) or POSTing the signed event to the webhook.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use minijinja::Environment;
use serde_json::{Value, json};

use super::{Delivery, NotifyError, Rule, rules::Channel};
use crate::config::{NotifyConfig, SmtpTls};
use malaka_db::Secret;

/// Why one send failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Email is not set up (`[notify.smtp] host`).
    #[error("email is not configured: set [notify.smtp] host")]
    NoSmtp,
    /// The SMTP server could not be reached or failed.
    #[error("SMTP: {0}")]
    Smtp(String),
    /// The SMTP server refused the message for good (a bad recipient).
    #[error("SMTP refused the message: {0}")]
    SmtpRefused(String),
    /// The webhook could not be reached, timed out, or answered 5xx, 408 or 429.
    #[error("webhook: {0}")]
    Webhook(String),
    /// The webhook answered another 4xx (or a redirect, which is not followed): it will not
    /// take this event.
    #[error("webhook refused the event: {0}")]
    WebhookRefused(String),
    /// The webhook's address is not public (`notify.allow_private_targets` is off).
    #[error("webhook target refused: {0}")]
    PrivateTarget(String),
    /// The message could not be built (a template or an address).
    #[error("message: {0}")]
    Message(String),
}

impl SendError {
    /// The target is down or failing: counts against its circuit breaker.
    pub fn is_target_down(&self) -> bool {
        matches!(self, Self::Smtp(_) | Self::Webhook(_))
    }
    /// No later attempt will do better.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::NoSmtp
                | Self::SmtpRefused(_)
                | Self::WebhookRefused(_)
                | Self::PrivateTarget(_)
                | Self::Message(_)
        )
    }
}

/// A webhook signature header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature(pub String);

/// Signs `body` at `timestamp` with `secret`, as the `X-Malaka-Signature` header carries it.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> Signature {
    let mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).map(|mut m| {
        m.update(timestamp.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        m.finalize().into_bytes()
    });
    let hex = mac.map(hex::encode).unwrap_or_default();
    Signature(format!("t={timestamp},v1={hex}"))
}

const TEMPLATES: [(&str, &str); 6] = [
    (
        "alert_subject.txt",
        include_str!("../templates/alert_subject.txt"),
    ),
    ("alert.txt", include_str!("../templates/alert.txt")),
    ("alert.html", include_str!("../templates/alert.html")),
    (
        "report_subject.txt",
        include_str!("../templates/report_subject.txt"),
    ),
    ("report.txt", include_str!("../templates/report.txt")),
    ("report.html", include_str!("../templates/report.html")),
];

pub(super) struct Sender {
    smtp: Option<(AsyncSmtpTransport<Tokio1Executor>, String)>,
    from: Option<Mailbox>,
    http: reqwest::Client,
    templates: Environment<'static>,
    dashboard: String,
    allow_private: bool,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("smtp", &self.smtp.as_ref().map(|s| &s.1))
            .finish_non_exhaustive()
    }
}

fn level_name(l: &str) -> String {
    l.replace('_', " ")
}

/// A made-up alert for test messages.
pub(super) fn sample_alert() -> Value {
    json!({
        "action": "raised", "from": null, "cause": null,
        "alert": {"id": 0, "sku": "TEST-SKU", "warehouse": "TEST", "level": "CRITICAL",
                  "qty": "2", "min_qty": "10", "raised_at": chrono::Utc::now(),
                  "cleared_at": null},
    })
}

impl Sender {
    pub(super) fn new(config: &NotifyConfig) -> Result<Self, NotifyError> {
        let mut templates = Environment::new();
        for (name, source) in TEMPLATES {
            templates
                .add_template(name, source)
                .map_err(|e| NotifyError::Smtp(format!("template {name}: {e}")))?;
        }
        let s = &config.smtp;
        let smtp = if s.host.is_empty() {
            None
        } else {
            let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
                .port(s.port)
                .timeout(Some(s.timeout))
                .pool_config(PoolConfig::new().max_size(s.pool_size.max(1)));
            let params =
                || TlsParameters::new(s.host.clone()).map_err(|e| NotifyError::Smtp(e.to_string()));
            b = match s.tls {
                SmtpTls::None => b.tls(Tls::None),
                SmtpTls::Starttls => b.tls(Tls::Required(params()?)),
                SmtpTls::Tls => b.tls(Tls::Wrapper(params()?)),
            };
            if !s.username.is_empty() {
                b = b.credentials(Credentials::new(
                    s.username.clone(),
                    s.password.expose().to_owned(),
                ));
            }
            Some((b.build(), format!("smtp:{}:{}", s.host, s.port)))
        };
        let from = if smtp.is_some() {
            Some(
                s.from
                    .parse::<Mailbox>()
                    .map_err(|e| NotifyError::Smtp(format!("from {:?}: {e}", s.from)))?,
            )
        } else {
            None
        };
        let http = reqwest::Client::builder()
            // Addresses are checked where they are connected to; redirects are not followed
            // (one could lead anywhere).
            .dns_resolver(std::sync::Arc::new(super::guard::GuardedResolver {
                allow_private: config.allow_private_targets,
            }))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.webhook_timeout)
            .connect_timeout(Duration::from_secs(5).min(config.webhook_timeout))
            .user_agent(concat!("malaka/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::Smtp(format!("HTTP client: {e}")))?;
        Ok(Self {
            smtp,
            from,
            http,
            templates,
            dashboard: config.dashboard_url.trim_end_matches('/').to_owned(),
            allow_private: config.allow_private_targets,
        })
    }

    /// The breaker key of a rule's target: its SMTP server, or its webhook's host and port.
    pub(super) fn target(&self, rule: &Rule) -> String {
        match rule.channel {
            Channel::Email => self
                .smtp
                .as_ref()
                .map_or_else(|| "smtp:none".to_owned(), |s| s.1.clone()),
            Channel::Webhook => reqwest::Url::parse(&rule.target).map_or_else(
                |_| "webhook:invalid".to_owned(),
                |u| {
                    format!(
                        "webhook:{}:{}",
                        u.host_str().unwrap_or_default(),
                        u.port_or_known_default().unwrap_or_default()
                    )
                },
            ),
        }
    }

    fn render(&self, name: &str, ctx: &Value) -> Result<String, SendError> {
        self.templates
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| SendError::Message(format!("template {name}: {e}")))
    }

    /// The template context of a delivery.
    fn context(&self, rule: &Rule, d: &Delivery) -> (&'static str, Value) {
        let test = d.event == "test";
        if d.event == "report_ready" {
            let ctx = json!({
                "test": test, "rule": rule.name, "kind": d.data["kind"], "rows": d.data["rows"],
                "link": format!("{}{}", self.dashboard, d.data["download"].as_str().unwrap_or("/")),
            });
            return ("report", ctx);
        }
        let a = &d.data["alert"];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let level = s(&a["level"]);
        let colour = match level.as_str() {
            "OUT_OF_STOCK" => "#b42318",
            "CRITICAL" => "#d9480f",
            _ => "#b7791f",
        };
        let ctx = json!({
            "test": test, "rule": rule.name, "action": d.data["action"],
            "sku": a["sku"], "warehouse": a["warehouse"], "level": level,
            "level_name": level_name(&level), "from": d.data["from"],
            "from_name": level_name(d.data["from"].as_str().unwrap_or_default()),
            "qty": a["qty"], "min_qty": a["min_qty"], "raised_at": a["raised_at"], "colour": colour,
            "link": format!("{}/?sku={}", self.dashboard, s(&a["sku"])),
        });
        ("alert", ctx)
    }

    /// Sends delivery `d` (job `job`) through `rule`.
    pub(super) async fn send(&self, rule: &Rule, d: &Delivery, job: i64) -> Result<(), SendError> {
        match rule.channel {
            Channel::Email => self.email(rule, d).await,
            Channel::Webhook => self.webhook(rule, d, job).await,
        }
    }

    async fn email(&self, rule: &Rule, d: &Delivery) -> Result<(), SendError> {
        let (Some((transport, _)), Some(from)) = (&self.smtp, &self.from) else {
            return Err(SendError::NoSmtp);
        };
        let (name, ctx) = self.context(rule, d);
        let subject = self.render(&format!("{name}_subject.txt"), &ctx)?;
        let text = self.render(&format!("{name}.txt"), &ctx)?;
        let html = self.render(&format!("{name}.html"), &ctx)?;
        let to: Mailbox = rule
            .target
            .parse()
            .map_err(|e| SendError::Message(format!("recipient {:?}: {e}", rule.target)))?;
        let message = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(subject.trim())
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| SendError::Message(e.to_string()))?;
        match transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::SmtpRefused(e.to_string())),
            Err(e) => Err(SendError::Smtp(e.to_string())),
        }
    }

    async fn webhook(&self, rule: &Rule, d: &Delivery, job: i64) -> Result<(), SendError> {
        // Errors name the target by scheme://host only: its path may be the secret.
        let origin = malaka_db::secret::origin(&rule.target);
        let url = reqwest::Url::parse(&rule.target)
            .map_err(|_| SendError::Message(format!("{origin} is not a valid URL")))?;
        if !self.allow_private
            && let Some(ip) = super::guard::private_literal(&url)
        {
            return Err(SendError::PrivateTarget(format!(
                "{origin} is {ip}, which is not a public address; set notify.allow_private_targets = true to allow it"
            )));
        }
        let body = serde_json::to_vec(&json!({
            "type": d.event, "delivery": job, "sent_at": chrono::Utc::now(), "data": d.data,
        }))
        .map_err(|e| SendError::Message(e.to_string()))?;
        let now = chrono::Utc::now().timestamp();
        let secret = rule.secret.as_ref().map(Secret::expose).unwrap_or_default();
        let Signature(sig) = sign(secret, now, &body);
        let r = self
            .http
            .post(url)
            .header("Content-Type", "application/json")
            .header("X-Malaka-Event", d.event.as_str())
            .header("X-Malaka-Delivery", job.to_string())
            .header("X-Malaka-Timestamp", now.to_string())
            .header("X-Malaka-Signature", sig)
            .body(body)
            .send()
            .await
            .map_err(|e| request_error(&origin, e))?;
        let status = r.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(SendError::Webhook(format!("{origin} answered {status}")))
        } else if status.is_redirection() {
            Err(SendError::WebhookRefused(format!(
                "{origin} answered {status}; redirects are not followed"
            )))
        } else {
            Err(SendError::WebhookRefused(format!(
                "{origin} answered {status}"
            )))
        }
    }
}

/// A failed webhook request, described without its URL (reqwest's message names the whole
/// URL): the kind of failure and its causes, with the target as `origin`.
fn request_error(origin: &str, e: reqwest::Error) -> SendError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        if let Some(p) = cause.downcast_ref::<super::guard::PrivateTarget>() {
            return SendError::PrivateTarget(format!("{origin}: {p}"));
        }
        let text = cause.to_string();
        if !causes.contains(&text) {
            causes.push(text);
        }
        source = cause.source();
    }
    let detail = if causes.is_empty() {
        String::new()
    } else {
        format!(": {}", causes.join(": "))
    };
    SendError::Webhook(format!("{origin}: {kind}{detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_the_hmac_of_the_timestamp_and_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 0123456789abcdef
        let Signature(s) = sign("0123456789abcdef", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            s,
            "t=1700000000,v1=9eb18f493f8ec135d9eb2dad817c369bb4e9cbfa818657897a7437c1cd8c3a23"
        );
        assert_ne!(sign("another secret!!", 1_700_000_000, br#"{"a":1}"#).0, s);
        assert_ne!(sign("0123456789abcdef", 1_700_000_001, br#"{"a":1}"#).0, s);
    }
}
