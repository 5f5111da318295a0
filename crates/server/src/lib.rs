//! Malaka's server crate: configuration, the HTTP API, telemetry, the database connection, the job
//! queue's wiring and the benchmark suites behind the `malaka` binary. The only crate that knows
//! HTTP.

pub mod app;
pub mod auth;
pub mod bench;
pub mod bench_alerts;
pub mod bench_ceiling;
pub mod bench_jobs;
pub mod bench_movements;
pub mod bench_notify;
pub mod bench_reports;
pub mod bench_sqs;
pub mod config;
pub mod db;
pub mod http;
pub mod inbox_cli;
pub mod input;
pub mod jobs;
pub mod limit;
pub mod live;
pub mod notify;
pub mod reports;
pub mod secret;
pub mod sqs;
pub mod telemetry;

pub use app::{AppState, Application, ServerError};
pub use config::Config;
