//! Test harness: `spawn_app()` starts the real server on port 0 with a fresh database (an SQLite
//! file in a temporary folder, or a new PostgreSQL database) and hands back its address. Shared by
//! the server's tests and the binary's (crates/cli/tests/it/main.rs includes it by path).
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

pub mod smtp;
pub mod sqs;

use std::net::SocketAddr;
use std::time::Duration;

use malaka_server::{AppState, Application, Config};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests use: `MALAKA_TEST_POSTGRES_URL`, else the local one.
pub fn postgres_admin_url() -> String {
    std::env::var("MALAKA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether this is a CI run (where every optional test dependency must be present).
pub fn in_ci_pub() -> bool {
    in_ci()
}

/// A fresh PostgreSQL database, or `None` when no server answers outside CI. Under CI a missing
/// server fails the test: PostgreSQL tests always run there.
pub async fn fresh_postgres() -> Option<(String, String)> {
    let admin = postgres_admin_url();
    match malaka_db::FreshPostgres::create(&admin, "malaka_test").await {
        Ok(db) => Some((db.url, db.name)),
        Err(e) if !in_ci() => {
            eprintln!("skipping PostgreSQL test: {admin} unreachable ({e})");
            None
        }
        Err(e) => panic!("PostgreSQL at {admin} is required under CI: {e}"),
    }
}

/// Drops a database made by [`fresh_postgres`] (connections still open are closed).
pub async fn drop_postgres(name: &str) {
    malaka_db::fresh::drop_database(&postgres_admin_url(), name).await;
}

/// A running server.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub state: AppState,
    pub backend: Backend,
    /// The database it runs on, as `--database-url` takes it.
    pub database_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), malaka_server::ServerError>>>,
    pg_database: Option<String>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// A new token with `role`, created directly in this server's database.
    pub async fn token(&self, role: malaka_server::auth::Role) -> String {
        self.state
            .auth()
            .tokens
            .create(&format!("test {role}"), role)
            .await
            .expect("create token")
            .token
            .expose()
            .to_owned()
    }

    /// A new admin token, created directly in this server's database.
    pub async fn admin_token(&self) -> String {
        self.token(malaka_server::auth::Role::Admin).await
    }

    /// GET `path` with `token` as bearer.
    pub async fn get_as(&self, token: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// POST `body` as JSON to `path` with `token` as bearer.
    pub async fn post_json(
        &self,
        token: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// DELETE `path` with `token` as bearer.
    pub async fn delete_as(&self, token: &str, path: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// Stops the server as SIGTERM would and waits for it; drops a PostgreSQL test database.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops within 10 s")
                .expect("server task")
                .expect("server result");
        }
        if let Some(db) = self.pg_database.take() {
            drop_postgres(&db).await;
        }
    }
}

/// Starts the server on SQLite.
pub async fn spawn_app() -> TestApp {
    spawn_app_on(Backend::Sqlite)
        .await
        .expect("SQLite is always available")
}
/// Makes `async fn $body(app: &TestApp)` two tests, `$body::sqlite` and `$body::postgres`, each
/// on a fresh app (configured by `$tweak`, an `FnOnce(&mut Config)`, when one is given).
macro_rules! on_both {
    ($body:ident) => {
        $crate::common::on_both!($body, |_| {});
    };
    ($body:ident, $tweak:expr) => {
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let backend = $crate::common::Backend::Sqlite;
                if let Some(app) = $crate::common::spawn_app_with(backend, $tweak).await {
                    super::$body(&app).await;
                    app.stop().await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let backend = $crate::common::Backend::Postgres;
                if let Some(app) = $crate::common::spawn_app_with(backend, $tweak).await {
                    super::$body(&app).await;
                    app.stop().await;
                }
            }
        }
    };
}
pub(crate) use on_both;

/// Starts the server on `backend`; `None` when that backend is unavailable outside CI.
pub async fn spawn_app_on(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {}).await
}

/// Starts another node on the same database as `first` (a PostgreSQL one, for several-node
/// tests), with `tweak` applied; stopping it leaves the database to `first`.
pub async fn spawn_node_like(first: &TestApp, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.database.url = first.database_url.clone();
    tweak(&mut config);
    start(config, first.backend, None, dir).await
}

async fn start(
    config: Config,
    backend: Backend,
    pg_database: Option<String>,
    dir: tempfile::TempDir,
) -> TestApp {
    let database_url = config.database_url();
    let app = Application::build(&config).await.expect("app builds");
    let addr = app.local_addr().expect("addr");
    let state = app.state().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        client: reqwest::Client::new(),
        state,
        backend,
        database_url,
        stop: Some(tx),
        task: Some(task),
        pg_database,
        _dir: dir,
    }
}

/// Starts the server on `backend` after `tweak` adjusts its configuration.
pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<TestApp> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    let mut pg_database = None;
    if backend == Backend::Postgres {
        let (url, name) = fresh_postgres().await?;
        config.database.url = url;
        pg_database = Some(name);
    }
    tweak(&mut config);
    Some(start(config, backend, pg_database, dir).await)
}
