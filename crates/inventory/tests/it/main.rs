//! Integration tests of malaka-inventory through its own API, no HTTP: the storage conformance
//! suite (every case on SQLite and on PostgreSQL) and the SQLite group commit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod conformance;
mod group;
mod layers_migration;
