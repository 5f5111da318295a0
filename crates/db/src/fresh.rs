//! A fresh PostgreSQL database: created under a unique name on a server, dropped when done.

use sqlx::Connection as _;

use crate::DbError;

/// A database created by [`FreshPostgres::create`]; [`FreshPostgres::drop_database`] removes it.
#[derive(Debug, Clone)]
pub struct FreshPostgres {
    /// The URL of the new database (the admin URL's query string kept).
    pub url: String,
    /// Its name: `<prefix>_<uuid v7>`.
    pub name: String,
    /// The server's URL the database was created through.
    pub admin: String,
}

impl FreshPostgres {
    /// Creates database `<prefix>_<uuid v7>` through `admin` (a URL of any database on the
    /// server, such as `postgres://postgres@127.0.0.1:5432/test`).
    ///
    /// # Errors
    /// The server cannot be reached or refuses to create the database.
    pub async fn create(admin: &str, prefix: &str) -> Result<Self, DbError> {
        let mut conn = sqlx::PgConnection::connect(admin).await?;
        let name = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        let _closed = conn.close().await;
        Ok(Self {
            url: with_database(admin, &name),
            name,
            admin: admin.to_owned(),
        })
    }

    /// Drops the database, closing the connections still open to it. Best effort: a server
    /// gone by now leaves it behind (its name says what made it).
    pub async fn drop_database(&self) {
        drop_database(&self.admin, &self.name).await;
    }
}

/// Drops database `name` through `admin`, closing the connections still open to it; best
/// effort.
pub async fn drop_database(admin: &str, name: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
        let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
        if let Err(e) = dropped {
            tracing::warn!(database = name, error = %e, "dropping a fresh database failed");
        }
        let _closed = conn.close().await;
    }
}

/// `url` with its database name replaced by `name`, its query string kept.
#[must_use]
pub fn with_database(url: &str, name: &str) -> String {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let base = path.rsplit_once('/').map_or(path, |(b, _)| b);
    if query.is_empty() {
        format!("{base}/{name}")
    } else {
        format!("{base}/{name}?{query}")
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_is_replaced_and_the_query_kept() {
        assert_eq!(
            with_database("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
