//! `Database`: the one pool type over SQLite and PostgreSQL that every storing crate takes.

use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

/// A connection pool to either backend. Cheap to clone (pools are shared handles).
#[derive(Debug, Clone)]
pub enum Database {
    /// An embedded SQLite file (WAL mode): one writer at a time.
    Sqlite(SqlitePool),
    /// A PostgreSQL server, possibly shared by several nodes.
    Postgres(PgPool),
}

impl Database {
    /// `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// The SQLite pool, if that is the backend.
    pub fn sqlite(&self) -> Option<&SqlitePool> {
        match self {
            Self::Sqlite(p) => Some(p),
            Self::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, if that is the backend.
    pub fn postgres(&self) -> Option<&PgPool> {
        match self {
            Self::Sqlite(_) => None,
            Self::Postgres(p) => Some(p),
        }
    }
}

/// Runs `$body` with `$pool` bound to the pool of `$db` (a [`Database`]), whichever backend it
/// is: for code whose SQL is the same on both.
#[macro_export]
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::Database::Sqlite($pool) => $body,
            $crate::Database::Postgres($pool) => $body,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_database_names_its_backend_and_hands_out_its_pool() {
        let db = Database::Sqlite(SqlitePool::connect("sqlite::memory:").await.unwrap());
        assert_eq!(db.backend_name(), "sqlite");
        assert!(db.sqlite().is_some() && db.postgres().is_none());
        let one: i64 =
            on_pool!(&db, p => sqlx::query_scalar("SELECT 1").fetch_one(p).await).unwrap();
        assert_eq!(one, 1);
    }
}
