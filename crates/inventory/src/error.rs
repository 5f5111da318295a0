//! `InventoryError`: everything the inventory domain and its store can refuse or fail with.

use rust_decimal::Decimal;

/// An inventory operation's failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InventoryError {
    /// An input is invalid; `field` names it.
    #[error("{message}")]
    Invalid {
        /// The offending field.
        field: String,
        /// What is wrong, for a person.
        message: String,
    },
    /// The thing does not exist.
    #[error("{what} {key:?} not found")]
    NotFound {
        /// `article` or `warehouse`.
        what: &'static str,
        /// Its key.
        key: String,
    },
    /// A unique key is taken (`duplicate_sku`, `duplicate_warehouse`).
    #[error("{message}")]
    Conflict {
        /// Machine-readable code.
        code: &'static str,
        /// What is wrong, for a person.
        message: String,
    },
    /// The movement would take stock below zero.
    #[error(
        "insufficient stock of {sku} in {warehouse}: {available} available, {requested} requested"
    )]
    InsufficientStock {
        /// Article.
        sku: String,
        /// Warehouse.
        warehouse: String,
        /// Quantity in stock.
        available: Decimal,
        /// Quantity asked for.
        requested: Decimal,
    },
    /// A stored value could not be read back (a bug or a hand-edited database).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The posting could not be committed (the database failed); nothing of it was written.
    #[error("{0}")]
    Unavailable(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// JSON (de)serialization failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl InventoryError {
    /// A refusal of the request (invalid, missing, conflicting, not enough stock), as opposed to
    /// a failure of the database.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Invalid { .. }
                | Self::NotFound { .. }
                | Self::Conflict { .. }
                | Self::InsufficientStock { .. }
        )
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}
