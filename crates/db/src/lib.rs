//! Database plumbing shared by every Malaka crate that stores, below the domain crates.
//!
//! - [`pool`]: [`Database`], the one pool type over SQLite and PostgreSQL, and `on_pool!`.
//! - [`leader`]: one node at a time on PostgreSQL (an advisory lock held by a connection).
//! - [`fresh`]: a new, uniquely named PostgreSQL database for a test or a benchmark run.
//! - [`secret`]: [`Secret`], a string that never shows itself in `Debug`, logs or output (the
//!   database URL's password is one; so are SMTP passwords and webhook secrets).

pub mod fresh;
pub mod leader;
pub mod pool;
pub mod secret;

pub use pool::Database;
pub use secret::Secret;

pub use fresh::FreshPostgres;
pub use leader::{Leader, leader_lock};

/// What can go wrong here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The database refused or could not be reached.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}
