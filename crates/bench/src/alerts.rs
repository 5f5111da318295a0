//! `malaka bench alerts`: how long a user waits for a stock alert. Every latency runs from just
//! before the `POST /api/v1/movements` that crosses an alert level is sent (`Instant::now()`,
//! then the request goes out) to the moment a WebSocket client has read the `stock_alert` frame
//! off its socket (a task per client reads its socket and stamps each frame as soon as it is
//! read, whether or not the HTTP answer is in yet). What lies in between is the whole path:
//! HTTP, the posting's commit, the outbox relay, the stock monitor raising or clearing the alert,
//! its publication, the hub, the server's WebSocket write and the client's read.
//!
//! The real server runs in the bench's process (`Application::build` on 127.0.0.1:0, rate limit
//! off) on a fresh SQLite file or a fresh PostgreSQL database; on PostgreSQL the postings go to
//! one node and every WebSocket client is on a second node of the same database (`nodes` = 2).
//! The clients are tokio-tungstenite clients on the same runtime, so on a small machine they
//! share its cores with the server. One article (`ALERT-1`, minimum 10, stock 20) takes the timed
//! postings, one after another, each waiting for its alert: an issue of 12 (raised, LOW), then a
//! receipt of 12 (cleared), and so on.
//!
//! Three phases, in this order:
//! - **idle**: 20 warm-up postings, then `--samples` timed ones (500), one client subscribed to
//!   `stock_alert`: `alert_latency_p50_ms`, `alert_latency_p99_ms`, `alert_latency_avg_ms`,
//!   `alert_latency_max_ms`, `samples`.
//! - **loaded** (`--load-clients N`, 32; 0 skips it): N clients post a steady background mix
//!   over HTTP (the `movements` suite's: 50% receipts, 45% issues, 5% transfers over 64 other
//!   articles in 2 warehouses, none with a minimum, so none raises an alert), each one request
//!   at a time, as fast as answers come. After 1 s of load and 5 warm-up alerts, `--samples`
//!   timed alert postings are made (on their own connection) as in the idle phase:
//!   `loaded_alert_latency_p50_ms`, `loaded_alert_latency_p99_ms`,
//!   `loaded_alert_latency_max_ms`, `loaded_samples`; `load_movements_per_sec` is the
//!   background's 201 answers per second over the timed window, `load_errors` its other answers
//!   (must be 0), `load_clients` its client count.
//! - **fan-out** (`--ws-clients N`, 0 skips it): N clients connect (64 handshakes at a time),
//!   each subscribed to `stock_alert`; `fanout_connect_seconds` is the time until the server's
//!   hub has registered all of them. After 5 warm-up postings, each of `fanout_rounds` (20) timed
//!   postings is timed for every client: `fanout_p50_ms` and `fanout_p99_ms` over all clients'
//!   times of all rounds; `fanout_first_ms` and `fanout_last_ms`, the medians over rounds of the
//!   fastest and the slowest client's time (the last one is what the slowest user waits for);
//!   `fanout_last_max_ms`, the slowest client of the worst round. Memory is the process's
//!   (server **and** the N bench clients, which are in the same process): `rss_before_clients_mb`
//!   (VmRSS before connecting), `rss_with_clients_mb` (VmRSS after the rounds, clients still
//!   connected), `rss_per_client_kb` (the difference per client: a connection's cost at both
//!   ends, an upper bound on the server's), `rss_peak_mb` (VmHWM at the end).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message as Frame, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::Figures;
use crate::jobs::Backend;
use crate::movements::{
    ARTICLES, MovementsBenchError, Pick, Rng, WAREHOUSES, catalog, fresh_database,
};
use malaka_server::{Application, Config};

/// Untimed alert postings before the idle phase's timed ones.
const WARM_UP: usize = 20;
/// Untimed alert postings before the loaded and fan-out phases' timed ones.
const SHORT_WARM_UP: usize = 5;
/// Background load before the loaded phase's first alert posting.
const LOAD_WARM_UP: Duration = Duration::from_secs(1);
/// WebSocket handshakes in flight at once while the fan-out clients connect.
const CONNECT_AT_ONCE: usize = 64;
/// The article that takes the timed postings.
const ALERT_SKU: &str = "ALERT-1";
/// Where it is stocked.
const ALERT_WAREHOUSE: &str = WAREHOUSES[0];
/// Longest wait for an alert (every client's, in the fan-out) before the run fails.
const ALERT_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct AlertsBench {
    /// Backend.
    pub backend: Backend,
    /// Database URL (a fresh database is made next to it).
    pub database_url: Option<String>,
    /// Timed postings of the idle phase (after 20 warm-ups) and of the loaded phase (after 5).
    pub samples: usize,
    /// Background posting clients of the loaded phase (0: no loaded phase).
    pub load_clients: usize,
    /// WebSocket clients of the fan-out phase (0: no fan-out phase).
    pub ws_clients: usize,
    /// Timed postings of the fan-out phase (after 5 warm-ups).
    pub fanout_rounds: usize,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Node {
    addr: std::net::SocketAddr,
    state: malaka_server::AppState,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), malaka_server::ServerError>>,
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

    /// WebSocket clients its hub has registered.
    fn ws_clients(&self) -> usize {
        self.state.live().hub().clients()
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A field of `/proc/self/status` (`VmRSS`, `VmHWM`), in MB (Linux; 0 elsewhere).
fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs the suite (see the module documentation for every figure).
///
/// # Errors
/// Setup failed, a posting was refused, or an alert never arrived (within 10 s).
pub async fn alerts_suite(b: &AlertsBench) -> Result<Figures, MovementsBenchError> {
    if b.samples == 0 {
        return Err(MovementsBenchError::Setup(
            "--samples must be above 0".into(),
        ));
    }
    let mut fresh = fresh_database(b.backend, b.database_url.as_deref()).await?;
    // Every client shares the bench's token, on one node.
    let live = &mut fresh.config.live;
    let room = b.ws_clients.saturating_add(16);
    live.ws_max_per_token = live.ws_max_per_token.max(room);
    live.ws_max_connections = live.ws_max_connections.max(room);
    let result = run(b, &fresh.config).await;
    fresh.remove().await;
    result
}

async fn run(b: &AlertsBench, config: &Config) -> Result<Figures, MovementsBenchError> {
    let poster = start(config).await?;
    let listener = match b.backend {
        Backend::Postgres => {
            let mut second = config.clone();
            second.data_dir = second.data_dir.join("node-b");
            match start(&second).await {
                Ok(n) => Some(n),
                Err(e) => {
                    poster.stop().await;
                    return Err(e);
                }
            }
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

/// The bench's client side: its token, the URLs, and the alert article's next crossing.
struct Client {
    http: reqwest::Client,
    api: String,
    token: String,
    /// `ws://<listening node>/api/v1/ws?types=stock_alert`.
    ws_url: String,
    /// Alert postings made so far (even: the next one is an issue that raises).
    postings: u64,
}

impl Client {
    /// POSTs `body` to `path`; `Ok` on a 2xx answer, read to its end.
    async fn post(&self, path: &str, body: String) -> Result<(), String> {
        let r = self
            .http
            .post(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let answer = r.bytes().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "{path}: {status}: {}",
                String::from_utf8_lossy(&answer)
            ))
        }
    }

    /// The next alert posting's body and the action its alert must carry.
    fn next_alert(&mut self) -> (String, &'static str) {
        let i = self.postings;
        self.postings += 1;
        // An issue of 12 takes 20 to 8 (LOW: raised); a receipt of 12 brings it back (cleared).
        if i % 2 == 0 {
            (
                serde_json::json!({"type": "issue", "sku": ALERT_SKU, "warehouse": ALERT_WAREHOUSE, "qty": "12"}).to_string(),
                "raised",
            )
        } else {
            (
                serde_json::json!({"type": "receipt", "sku": ALERT_SKU, "warehouse": ALERT_WAREHOUSE, "qty": "12", "unit_cost": "1"}).to_string(),
                "cleared",
            )
        }
    }

    /// Makes the next alert posting; the instant just before its request was sent, and the
    /// time until its answer was read.
    async fn alert_posting(
        &mut self,
    ) -> Result<(Instant, Duration, &'static str), MovementsBenchError> {
        let (body, want) = self.next_alert();
        let sent = Instant::now();
        self.post("/movements", body)
            .await
            .map_err(setup_err("alert posting"))?;
        Ok((sent, sent.elapsed(), want))
    }

    /// A WebSocket client of the listening node, subscribed to `stock_alert`.
    async fn connect(&self) -> Result<Ws, String> {
        let mut req = self
            .ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| e.to_string())?;
        let bearer =
            HeaderValue::from_str(&format!("Bearer {}", self.token)).map_err(|e| e.to_string())?;
        req.headers_mut().insert("Authorization", bearer);
        // Small read buffers: the clients' memory counts in the process's RSS.
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true)
            .await
            .map_err(|e| e.to_string())?;
        Ok(ws)
    }
}

/// A text frame a client read, stamped as soon as it was read.
struct Arrival {
    client: usize,
    at: Instant,
    text: Utf8Bytes,
}

/// Reads `ws` until it closes, stamping every text frame into `tx`.
fn read_frames(
    client: usize,
    mut ws: Ws,
    tx: mpsc::UnboundedSender<Arrival>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(frame) = ws.next().await {
            let at = Instant::now();
            match frame {
                Ok(Frame::Text(text)) => {
                    if tx.send(Arrival { client, at, text }).is_err() {
                        return;
                    }
                }
                Ok(Frame::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
}

/// Checks that `text` is the `stock_alert` of the alert article with action `want`.
fn check_alert(text: &str, want: &str) -> Result<(), MovementsBenchError> {
    let m: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| MovementsBenchError::Setup(format!("WebSocket message: {e}")))?;
    if m["type"] == "stock_alert"
        && m["data"]["action"] == want
        && m["data"]["alert"]["sku"] == ALERT_SKU
    {
        Ok(())
    } else {
        Err(MovementsBenchError::Setup(format!(
            "expected a {want} stock_alert of {ALERT_SKU}, got {text}"
        )))
    }
}

/// One timed alert posting seen by one client: from the send to the client's read of the
/// alert, and to the posting's answer.
async fn one_alert(
    client: &mut Client,
    rx: &mut mpsc::UnboundedReceiver<Arrival>,
) -> Result<(Duration, Duration), MovementsBenchError> {
    let (sent, answered, want) = client.alert_posting().await?;
    let arrival = tokio::time::timeout(ALERT_TIMEOUT, rx.recv())
        .await
        .map_err(|_| MovementsBenchError::Setup(format!("a {want} alert never arrived")))?
        .ok_or_else(|| MovementsBenchError::Setup("the WebSocket closed".into()))?;
    check_alert(&arrival.text, want)?;
    Ok((arrival.at.saturating_duration_since(sent), answered))
}

/// Waits until `node`'s hub holds `n` clients (a client has its 101 before it is registered).
async fn registered(node: &Node, n: usize) -> Result<(), MovementsBenchError> {
    let deadline = Instant::now() + ALERT_TIMEOUT;
    while node.ws_clients() != n {
        if Instant::now() > deadline {
            return Err(MovementsBenchError::Setup(format!(
                "the hub holds {} WebSocket clients, expected {n}",
                node.ws_clients()
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

async fn measure(
    b: &AlertsBench,
    poster: &Node,
    listener: &Node,
) -> Result<Figures, MovementsBenchError> {
    let token = crate::movements::admin_token(&poster.state, "bench alerts").await?;
    // Two warehouses and 64 articles with stock, for the background load.
    catalog(poster.state.inventory(), ARTICLES).await?;
    let mut client = Client {
        http: reqwest::Client::builder()
            .timeout(ALERT_TIMEOUT)
            .build()
            .map_err(|e| MovementsBenchError::Setup(format!("HTTP client: {e}")))?,
        api: format!("http://{}/api/v1", poster.addr),
        token,
        ws_url: format!("ws://{}/api/v1/ws?types=stock_alert", listener.addr),
        postings: 0,
    };
    client
        .post(
            "/articles",
            serde_json::json!({"sku": ALERT_SKU, "name": "Alert benchmark", "min_qty": "10"})
                .to_string(),
        )
        .await
        .map_err(setup_err("article"))?;
    client
        .post(
            "/movements",
            serde_json::json!({"type": "receipt", "sku": ALERT_SKU, "warehouse": ALERT_WAREHOUSE, "qty": "20", "unit_cost": "1"}).to_string(),
        )
        .await
        .map_err(setup_err("opening stock"))?;

    let mut f = Figures::default();
    let ws = client
        .connect()
        .await
        .map_err(setup_err("WebSocket client"))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = read_frames(0, ws, tx);
    registered(listener, 1).await?;
    let phases = async {
        idle(b, &mut client, &mut rx, &mut f).await?;
        if b.load_clients > 0 {
            loaded(b, &mut client, &mut rx, &mut f).await?;
        }
        Ok::<_, MovementsBenchError>(())
    };
    let done = phases.await;
    reader.abort();
    done?;
    f.push(
        "nodes",
        if std::ptr::eq(poster, listener) {
            1.0
        } else {
            2.0
        },
    );
    if b.ws_clients > 0 {
        // The idle client is gone first: the fan-out's clients are all there is.
        registered(listener, 0).await?;
        fanout(b, &mut client, listener, &mut f).await?;
    }
    Ok(f)
}

async fn idle(
    b: &AlertsBench,
    client: &mut Client,
    rx: &mut mpsc::UnboundedReceiver<Arrival>,
    f: &mut Figures,
) -> Result<(), MovementsBenchError> {
    for _ in 0..WARM_UP {
        one_alert(client, rx).await?;
    }
    let (mut latencies, mut posts) = (Vec::with_capacity(b.samples), Vec::new());
    for _ in 0..b.samples {
        let (latency, post) = one_alert(client, rx).await?;
        latencies.push(latency);
        posts.push(post);
    }
    latencies.sort();
    posts.sort();
    f.push("alert_latency_p50_ms", percentile(&latencies, 0.5));
    f.push("alert_latency_p99_ms", percentile(&latencies, 0.99));
    let avg =
        latencies.iter().map(Duration::as_secs_f64).sum::<f64>() / latencies.len().max(1) as f64;
    f.push("alert_latency_avg_ms", avg * 1000.0);
    f.push("alert_latency_max_ms", percentile(&latencies, 1.0));
    f.push("alert_post_p50_ms", percentile(&posts, 0.5));
    f.push("samples", latencies.len() as f64);
    Ok(())
}

/// The background posting clients' counts.
#[derive(Default)]
struct LoadCounts {
    ok: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// One background client: the `movements` suite's mix, one request at a time, until `stop`.
async fn load_client(
    http: reqwest::Client,
    url: Arc<str>,
    bearer: Arc<str>,
    id: usize,
    stop: Arc<AtomicBool>,
    counts: Arc<LoadCounts>,
) {
    let mut rng = Rng(0xA1E7_0000 + id as u64);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let body = Pick::draw(&mut rng, ARTICLES, id, n).json();
        let sent = http
            .post(&*url)
            .header(reqwest::header::AUTHORIZATION, &*bearer)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let failed = match sent {
            Ok(r) => {
                let status = r.status();
                match r.bytes().await {
                    Ok(_) if status == reqwest::StatusCode::CREATED => None,
                    Ok(bytes) => Some(format!("{status}: {}", String::from_utf8_lossy(&bytes))),
                    Err(e) => Some(format!("{status}, reading the answer: {e}")),
                }
            }
            Err(e) => Some(format!("request: {e}")),
        };
        match failed {
            None => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
            }
            Some(e) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                counts
                    .first_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert(e);
            }
        }
    }
}

async fn loaded(
    b: &AlertsBench,
    client: &mut Client,
    rx: &mut mpsc::UnboundedReceiver<Arrival>,
    f: &mut Figures,
) -> Result<(), MovementsBenchError> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(b.load_clients)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| MovementsBenchError::Setup(format!("HTTP client: {e}")))?;
    let url: Arc<str> = format!("{}/movements", client.api).into();
    let bearer: Arc<str> = format!("Bearer {}", client.token).into();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(LoadCounts::default());
    let tasks: Vec<_> = (0..b.load_clients)
        .map(|id| {
            tokio::spawn(load_client(
                http.clone(),
                Arc::clone(&url),
                Arc::clone(&bearer),
                id,
                Arc::clone(&stop),
                Arc::clone(&counts),
            ))
        })
        .collect();
    let timed = async {
        tokio::time::sleep(LOAD_WARM_UP).await;
        for _ in 0..SHORT_WARM_UP {
            one_alert(client, rx).await?;
        }
        let (start, ok_before) = (Instant::now(), counts.ok.load(Ordering::Relaxed));
        let (mut latencies, mut posts) = (Vec::with_capacity(b.samples), Vec::new());
        for _ in 0..b.samples {
            let (latency, post) = one_alert(client, rx).await?;
            latencies.push(latency);
            posts.push(post);
        }
        let rate =
            (counts.ok.load(Ordering::Relaxed) - ok_before) as f64 / start.elapsed().as_secs_f64();
        Ok::<_, MovementsBenchError>((latencies, posts, rate))
    };
    let result = timed.await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ended = t.await;
    }
    let (mut latencies, mut posts, rate) = result?;
    latencies.sort();
    posts.sort();
    f.push("loaded_alert_latency_p50_ms", percentile(&latencies, 0.5));
    f.push("loaded_alert_latency_p99_ms", percentile(&latencies, 0.99));
    f.push("loaded_alert_latency_max_ms", percentile(&latencies, 1.0));
    f.push("loaded_post_p50_ms", percentile(&posts, 0.5));
    f.push("loaded_post_p99_ms", percentile(&posts, 0.99));
    f.push("loaded_samples", latencies.len() as f64);
    f.push("load_movements_per_sec", rate);
    f.push("load_clients", b.load_clients as f64);
    let errors = counts.errors.load(Ordering::Relaxed);
    if let Some(e) = counts
        .first_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
    {
        tracing::warn!(errors, first = %e, "background postings failed");
    }
    f.push("load_errors", errors as f64);
    Ok(())
}

async fn fanout(
    b: &AlertsBench,
    client: &mut Client,
    listener: &Node,
    f: &mut Figures,
) -> Result<(), MovementsBenchError> {
    let n = b.ws_clients;
    let rss_before = status_mb("VmRSS");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let c: &Client = client;
    let mut connected = futures::stream::iter(0..n)
        .map(|i| async move { (i, c.connect().await) })
        .buffer_unordered(CONNECT_AT_ONCE);
    let mut readers = Vec::with_capacity(n);
    let mut failed = None;
    while let Some((i, ws)) = connected.next().await {
        match ws {
            Ok(ws) => readers.push(read_frames(i, ws, tx.clone())),
            Err(e) => {
                failed = Some(format!("client {i}: {e}"));
                break;
            }
        }
    }
    drop(connected);
    let rounds = async {
        if let Some(e) = failed {
            return Err(MovementsBenchError::Setup(format!("WebSocket client: {e}")));
        }
        registered(listener, n).await?;
        let connect_seconds = started.elapsed().as_secs_f64();
        let (mut all, mut firsts, mut lasts) = (Vec::new(), Vec::new(), Vec::new());
        let mut seen = vec![false; n];
        for round in 0..(SHORT_WARM_UP + b.fanout_rounds) {
            let (sent, _, want) = client.alert_posting().await?;
            let deadline = tokio::time::Instant::now() + ALERT_TIMEOUT;
            let mut got = Vec::with_capacity(n);
            seen.iter_mut().for_each(|s| *s = false);
            while got.len() < n {
                let a = tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .map_err(|_| {
                        MovementsBenchError::Setup(format!(
                            "round {round}: {} of {n} clients had the alert after {ALERT_TIMEOUT:?}",
                            got.len()
                        ))
                    })?
                    .ok_or_else(|| MovementsBenchError::Setup("WebSocket clients gone".into()))?;
                if std::mem::replace(&mut seen[a.client], true) {
                    return Err(MovementsBenchError::Setup(format!(
                        "round {round}: client {} had two messages",
                        a.client
                    )));
                }
                got.push(a);
            }
            // Checked once all are in, so that parsing takes nothing from the deliveries.
            for a in &got {
                check_alert(&a.text, want)?;
            }
            if round < SHORT_WARM_UP {
                continue;
            }
            let mut times: Vec<Duration> = got
                .iter()
                .map(|a| a.at.saturating_duration_since(sent))
                .collect();
            times.sort();
            firsts.push(times.first().copied().unwrap_or_default());
            lasts.push(times.last().copied().unwrap_or_default());
            all.extend(times);
        }
        Ok((connect_seconds, all, firsts, lasts))
    };
    let result = rounds.await;
    let rss_with = status_mb("VmRSS");
    for r in &readers {
        r.abort();
    }
    let (connect_seconds, mut all, mut firsts, mut lasts) = result?;
    all.sort();
    firsts.sort();
    lasts.sort();
    let median = |v: &[Duration]| v.get(v.len() / 2).copied().map_or(0.0, ms);
    f.push("fanout_clients", n as f64);
    f.push("fanout_rounds", lasts.len() as f64);
    f.push("fanout_connect_seconds", connect_seconds);
    f.push("fanout_p50_ms", percentile(&all, 0.5));
    f.push("fanout_p99_ms", percentile(&all, 0.99));
    f.push("fanout_first_ms", median(&firsts));
    f.push("fanout_last_ms", median(&lasts));
    f.push("fanout_last_max_ms", lasts.last().copied().map_or(0.0, ms));
    f.push("rss_before_clients_mb", rss_before);
    f.push("rss_with_clients_mb", rss_with);
    f.push(
        "rss_per_client_kb",
        (rss_with - rss_before) * 1024.0 / n as f64,
    );
    f.push("rss_peak_mb", status_mb("VmHWM"));
    Ok(())
}
