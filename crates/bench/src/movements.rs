//! `malaka bench movements`: throughput and latency of `POST /api/v1/movements` over loopback,
//! against the ceiling the database allows, and how both hold as the ledger grows.
//!
//! The real server runs in process (`Application::build` on 127.0.0.1:0, per-token rate limit
//! off) on a fresh SQLite file or a fresh PostgreSQL database. Setup makes 2 warehouses and
//! `--articles` articles (64; every other one FIFO, the rest moving average) with opening stock
//! in both warehouses, so issues never go negative; with `--ledger-rows N` it then loads N ledger
//! rows of the same mix through `POST /api/v1/movements/batch` (4 clients, 500 movements a
//! batch: `load_rows_per_sec`) and reports the database's size per ledger row. The mix: 50%
//! receipts (1 to 5 units), 45% issues (1 to 3 units), 5% transfers (1 unit), uniform over
//! articles and warehouses.
//!
//! Timed, each from just before the request is sent to the end of the answer:
//! - `movements_per_sec`, `latency_p50_ms`, `latency_p99_ms`: C concurrent HTTP clients (32), in
//!   two halves interleaved with the other phases, so the database growing during the run weighs
//!   on every side alike;
//! - `latency_1_p50_ms`, `latency_1_p99_ms`: one client alone;
//! - `direct_per_sec` and `http_over_direct`: the same mix through `Inventory::post` in process
//!   (the group committer on SQLite, no HTTP, auth or JSON);
//! - `ceiling_per_sec` (see `ceiling`): the same rows precomputed and written with
//!   prepared statements on one connection in transactions of 64, on a second fresh database of
//!   the same kind; `ratio_to_ceiling` = `movements_per_sec` / `ceiling_per_sec`.
//!
//! With `--idempotency-keys`, HTTP phases with a fresh `Idempotency-Key` on every request are
//! interleaved with the others (`keyed_*` figures, and `keyed_over_unkeyed`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use malaka_inventory::{Inventory, NewArticle, NewMovement, WarehouseCode};
use rust_decimal::Decimal;
use tokio::sync::oneshot;

use crate::Figures;
use crate::jobs::Backend;
use malaka_server::db::DatabaseExt as _;
use malaka_server::{Application, Config, ServerError};

/// Warehouses made by the setup.
pub(crate) const WAREHOUSES: [&str; 2] = ["BENCH-A", "BENCH-B"];
/// Articles made by the setup unless `--articles` says otherwise.
pub(crate) const ARTICLES: usize = 64;
/// Opening stock of every article in every warehouse.
const OPENING_QTY: i64 = 1_000_000;
/// Warm-up of each path before the timed phases.
const WARM_UP: Duration = Duration::from_secs(1);
/// Failures shown in the log, per path.
const SHOWN_ERRORS: usize = 5;

/// What to run.
#[derive(Debug, Clone)]
pub struct MovementsBench {
    /// Backend.
    pub backend: Backend,
    /// For PostgreSQL: a URL on the server to use (a fresh database is created next to it and
    /// dropped at the end). For SQLite: the file to create (must not exist; it is kept).
    /// Without it, SQLite runs in a temporary folder that is removed at the end.
    pub database_url: Option<String>,
    /// Concurrent clients (HTTP) and tasks (direct).
    pub clients: usize,
    /// Timed seconds of each path.
    pub seconds: f64,
    /// Also time the HTTP path with an `Idempotency-Key` on every request.
    pub idempotency_keys: bool,
    /// Articles in the catalog (every other one FIFO).
    pub articles: usize,
    /// Ledger rows loaded (through the batch API) before the timed phases.
    pub ledger_rows: usize,
    /// Open layers of one FIFO article whose postings are timed against a one-layer article
    /// (0: off).
    pub layers: usize,
}

/// Why the suite failed.
#[derive(Debug, thiserror::Error)]
pub enum MovementsBenchError {
    /// Database trouble (setup or cleanup).
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The server could not start or stop.
    #[error("server: {0}")]
    Server(#[from] ServerError),
    /// The setup's catalog or opening stock could not be written.
    #[error("inventory: {0}")]
    Inventory(#[from] malaka_inventory::InventoryError),
    /// Setup trouble.
    #[error("{0}")]
    Setup(String),
}

/// A small deterministic generator (splitmix64): each client draws its own movements.
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn sku(i: usize) -> String {
    format!("BENCH-{i:05}")
}

/// One movement of the mix.
#[derive(Debug, Clone)]
pub(crate) struct Pick {
    kind: &'static str,
    sku: String,
    warehouse: &'static str,
    to_warehouse: Option<&'static str>,
    qty: i64,
    /// Cents; receipts only.
    unit_cost: Option<i64>,
    reference: String,
}

impl Pick {
    pub(crate) fn draw(rng: &mut Rng, articles: usize, client: usize, n: u64) -> Self {
        let article = sku(rng.below(articles.max(1) as u64) as usize);
        let w = rng.below(2) as usize;
        let roll = rng.below(100);
        let reference = format!("bench-{client}-{n}");
        if roll < 50 {
            Self {
                kind: "receipt",
                sku: article,
                warehouse: WAREHOUSES[w],
                to_warehouse: None,
                qty: 1 + rng.below(5) as i64,
                unit_cost: Some(900 + rng.below(200) as i64),
                reference,
            }
        } else if roll < 95 {
            Self {
                kind: "issue",
                sku: article,
                warehouse: WAREHOUSES[w],
                to_warehouse: None,
                qty: 1 + rng.below(3) as i64,
                unit_cost: None,
                reference,
            }
        } else {
            Self {
                kind: "transfer",
                sku: article,
                warehouse: WAREHOUSES[w],
                to_warehouse: Some(WAREHOUSES[1 - w]),
                qty: 1,
                unit_cost: None,
                reference,
            }
        }
    }

    /// The request body (every value is a safe code, number or reference: no escaping needed).
    pub(crate) fn json(&self) -> String {
        let mut s = format!(
            r#"{{"type":"{}","sku":"{}","warehouse":"{}","qty":{}"#,
            self.kind, self.sku, self.warehouse, self.qty
        );
        if let Some(to) = self.to_warehouse {
            s.push_str(&format!(r#","to_warehouse":"{to}""#));
        }
        if let Some(c) = self.unit_cost {
            s.push_str(&format!(r#","unit_cost":"{}""#, Decimal::new(c, 2)));
        }
        s.push_str(&format!(r#","reference":"{}"}}"#, self.reference));
        s
    }

    fn spec(&self) -> crate::ceiling::Spec {
        crate::ceiling::Spec {
            kind: self.kind,
            sku: self.sku.clone(),
            warehouse: self.warehouse,
            to_warehouse: self.to_warehouse,
            qty: self.qty,
            unit_cost: self.unit_cost,
            reference: self.reference.clone(),
        }
    }

    fn movement(&self) -> Result<NewMovement, malaka_inventory::InventoryError> {
        NewMovement::parse(
            self.kind,
            &self.sku,
            self.warehouse,
            self.to_warehouse,
            Decimal::from(self.qty),
            self.unit_cost.map(|c| Decimal::new(c, 2)),
            Some(&self.reference),
            None,
        )
    }
}

/// What one path did in one or more phases.
#[derive(Debug, Default)]
struct Outcome {
    ok: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: u64,
    shown: Vec<String>,
}

impl Outcome {
    fn absorb(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        for s in other.shown {
            if self.shown.len() < SHOWN_ERRORS {
                self.shown.push(s);
            }
        }
    }

    fn failed(&mut self, what: String) {
        self.errors += 1;
        if self.shown.len() < SHOWN_ERRORS {
            self.shown.push(what);
        }
    }

    fn rate(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.ok as f64 / self.elapsed.as_secs_f64()
        }
    }
}

/// The HTTP side's fixed parts, shared by its clients.
#[derive(Debug)]
struct HttpSide {
    client: reqwest::Client,
    url: String,
    bearer: String,
    /// Send a fresh `Idempotency-Key` with every request.
    keyed: bool,
    /// Articles to draw from.
    articles: usize,
}

async fn http_client(target: Arc<HttpSide>, client: usize, seed: u64, until: Instant) -> Outcome {
    let mut rng = Rng(seed);
    let mut out = Outcome::default();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let body = Pick::draw(&mut rng, target.articles, client, n).json();
        let start = Instant::now();
        let mut req = target
            .client
            .post(&target.url)
            .header(reqwest::header::AUTHORIZATION, &target.bearer)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if target.keyed {
            req = req.header("idempotency-key", format!("bench-{seed}-{client}-{n}"));
        }
        let sent = req.body(body).send().await;
        match sent {
            Ok(resp) => {
                let status = resp.status();
                let answer = resp.bytes().await;
                let took = start.elapsed();
                match answer {
                    Ok(_) if status == reqwest::StatusCode::CREATED => {
                        out.ok += 1;
                        out.latencies.push(took);
                    }
                    Ok(bytes) => {
                        out.failed(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
                    }
                    Err(e) => out.failed(format!("{status}, reading the answer: {e}")),
                }
            }
            Err(e) => out.failed(format!("request: {e}")),
        }
    }
    out
}

async fn direct_client(
    inventory: Inventory,
    articles: usize,
    client: usize,
    seed: u64,
    until: Instant,
) -> Outcome {
    let mut rng = Rng(seed);
    let mut out = Outcome::default();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let pick = Pick::draw(&mut rng, articles, client, n);
        let start = Instant::now();
        match pick.movement() {
            Ok(m) => match inventory.post(&m, "bench").await {
                Ok(_) => {
                    out.ok += 1;
                    out.latencies.push(start.elapsed());
                }
                Err(e) => out.failed(format!("post: {e}")),
            },
            Err(e) => out.failed(format!("parse: {e}")),
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Target {
    /// POST /api/v1/movements.
    Http(Arc<HttpSide>),
    /// `Inventory::post` in process (SQLite: through the group committer), over `usize`
    /// articles.
    Direct(Inventory, usize),
}

/// Runs `clients` tasks on `path` for `length`; the phase's time runs until the last answer.
async fn phase(target: &Target, clients: usize, length: Duration, round: u64) -> Outcome {
    let start = Instant::now();
    let until = start + length;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let seed = round.wrapping_mul(1_000_003).wrapping_add(c as u64);
            match target.clone() {
                Target::Http(t) => tokio::spawn(http_client(t, c, seed, until)),
                Target::Direct(inv, a) => tokio::spawn(direct_client(inv, a, c, seed, until)),
            }
        })
        .collect();
    let mut out = Outcome::default();
    for t in tasks {
        match t.await {
            Ok(o) => out.absorb(o),
            Err(e) => out.failed(format!("client task: {e}")),
        }
    }
    out.elapsed = start.elapsed();
    out
}

/// Failures over `outcomes`, and the first few of them.
fn failures<'a>(outcomes: &[&'a Outcome]) -> (u64, Vec<&'a str>) {
    let count = outcomes.iter().map(|o| o.errors).sum();
    let shown = outcomes
        .iter()
        .flat_map(|o| o.shown.iter().map(String::as_str))
        .take(SHOWN_ERRORS)
        .collect();
    (count, shown)
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// A fresh database: the server's configuration, and what to remove at the end.
pub(crate) struct Fresh {
    pub(crate) config: Config,
    pub(crate) pg: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Fresh {
    /// Drops the PostgreSQL database made for the run (the SQLite folder goes with `self`).
    pub(crate) async fn remove(&self) {
        if let Some((admin, name)) = &self.pg {
            malaka_db::fresh::drop_database(admin, name).await;
        }
    }
}

async fn fresh(b: &MovementsBench) -> Result<Fresh, MovementsBenchError> {
    fresh_database(b.backend, b.database_url.as_deref()).await
}

/// A server configuration on a fresh database of `backend` (an SQLite file in a temporary
/// folder, or a new database on the PostgreSQL server of `database_url`), rate limit off.
pub(crate) async fn fresh_database(
    backend: Backend,
    database_url: Option<&str>,
) -> Result<Fresh, MovementsBenchError> {
    let dir =
        tempfile::tempdir().map_err(|e| MovementsBenchError::Setup(format!("temp dir: {e}")))?;
    let mut config = Config {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    // Every client shares one token: no per-token limit.
    config.api.rate_limit_per_second = 0;
    let mut pg = None;
    match backend {
        Backend::Sqlite => {
            if let Some(url) = database_url {
                let path = url
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:");
                if std::path::Path::new(path).exists() {
                    return Err(MovementsBenchError::Setup(format!(
                        "{path} exists; the benchmark needs a fresh file"
                    )));
                }
                config.database.url = format!("sqlite://{path}");
            }
        }
        Backend::Postgres => {
            let admin = database_url
                .unwrap_or("postgres://postgres@127.0.0.1:5432/test")
                .to_owned();
            let fresh = malaka_db::FreshPostgres::create(&admin, "malaka_bench")
                .await
                .map_err(|e| MovementsBenchError::Setup(format!("a fresh database: {e}")))?;
            config.database.url = fresh.url;
            let name = fresh.name;
            pg = Some((admin, name));
        }
    }
    Ok(Fresh {
        config,
        pg,
        _dir: dir,
    })
}
/// Two warehouses, `articles` articles (every other one FIFO), and opening stock of each
/// article in each warehouse (posted in batches).
pub(crate) async fn catalog(
    inventory: &Inventory,
    articles: usize,
) -> Result<(), MovementsBenchError> {
    for code in WAREHOUSES {
        inventory
            .create_warehouse(&WarehouseCode::parse(code)?, &format!("Bench {code}"))
            .await?;
    }
    let mut opening = Vec::new();
    for i in 0..articles {
        let valuation = if i % 2 == 1 { "fifo" } else { "moving_average" };
        let article = NewArticle::parse(
            &sku(i),
            &format!("Bench article {i}"),
            None,
            Some(valuation),
            None,
            None,
            None,
        )?;
        inventory.create_article(&article).await?;
        for w in WAREHOUSES {
            opening.push(NewMovement::parse(
                "receipt",
                &sku(i),
                w,
                None,
                Decimal::from(OPENING_QTY),
                Some(Decimal::new(1000, 2)),
                Some("opening"),
                None,
            )?);
        }
    }
    for chunk in opening.chunks(500) {
        inventory.post_batch(chunk, "bench").await?;
    }
    Ok(())
}

/// Loads `rows` ledger rows of the mix through `POST /api/v1/movements/batch` (4 clients, 500
/// movements a batch); the rows per second.
async fn load(side: &HttpSide, rows: usize) -> Result<f64, MovementsBenchError> {
    const CLIENTS: usize = 4;
    const BATCH: usize = 500;
    let url = side.url.replace("/movements", "/movements/batch");
    let start = Instant::now();
    let per_client = rows.div_ceil(CLIENTS);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (client, url, bearer, articles) = (
            side.client.clone(),
            url.clone(),
            side.bearer.clone(),
            side.articles,
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0xC0FF_EE00 + c as u64);
            let mut written = 0usize;
            let mut n = 0u64;
            while written < per_client {
                let size = BATCH.min(per_client - written);
                let mut body = String::from(r#"{"movements":["#);
                let mut count = 0usize;
                for k in 0..size {
                    n += 1;
                    let p = Pick::draw(&mut rng, articles, 1000 + c, n);
                    count += if p.kind == "transfer" { 2 } else { 1 };
                    if k > 0 {
                        body.push(',');
                    }
                    body.push_str(&p.json());
                }
                body.push_str("]}");
                let r = client
                    .post(&url)
                    .header(reqwest::header::AUTHORIZATION, &bearer)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("batch: {e}"))?;
                if r.status() != reqwest::StatusCode::CREATED {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    return Err(format!("batch: {status}: {text}"));
                }
                written += count;
            }
            Ok::<usize, String>(written)
        }));
    }
    let mut total = 0usize;
    for t in tasks {
        total += t
            .await
            .map_err(|e| MovementsBenchError::Setup(format!("load task: {e}")))?
            .map_err(MovementsBenchError::Setup)?;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Ledger rows and the database's size in bytes (SQLite: the file and its WAL; PostgreSQL:
/// `pg_database_size`).
async fn size(
    db: &malaka_server::db::Database,
    config: &Config,
) -> Result<(i64, i64), MovementsBenchError> {
    Ok(match db {
        malaka_server::db::Database::Sqlite(pool) => {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(pool)
                .await?;
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM inv_ledger")
                .fetch_one(pool)
                .await?;
            let url = config.database_url();
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
                + std::fs::metadata(format!("{path}-wal"))
                    .map(|m| m.len())
                    .unwrap_or(0);
            (rows, i64::try_from(bytes).unwrap_or(i64::MAX))
        }
        malaka_server::db::Database::Postgres(pool) => {
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM inv_ledger")
                .fetch_one(pool)
                .await?;
            let bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
                .fetch_one(pool)
                .await?;
            (rows, bytes)
        }
    })
}

/// Runs the suite: see the module's documentation for every figure.
///
/// # Errors
/// The database or the server could not be set up.
pub async fn movements_suite(b: &MovementsBench) -> Result<Figures, MovementsBenchError> {
    if b.clients == 0 || !b.seconds.is_finite() || b.seconds <= 0.0 || b.articles == 0 {
        return Err(MovementsBenchError::Setup(
            "--clients, --articles and --seconds must be above 0".into(),
        ));
    }
    let served = fresh(b).await?;
    let result = serve_and_measure(b, &served.config).await;
    served.remove().await;
    let mut figures = result?;
    // The ceiling, on a database of its own.
    let ceiling = fresh(b).await?;
    let measured = ceiling_per_sec(b, &ceiling.config).await;
    ceiling.remove().await;
    let (ceiling_rate, ceiling_movements) = measured?;
    let rate = figures.get("movements_per_sec").unwrap_or(0.0);
    figures.push("ceiling_per_sec", ceiling_rate);
    figures.push("ceiling_movements", ceiling_movements as f64);
    figures.push(
        "ratio_to_ceiling",
        if ceiling_rate > 0.0 {
            rate / ceiling_rate
        } else {
            0.0
        },
    );
    Ok(figures)
}

/// The ceiling's movements per second: 5,000 a timed second of the suite (at least 20,000),
/// precomputed, written by `ceiling::write` on a fresh database with the same catalog.
async fn ceiling_per_sec(
    b: &MovementsBench,
    config: &Config,
) -> Result<(f64, usize), MovementsBenchError> {
    let db = malaka_server::db::Database::connect(&config.database_url(), &config.database)
        .await
        .map_err(|e| MovementsBenchError::Setup(format!("ceiling database: {e}")))?;
    db.migrate()
        .await
        .map_err(|e| MovementsBenchError::Setup(format!("ceiling database: {e}")))?;
    let inventory = db.inventory();
    catalog(&inventory, b.articles).await?;
    let n = ((b.seconds * 5000.0) as usize).max(20_000);
    let skus: Vec<String> = (0..b.articles).map(sku).collect();
    let mut books = crate::ceiling::Books::default();
    books.open(&skus, &WAREHOUSES, OPENING_QTY, Decimal::new(1000, 2));
    let mut rng = Rng(0x5EED);
    let rows: Vec<_> = (0..n as u64)
        .map(|i| books.rows(&Pick::draw(&mut rng, b.articles, 0, i).spec()))
        .collect();
    // Warm the connection and its statement cache, then time the rest.
    let (warm, timed) = rows.split_at(rows.len() / 10);
    crate::ceiling::write(&db, warm).await?;
    let took = crate::ceiling::write(&db, timed).await?;
    drop(inventory);
    db.close().await;
    Ok((timed.len() as f64 / took.as_secs_f64(), timed.len()))
}

async fn serve_and_measure(
    b: &MovementsBench,
    config: &Config,
) -> Result<Figures, MovementsBenchError> {
    with_server(config, |state, addr| async move {
        measure(b, &state, addr, config).await
    })
    .await
}

/// A new admin token on the server of `state`, named `name`: what a benchmark's HTTP client
/// signs in with.
pub(crate) async fn admin_token(
    state: &malaka_server::AppState,
    name: &str,
) -> Result<String, MovementsBenchError> {
    Ok(state
        .auth()
        .tokens
        .create(name, malaka_server::auth::Role::Admin)
        .await
        .map_err(|e| MovementsBenchError::Setup(format!("bench token: {e}")))?
        .token
        .expose()
        .to_owned())
}

/// Runs the server of `config` in this process while `measure` runs against it (given its state
/// and address), then stops the server and waits for it to end. The measurement's error comes
/// first, then the server's.
pub(crate) async fn with_server<F, Fut>(
    config: &Config,
    measure: F,
) -> Result<Figures, MovementsBenchError>
where
    F: FnOnce(malaka_server::AppState, std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<Figures, MovementsBenchError>>,
{
    let app = Application::build(config).await?;
    let addr = app
        .local_addr()
        .map_err(|e| MovementsBenchError::Setup(format!("server address: {e}")))?;
    let state = app.state().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        // A message or a dropped sender: either way, stop.
        let _stop = stopped.await;
    }));
    let measured = measure(state, addr).await;
    // The server task waits on this; if it already ended, there is nothing to stop.
    let _already_stopped = stop.send(());
    let finished = tokio::time::timeout(config.shutdown_timeout * 2, server)
        .await
        .map_err(|_| MovementsBenchError::Setup("the server did not stop in time".into()))?
        .map_err(|e| MovementsBenchError::Setup(format!("server task: {e}")))?;
    let figures = measured?;
    finished?;
    Ok(figures)
}

async fn measure(
    b: &MovementsBench,
    state: &malaka_server::AppState,
    addr: std::net::SocketAddr,
    config: &Config,
) -> Result<Figures, MovementsBenchError> {
    let inventory = state.inventory().clone();
    catalog(&inventory, b.articles).await?;
    let token = admin_token(state, "bench movements").await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(b.clients)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| MovementsBenchError::Setup(format!("HTTP client: {e}")))?;
    let side = |keyed| {
        Arc::new(HttpSide {
            client: client.clone(),
            url: format!("http://{addr}/api/v1/movements"),
            bearer: format!("Bearer {token}"),
            keyed,
            articles: b.articles,
        })
    };
    let mut f = Figures::default();
    if b.ledger_rows > 0 {
        let rate = load(&side(false), b.ledger_rows).await?;
        let (rows, bytes) = size(state.db(), config).await?;
        f.push("ledger_rows", rows as f64);
        f.push("load_rows_per_sec", rate);
        f.push("db_bytes_per_ledger_row", bytes as f64 / rows.max(1) as f64);
    } else {
        f.push("ledger_rows", 0.0);
    }
    let http = Target::Http(side(false));
    let keyed = Target::Http(side(true));
    let direct = Target::Direct(inventory, b.articles);
    let clients = b.clients;

    // Warm up: connections, caches, the database file.
    let warm_http = phase(&http, clients, WARM_UP, 1).await;
    let warm_direct = phase(&direct, clients, WARM_UP, 6).await;

    // Interleaved, so the database growing during the run weighs on every side alike.
    let half = Duration::from_secs_f64(b.seconds / 2.0);
    let mut with_keys = Outcome::default();
    if b.idempotency_keys {
        let warm = phase(&keyed, clients, WARM_UP, 12).await;
        with_keys.errors += warm.errors;
        with_keys.shown = warm.shown;
    }
    let mut over_http = phase(&http, clients, half, 3).await;
    if b.idempotency_keys {
        with_keys.absorb(phase(&keyed, clients, half, 10).await);
    }
    let mut alone = phase(&http, 1, half / 2, 4).await;
    let mut grouped = phase(&direct, clients, half, 7).await;
    over_http.absorb(phase(&http, clients, half, 5).await);
    if b.idempotency_keys {
        with_keys.absorb(phase(&keyed, clients, half, 11).await);
    }
    alone.absorb(phase(&http, 1, half / 2, 8).await);
    grouped.absorb(phase(&direct, clients, half, 9).await);

    let (keyed_errors, shown) = failures(&[&with_keys]);
    for e in shown {
        tracing::warn!(error = %e, "a keyed POST /api/v1/movements failed");
    }
    let (http_errors, shown) = failures(&[&warm_http, &over_http, &alone]);
    for e in shown {
        tracing::warn!(error = %e, "a POST /api/v1/movements failed");
    }
    let (direct_errors, shown) = failures(&[&warm_direct, &grouped]);
    for e in shown {
        tracing::warn!(error = %e, "a direct posting failed");
    }
    let direct_rate = grouped.rate();
    let rate = over_http.rate();
    let mut lat = over_http.latencies;
    lat.sort();
    let mut lat1 = alone.latencies;
    lat1.sort();
    f.push("movements_per_sec", rate);
    f.push("latency_p50_ms", percentile(&lat, 0.5));
    f.push("latency_p99_ms", percentile(&lat, 0.99));
    f.push("latency_max_ms", percentile(&lat, 1.0));
    if b.layers > 0 {
        layers_phase(state.inventory(), &side(false), b.layers, &mut f).await?;
    }
    f.push("latency_1_p50_ms", percentile(&lat1, 0.5));
    f.push("latency_1_p99_ms", percentile(&lat1, 0.99));
    f.push("clients", clients as f64);
    f.push("articles", b.articles as f64);
    f.push("seconds", b.seconds);
    f.push("errors", (http_errors + direct_errors) as f64);
    f.push("movements", over_http.ok as f64);
    f.push("direct_per_sec", direct_rate);
    f.push(
        "http_over_direct",
        if direct_rate > 0.0 {
            rate / direct_rate
        } else {
            0.0
        },
    );
    if b.idempotency_keys {
        let keyed_rate = with_keys.rate();
        let mut keyed_lat = with_keys.latencies;
        keyed_lat.sort();
        f.push("keyed_movements_per_sec", keyed_rate);
        f.push("keyed_latency_p50_ms", percentile(&keyed_lat, 0.5));
        f.push("keyed_latency_p99_ms", percentile(&keyed_lat, 0.99));
        f.push(
            "keyed_over_unkeyed",
            if rate > 0.0 { keyed_rate / rate } else { 0.0 },
        );
        f.push("keyed_errors", keyed_errors as f64);
    }
    Ok(f)
}

/// Times one client's postings (alternately a receipt and an issue of 1, so the number of
/// layers holds) on a FIFO article with `layers` open layers and on one with a single layer,
/// interleaved: `layers_1_p50_ms` / `_p99_ms`, `layers_n_p50_ms` / `_p99_ms` and
/// `layers_n_over_1` (p50; target <= 1.5).
async fn layers_phase(
    inventory: &Inventory,
    side: &HttpSide,
    layers: usize,
    f: &mut Figures,
) -> Result<(), MovementsBenchError> {
    const SAMPLES: usize = 400;
    let w = WAREHOUSES[0];
    for (sku, count) in [("LAYERS-ONE", 1usize), ("LAYERS-MANY", layers)] {
        let article = NewArticle::parse(sku, sku, None, Some("fifo"), None, None, None)?;
        inventory.create_article(&article).await?;
        // One layer of 1,000,000 units, or `layers` layers of one unit (costs vary, so none
        // merge).
        let receipts: Vec<NewMovement> = if count == 1 {
            vec![NewMovement::parse(
                "receipt",
                sku,
                w,
                None,
                Decimal::from(1_000_000),
                Some(Decimal::ONE),
                None,
                None,
            )?]
        } else {
            (0..count)
                .map(|i| {
                    NewMovement::parse(
                        "receipt",
                        sku,
                        w,
                        None,
                        Decimal::ONE,
                        Some(Decimal::from(1 + i % 97)),
                        None,
                        None,
                    )
                })
                .collect::<Result<_, _>>()?
        };
        for chunk in receipts.chunks(1000) {
            inventory.post_batch(chunk, "bench").await?;
        }
    }
    let (mut one, mut many) = (Vec::new(), Vec::new());
    for i in 0..SAMPLES {
        for (sku, out) in [("LAYERS-ONE", &mut one), ("LAYERS-MANY", &mut many)] {
            let body = if i % 2 == 0 {
                format!(
                    r#"{{"type":"receipt","sku":"{sku}","warehouse":"{w}","qty":"1","unit_cost":"{}"}}"#,
                    1 + i % 89
                )
            } else {
                format!(r#"{{"type":"issue","sku":"{sku}","warehouse":"{w}","qty":"1"}}"#)
            };
            let start = Instant::now();
            let resp = side
                .client
                .post(&side.url)
                .header(reqwest::header::AUTHORIZATION, &side.bearer)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| MovementsBenchError::Setup(format!("layers posting: {e}")))?;
            let status = resp.status();
            let _answer = resp.bytes().await;
            if status != reqwest::StatusCode::CREATED {
                return Err(MovementsBenchError::Setup(format!(
                    "layers posting on {sku}: {status}"
                )));
            }
            // The first few warm the article's balance up.
            if i >= 10 {
                out.push(start.elapsed());
            }
        }
    }
    one.sort();
    many.sort();
    let (p1, pn) = (percentile(&one, 0.5), percentile(&many, 0.5));
    f.push("layers", layers as f64);
    f.push("layers_1_p50_ms", p1);
    f.push("layers_1_p99_ms", percentile(&one, 0.99));
    f.push("layers_n_p50_ms", pn);
    f.push("layers_n_p99_ms", percentile(&many, 0.99));
    f.push("layers_n_over_1", if p1 > 0.0 { pn / p1 } else { 0.0 });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pick_parses_and_its_body_is_json() {
        let mut rng = Rng(7);
        for n in 0..1000 {
            let p = Pick::draw(&mut rng, 64, 3, n);
            assert!(p.movement().is_ok(), "{p:?}");
            let v: Result<serde_json::Value, _> = serde_json::from_str(&p.json());
            assert!(v.is_ok(), "{}", p.json());
        }
    }
}
