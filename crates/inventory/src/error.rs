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
    /// A figure is beyond the documented limits (`MAX_QTY`, `MAX_UNIT_COST`, `MAX_VALUE`, at
    /// most 6 decimal places), given or as a posting would leave it; `field` names the input.
    #[error("{message}")]
    OutOfRange {
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
    /// One movement of a batch was refused (any of the refusals above); `index` is its place
    /// in the batch, from 0. Nothing of the batch was posted. A single posting's refusal is
    /// never wrapped.
    #[error("movement {index}: {source}")]
    InBatch {
        /// The refused movement's place in the batch, from 0.
        index: usize,
        /// The movement's field at fault when the refusal does not name one itself: `sku` (an
        /// unknown or archived article), `warehouse` or `to_warehouse`.
        field: Option<&'static str>,
        /// Why it was refused.
        source: Box<InventoryError>,
    },
    /// A stored value could not be read back (a bug or a hand-edited database).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The posting could not be committed (the database failed, or the committer is
    /// restarting); nothing of it was written and the same request may be sent again.
    #[error("{0}")]
    Unavailable(String),
    /// The posting itself failed (not the database): a bug, a panic, a stored value that cannot
    /// be read. Nothing of it was written; other postings were not affected.
    #[error("the posting failed: {0}")]
    Failed(String),
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
            self.root(),
            Self::Invalid { .. }
                | Self::OutOfRange { .. }
                | Self::NotFound { .. }
                | Self::Conflict { .. }
                | Self::InsufficientStock { .. }
        )
    }

    /// A failure of the database itself (unreachable, disk full, I/O, locked, pool exhausted)
    /// that the same request may get past later, as opposed to one of the request's own making.
    pub fn is_transient(&self) -> bool {
        match self.root() {
            Self::Unavailable(_) => true,
            Self::Database(e) => is_transient_db(e),
            _ => false,
        }
    }

    /// The same error with its field prefixed by `at` (`movements[3]`, `data.lines[1]`).
    #[must_use]
    pub fn in_field(self, at: &str) -> Self {
        let join = |field: String| match (at.trim_end_matches('.'), field.as_str()) {
            (a, "") => a.to_owned(),
            ("", _) => field,
            (a, f) => format!("{a}.{f}"),
        };
        match self {
            Self::Invalid { field, message } => Self::Invalid {
                field: join(field),
                message,
            },
            Self::OutOfRange { field, message } => Self::OutOfRange {
                field: join(field),
                message,
            },
            other => other,
        }
    }

    /// The refusal itself, without the batch position `InBatch` adds.
    pub fn root(&self) -> &Self {
        match self {
            Self::InBatch { source, .. } => source.root(),
            other => other,
        }
    }

    /// The refusal itself, owned: `InBatch` unwrapped (a batch of one is a single posting).
    #[must_use]
    pub fn into_root(self) -> Self {
        match self {
            Self::InBatch { source, .. } => source.into_root(),
            other => other,
        }
    }

    /// `self` as the refusal of the movement at `index` of a batch, naming its `field` at fault
    /// where the refusal names none: refusals are wrapped in `InBatch` (once), failures of the
    /// database are not.
    #[must_use]
    pub fn at(self, index: usize, field: Option<&'static str>) -> Self {
        match self {
            e @ Self::InBatch { .. } => e,
            e if e.is_refusal() => Self::InBatch {
                index,
                field,
                source: Box::new(e),
            },
            e => e,
        }
    }

    /// An `Invalid` error naming `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Whether a database error is a failure of the database rather than of one statement: the
/// connection or pool failed, or SQLite/PostgreSQL reported a resource, I/O or availability
/// error. Constraint violations and decoding errors are the statement's own.
pub(crate) fn is_transient_db(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if let Ok(n) = code.parse::<u32>() {
                // SQLite result codes (primary code in the low byte): BUSY 5, LOCKED 6,
                // NOMEM 7, READONLY 8, IOERR 10, CORRUPT 11, FULL 13, CANTOPEN 14,
                // PROTOCOL 15, NOTADB 26.
                matches!(n & 0xff, 5 | 6 | 7 | 8 | 10 | 11 | 13 | 14 | 15 | 26)
            } else {
                // PostgreSQL SQLSTATE classes: 08 connection, 53 resources, 57 operator
                // intervention (shutdown, cancel), 58 system (I/O), 40001/40P01 retryable.
                matches!(&code[..code.len().min(2)], "08" | "53" | "57" | "58")
                    || code == "40001"
                    || code == "40P01"
            }
        }
        _ => false,
    }
}
