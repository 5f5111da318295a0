//! Black-box tests of the `malaka` binary as users and operators run it: `serve` (zero
//! configuration, SIGTERM, SIGKILL and restart, the bootstrap token, secrets), `worker`, `jobs`,
//! `token`, `notify`, `inbox`, `verify`, `config` and `bench`. One test binary with a module per
//! area; the harness that starts a server in process is the server's own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod auth;
#[path = "../../../server/tests/it/common/mod.rs"]
mod common;
mod crash;
mod jobs;
mod live;
mod notify;
mod process;
mod security;
mod sqs;
mod verify;
