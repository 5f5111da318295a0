//! Black-box tests of the malaka server through its HTTP API, WebSocket, CLI and processes:
//! one test binary with a module per area, so a change links one binary, not thirteen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod auth;
mod common;
mod crash;
mod dashboard;
mod events;
mod health;
mod inventory;
mod jobs;
mod live;
mod notify;
mod process;
mod reports;
mod security;
mod sqs;
mod trust;
