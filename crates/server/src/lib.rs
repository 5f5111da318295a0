//! Malaka's server crate: configuration, the HTTP API, telemetry, the database connection and the
//! benchmark suites behind the `malaka` binary. The only crate that knows HTTP.

pub mod app;
pub mod bench;
pub mod config;
pub mod db;
pub mod http;
pub mod telemetry;

pub use app::{AppState, Application, ServerError};
pub use config::Config;
