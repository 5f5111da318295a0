//! `malaka bench notify`: delivery rates through the real path: N delivery jobs on the
//! `notifications` queue, worked by the server's own workers with the default settings (queue
//! concurrency, SMTP connection pool), until the last message is accepted.
//!
//! Email goes to `--smtp HOST:PORT` (a real server such as aiosmtpd, see
//! `scripts/bench-notify`) or, without it, to a minimal SMTP sink in this process that accepts
//! everything (so the figure is Malaka's sending side). Webhooks go to a receiver in this process
//! that checks nothing and answers 204.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::Figures;
use crate::jobs::Backend;
use crate::movements::{MovementsBenchError, fresh_database};
use malaka_notify::{Delivery, KIND, NewRule, QUEUE, RuleInput};
use malaka_server::{Application, Config};

/// What to run.
#[derive(Debug, Clone)]
pub struct NotifyBench {
    /// Backend of the job queue.
    pub backend: Backend,
    /// Database URL (a fresh database is made next to it).
    pub database_url: Option<String>,
    /// Messages per channel.
    pub messages: usize,
    /// An SMTP server to send to (`host:port`); `None`: a sink in this process.
    pub smtp: Option<String>,
}

fn err(what: &str) -> impl Fn(String) -> MovementsBenchError + '_ {
    move |e| MovementsBenchError::Setup(format!("{what}: {e}"))
}

/// A minimal SMTP server that accepts every message and counts it.
async fn smtp_sink(count: Arc<AtomicUsize>) -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                if w.write_all(b"220 sink ESMTP\r\n").await.is_err() {
                    return;
                }
                let mut data = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply: &[u8] = if data {
                        if line != "." {
                            continue;
                        }
                        data = false;
                        count.fetch_add(1, Ordering::AcqRel);
                        b"250 accepted\r\n"
                    } else {
                        match line.get(..4).map(str::to_ascii_uppercase).as_deref() {
                            Some("EHLO") => b"250-sink\r\n250 8BITMIME\r\n",
                            Some("DATA") => {
                                data = true;
                                b"354 go on\r\n"
                            }
                            Some("QUIT") => {
                                let _ = w.write_all(b"221 bye\r\n").await;
                                return;
                            }
                            _ => b"250 ok\r\n",
                        }
                    };
                    if w.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// A webhook receiver that answers 204 and counts.
async fn receiver(count: Arc<AtomicUsize>) -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let count = Arc::clone(&count);
            async move {
                count.fetch_add(1, Ordering::AcqRel);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "benchmark webhook receiver stopped");
        }
    });
    Ok(port)
}

/// Runs the suite: `emails_per_sec`, `webhooks_per_sec`, `messages`, `smtp_pool`,
/// `concurrency`.
///
/// # Errors
/// Setup failed, or the messages did not all arrive within a minute.
pub async fn notify_suite(b: &NotifyBench) -> Result<Figures, MovementsBenchError> {
    let fresh = fresh_database(b.backend, b.database_url.as_deref()).await?;
    let result = run(b, fresh.config.clone()).await;
    fresh.remove().await;
    result
}

async fn run(b: &NotifyBench, mut config: Config) -> Result<Figures, MovementsBenchError> {
    let sink_count = Arc::new(AtomicUsize::new(0));
    let (host, port, counted_here) = match &b.smtp {
        Some(addr) => {
            let (h, p) = addr.rsplit_once(':').ok_or_else(|| {
                MovementsBenchError::Setup(format!("--smtp {addr}: want host:port"))
            })?;
            let p: u16 = p
                .parse()
                .map_err(|_| MovementsBenchError::Setup(format!("--smtp {addr}: bad port")))?;
            (h.to_owned(), p, false)
        }
        None => {
            let p = smtp_sink(Arc::clone(&sink_count))
                .await
                .map_err(|e| err("SMTP sink")(e.to_string()))?;
            ("127.0.0.1".to_owned(), p, true)
        }
    };
    config.notify.smtp.host = host;
    config.notify.smtp.port = port;
    // The webhook receiver listens on 127.0.0.1.
    config.notify.allow_private_targets = true;
    let hooks = Arc::new(AtomicUsize::new(0));
    let hook_port = receiver(Arc::clone(&hooks))
        .await
        .map_err(|e| err("webhook receiver")(e.to_string()))?;
    let mut f = Figures::default();
    f.push("messages", b.messages as f64);
    f.push("smtp_pool", f64::from(config.notify.smtp.pool_size));
    f.push(
        "concurrency",
        config
            .jobs
            .queues
            .get(QUEUE)
            .map_or(0.0, |q| q.concurrency as f64),
    );

    let app = Application::build(&config).await?;
    let state = app.state().clone();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _stopped = rx.await;
    }));
    let rules = state.notifier().rules();
    let email = NewRule::parse(RuleInput {
        channel: Some("email".into()),
        address: Some("bench@example.com".into()),
        ..RuleInput::default()
    })
    .map_err(|e| err("rule")(e.to_string()))?;
    let email = rules
        .create(&email, "bench")
        .await
        .map_err(|e| err("rule")(e.to_string()))?;
    let hook = NewRule::parse(RuleInput {
        channel: Some("webhook".into()),
        url: Some(format!("http://127.0.0.1:{hook_port}/hook")),
        secret: Some("bench-secret-0123456789".into()),
        ..RuleInput::default()
    })
    .map_err(|e| err("rule")(e.to_string()))?;
    let hook = rules
        .create(&hook, "bench")
        .await
        .map_err(|e| err("rule")(e.to_string()))?;

    let mut outcome = Ok(());
    for (rule, name, counter) in [
        (email.id, "emails_per_sec", None),
        (hook.id, "webhooks_per_sec", Some(Arc::clone(&hooks))),
    ] {
        let jobs: Vec<_> = (0..b.messages)
            .map(|i| {
                let d = Delivery {
                    rule,
                    event: "stock_alert".into(),
                    data: serde_json::json!({"action": "raised", "from": null, "cause": null,
                        "alert": {"id": i, "sku": format!("BENCH-{i}"), "warehouse": "MAIN",
                                  "level": "LOW", "qty": "3", "min_qty": "10", "raised_at": chrono::Utc::now()}}),
                };
                malaka_jobs::NewJob::new(KIND, serde_json::to_value(&d).unwrap_or_default())
                    .queue(QUEUE)
            })
            .collect();
        let done_before = state.notifier().sent(if counter.is_some() {
            "webhook"
        } else {
            "email"
        });
        let t0 = Instant::now();
        if let Err(e) = state.jobs().enqueue_many(jobs).await {
            outcome = Err(err("enqueue")(e.to_string()));
            break;
        }
        let deadline = t0 + Duration::from_secs(60);
        loop {
            let n = match (&counter, counted_here) {
                (Some(c), _) => c.load(Ordering::Acquire),
                (None, true) => sink_count.load(Ordering::Acquire),
                (None, false) => state.notifier().sent("email") - done_before,
            };
            if n >= b.messages {
                break;
            }
            if Instant::now() > deadline {
                outcome = Err(MovementsBenchError::Setup(format!(
                    "{name}: {n} of {} arrived within 60 s",
                    b.messages
                )));
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if outcome.is_err() {
            break;
        }
        f.push(name, b.messages as f64 / t0.elapsed().as_secs_f64());
    }
    let _stopped = stop.send(());
    if let Ok(Err(e)) = task.await {
        tracing::warn!(error = %e, "benchmark server stopped with an error");
    }
    outcome.map(|()| f)
}
