//! The running application: its shared state, startup (database, pools, bus, listener) and
//! orderly shutdown within the configured time.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use malaka_runtime::{EventBus, WorkerPool};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::{Database, DbError};
use crate::telemetry;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Database(#[from] DbError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A worker pool's configuration is invalid.
    #[error("pool configuration: {0}")]
    Pool(#[from] malaka_runtime::Error),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Serve(std::io::Error),
}

struct Inner {
    db: Database,
    pools: Vec<WorkerPool>,
    bus: EventBus,
    metrics: PrometheusHandle,
    installation_id: String,
    shutting_down: AtomicBool,
}

/// What every request handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("backend", &self.inner.db.backend())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The database.
    pub fn db(&self) -> &Database {
        &self.inner.db
    }
    /// The event bus.
    pub fn bus(&self) -> &EventBus {
        &self.inner.bus
    }
    /// Every worker pool the server runs.
    pub fn pools(&self) -> &[WorkerPool] {
        &self.inner.pools
    }
    /// The metrics recorder's handle.
    pub fn metrics(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }
    /// This installation's id.
    pub fn installation_id(&self) -> &str {
        &self.inner.installation_id
    }
    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }
    /// Refreshes the metrics that are read from snapshots (pools, bus).
    pub fn export_metrics(&self) {
        for pool in &self.inner.pools {
            telemetry::export_pool(&pool.metrics());
        }
        telemetry::export_bus(&self.inner.bus);
    }
}

/// A started (bound, migrated) server, ready to run.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
    shutdown_timeout: Duration,
}

impl Application {
    /// Opens and migrates the database, starts the pools and binds the listen address (port 0
    /// picks a free port).
    ///
    /// # Errors
    /// See [`ServerError`].
    pub async fn build(config: &Config) -> Result<Self, ServerError> {
        let db = Database::connect(&config.database_url(), &config.database).await?;
        db.migrate().await?;
        let installation_id = db.installation_id().await?;
        let events = WorkerPool::new(
            config
                .pools
                .events
                .to_pool_config("events", config.shutdown_timeout),
        )?;
        let bus = EventBus::new(events.clone());
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let state = AppState {
            inner: Arc::new(Inner {
                db,
                pools: vec![events],
                bus,
                metrics: telemetry::metrics_handle(),
                installation_id,
                shutting_down: AtomicBool::new(false),
            }),
        };
        Ok(Self {
            listener,
            state,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// The bound address.
    ///
    /// # Errors
    /// The socket has no local address (not expected for a bound TCP listener).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The shared state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `signal` resolves, then stops accepting, lets requests and pool work finish
    /// within the shutdown timeout, and closes the database.
    ///
    /// # Errors
    /// The HTTP server failed before the signal.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let Self {
            listener,
            state,
            shutdown_timeout,
        } = self;
        let stop = CancellationToken::new();
        let app = crate::http::router(state.clone());
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        let mut server = tokio::spawn(async move { serve.await });
        tokio::select! {
            () = signal => {}
            result = &mut server => {
                // The server stopped on its own: that is a failure.
                return match result {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(ServerError::Serve(e)),
                    Err(e) => Err(ServerError::Serve(std::io::Error::other(e))),
                };
            }
        }
        let deadline = Instant::now() + shutdown_timeout;
        tracing::info!(timeout = ?shutdown_timeout, "shutting down: no new connections, draining");
        state.inner.shutting_down.store(true, Ordering::Release);
        stop.cancel();
        if tokio::time::timeout_at(deadline, &mut server)
            .await
            .is_err()
        {
            tracing::warn!("requests still open at the shutdown deadline; closing them");
            server.abort();
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let reports =
            futures::future::join_all(
                state.inner.pools.iter().map(|p| async move {
                    (p.name().to_owned(), p.shutdown_within(remaining).await)
                }),
            )
            .await;
        for (pool, report) in reports {
            if report.abandoned > 0 {
                tracing::warn!(%pool, abandoned = report.abandoned, "pool work abandoned at shutdown");
            }
        }
        state.inner.db.close().await;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT"),
        () = term => tracing::info!("received SIGTERM"),
    }
}
