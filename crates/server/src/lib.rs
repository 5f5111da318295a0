//! Malaka's server library: configuration, the HTTP API and WebSocket, the dashboard, auth,
//! telemetry, the database connection and the job queue's wiring, behind the `malaka` binary
//! (crates/cli) and the benchmark suites (crates/bench). The only crate that knows HTTP.

pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod http;
pub mod input;
pub mod jobs;
pub mod limit;
pub mod live;
pub mod sqs;
pub mod telemetry;

pub use app::{AppState, Application, ServerError};
pub use config::Config;
