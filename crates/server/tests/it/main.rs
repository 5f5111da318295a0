//! Black-box tests of the malaka server through its HTTP API and WebSocket, started in process:
//! one test binary with a module per area, so a change links one binary, not eleven. (What runs
//! the `malaka` binary is tested in crates/cli/tests/it/.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod auth;
mod common;
mod contract;
mod dashboard;
mod events;
mod health;
mod inventory;
mod jobs;
mod live;
mod notify;
mod paging;
mod reports;
mod security;
mod sqs;
mod trust;
