//! `malaka bench alerts`: how long after a posting's HTTP response its stock alert reaches a
//! connected WebSocket client. Movements are posted one after another, each crossing a level
//! (an issue takes the article LOW, a receipt brings it back: raised, cleared, ...). On
//! PostgreSQL the movements go to one node and the client listens on a second node of the same
//! database.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::bench::Figures;
use crate::bench_jobs::Backend;
use crate::bench_movements::{MovementsBenchError, drop_database, fresh_database};
use crate::{Application, Config};

/// What to run.
#[derive(Debug, Clone)]
pub struct AlertsBench {
    /// Backend.
    pub backend: Backend,
    /// Database URL (a fresh database is made next to it).
    pub database_url: Option<String>,
    /// Timed postings (after 20 warm-ups).
    pub samples: usize,
}

struct Node {
    addr: std::net::SocketAddr,
    state: crate::AppState,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), crate::ServerError>>,
}

async fn start(config: &Config) -> Result<Node, MovementsBenchError> {
    let app = Application::build(config).await?;
    let addr = app
        .local_addr()
        .map_err(|e| MovementsBenchError::Setup(format!("address: {e}")))?;
    let state = app.state().clone();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _stopped = rx.await;
    }));
    Ok(Node {
        addr,
        state,
        stop,
        task,
    })
}

impl Node {
    async fn stop(self) {
        let _gone = self.stop.send(());
        if let Ok(Err(e)) = self.task.await {
            tracing::warn!(error = %e, "benchmark server stopped with an error");
        }
    }
}

fn setup_err(what: &str) -> impl Fn(String) -> MovementsBenchError + '_ {
    move |e| MovementsBenchError::Setup(format!("{what}: {e}"))
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs the suite: `alert_latency_p50_ms`, `alert_latency_p99_ms`, `alert_latency_avg_ms`,
/// `alert_latency_max_ms`, `samples`, `nodes`.
///
/// # Errors
/// Setup failed, a posting was refused, or an alert never arrived (within 5 s).
pub async fn alerts_suite(b: &AlertsBench) -> Result<Figures, MovementsBenchError> {
    let fresh = fresh_database(b.backend, b.database_url.as_deref()).await?;
    let result = run(b, &fresh.config).await;
    if let Some((admin, name)) = &fresh.pg {
        drop_database(admin, name).await;
    }
    result
}

async fn run(b: &AlertsBench, config: &Config) -> Result<Figures, MovementsBenchError> {
    let poster = start(config).await?;
    let listener = match b.backend {
        Backend::Postgres => {
            let mut second = config.clone();
            second.data_dir = second.data_dir.join("node-b");
            Some(start(&second).await?)
        }
        Backend::Sqlite => None,
    };
    let result = measure(b, &poster, listener.as_ref().unwrap_or(&poster)).await;
    if let Some(l) = listener {
        l.stop().await;
    }
    poster.stop().await;
    result
}

async fn measure(
    b: &AlertsBench,
    poster: &Node,
    listener: &Node,
) -> Result<Figures, MovementsBenchError> {
    let token = poster
        .state
        .auth()
        .tokens
        .create("bench alerts", crate::auth::Role::Admin)
        .await
        .map_err(|e| MovementsBenchError::Setup(format!("token: {e}")))?
        .token
        .expose()
        .to_owned();
    let http = reqwest::Client::new();
    let base = format!("http://{}/api/v1", poster.addr);
    let post = |path: &'static str, body: serde_json::Value| {
        let req = http
            .post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body);
        async move {
            let r = req.send().await.map_err(|e| e.to_string())?;
            if r.status().is_success() {
                Ok(())
            } else {
                Err(format!("{path}: {}", r.status()))
            }
        }
    };
    post(
        "/warehouses",
        serde_json::json!({"code": "MAIN", "name": "Main"}),
    )
    .await
    .map_err(setup_err("warehouse"))?;
    post(
        "/articles",
        serde_json::json!({"sku": "BENCH-1", "name": "Benchmark", "min_qty": "10"}),
    )
    .await
    .map_err(setup_err("article"))?;
    post(
        "/movements",
        serde_json::json!({"type": "receipt", "sku": "BENCH-1", "warehouse": "MAIN", "qty": "20", "unit_cost": "1"}),
    )
    .await
    .map_err(setup_err("opening stock"))?;

    let mut req = format!("ws://{}/api/v1/ws?types=stock_alert", listener.addr)
        .into_client_request()
        .map_err(|e| MovementsBenchError::Setup(format!("WebSocket request: {e}")))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| MovementsBenchError::Setup(format!("header: {e}")))?;
    req.headers_mut().insert("Authorization", bearer);
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| MovementsBenchError::Setup(format!("WebSocket: {e}")))?;

    let mut latencies = Vec::with_capacity(b.samples);
    for i in 0..(20 + b.samples) {
        // An issue of 12 takes 20 to 8 (LOW: raised); a receipt of 12 brings it back (cleared).
        let body = if i % 2 == 0 {
            serde_json::json!({"type": "issue", "sku": "BENCH-1", "warehouse": "MAIN", "qty": "12"})
        } else {
            serde_json::json!({"type": "receipt", "sku": "BENCH-1", "warehouse": "MAIN", "qty": "12", "unit_cost": "1"})
        };
        post("/movements", body)
            .await
            .map_err(setup_err("posting"))?;
        let answered = Instant::now();
        let want = if i % 2 == 0 { "raised" } else { "cleared" };
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .map_err(|_| MovementsBenchError::Setup(format!("alert {i} never arrived")))?;
            let Some(Ok(Frame::Text(t))) = frame else {
                match frame {
                    Some(Ok(_)) => continue,
                    _ => return Err(MovementsBenchError::Setup("WebSocket closed".into())),
                }
            };
            let m: serde_json::Value = serde_json::from_str(&t)
                .map_err(|e| MovementsBenchError::Setup(format!("message: {e}")))?;
            if m["type"] == "stock_alert" && m["data"]["action"] == want {
                break;
            }
        }
        if i >= 20 {
            latencies.push(answered.elapsed());
        }
    }
    latencies.sort();
    let mut f = Figures::default();
    f.push("alert_latency_p50_ms", percentile(&latencies, 0.5));
    f.push("alert_latency_p99_ms", percentile(&latencies, 0.99));
    let avg =
        latencies.iter().map(Duration::as_secs_f64).sum::<f64>() / latencies.len().max(1) as f64;
    f.push("alert_latency_avg_ms", avg * 1000.0);
    f.push(
        "alert_latency_max_ms",
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    );
    f.push("samples", latencies.len() as f64);
    f.push(
        "nodes",
        if std::ptr::eq(poster, listener) {
            1.0
        } else {
            2.0
        },
    );
    Ok(f)
}
