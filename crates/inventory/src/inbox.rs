//! The inbox: every message from another system (an SQS command, an event), keyed by (source,
//! message id), with what became of it. A command refused for a reason that can change waits in
//! `retrying`, keeping every attempt's reason, until it posts or is parked; a final record makes
//! a redelivery of its message a duplicate that changes nothing.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::InventoryError;

/// A message from another system, as the inbox records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    /// The sender's id for it (unique per source).
    pub id: String,
    /// Who sent it (the envelope's `source`, or the queue).
    pub source: String,
    /// Its type.
    pub kind: String,
    /// Its body, as received.
    pub payload: String,
    /// When it is processed: its data, written to the outbox under the topic `kind` in the same
    /// transaction, so the bus's listeners get it through the durable delivery path.
    pub event: Option<serde_json::Value>,
}

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboxState {
    /// Done: its postings (if any) committed with this record.
    Processed,
    /// Nobody handles its type.
    Ignored,
    /// Not an envelope.
    Malformed,
    /// Refused for good (an invalid field).
    Refused,
    /// Refused for a reason that can change (stock, an unknown article); tried again.
    Retrying,
    /// Refused on every attempt; kept for a person to replay.
    Parked,
    /// The queue's redrive policy moved it to the dead-letter queue.
    DeadLettered,
}

impl InboxState {
    /// Every state.
    pub const ALL: [Self; 7] = [
        Self::Processed,
        Self::Ignored,
        Self::Malformed,
        Self::Refused,
        Self::Retrying,
        Self::Parked,
        Self::DeadLettered,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Ignored => "ignored",
            Self::Malformed => "malformed",
            Self::Refused => "refused",
            Self::Retrying => "retrying",
            Self::Parked => "parked",
            Self::DeadLettered => "dead_lettered",
        }
    }

    /// Whether a redelivery of the message is a duplicate (everything but `retrying`).
    pub fn is_final(self) -> bool {
        self != Self::Retrying
    }

    /// Whether a person may run the message again.
    pub fn replayable(self) -> bool {
        matches!(self, Self::Parked | Self::Refused | Self::DeadLettered)
    }
}

impl FromStr for InboxState {
    type Err = InventoryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                InventoryError::invalid(
                    "state",
                    format!(
                        "state must be one of processed, ignored, malformed, refused, retrying, \
                         parked, dead_lettered, not {s:?}"
                    ),
                )
            })
    }
}

/// One attempt that did not go through, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxAttempt {
    /// When.
    pub at: DateTime<Utc>,
    /// Why.
    pub error: String,
}

/// A recorded message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboxRecord {
    /// The record's id (for the API).
    pub id: i64,
    /// Sender.
    pub source: String,
    /// The sender's id for the message.
    pub message_id: String,
    /// Type.
    pub kind: String,
    /// Body.
    pub payload: String,
    /// What became of it.
    pub state: InboxState,
    /// Deliveries handled.
    pub attempts: i32,
    /// Every attempt's reason, oldest first.
    pub errors: Vec<InboxAttempt>,
    /// The movements it posted.
    pub movements: Vec<String>,
    /// First received.
    pub received_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// Which records to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxFilter {
    /// Only this state.
    pub state: Option<InboxState>,
    /// Only this sender.
    pub source: Option<String>,
    /// Records with a smaller id (the previous page's last).
    pub before: Option<i64>,
    /// Page size (1 to 1000, default 100).
    pub limit: Option<u32>,
}

/// How to record a message that posted nothing this time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// A final state (`ignored`, `malformed`, `refused`, `dead_lettered`, or `processed` for a
    /// message without postings).
    Final(InboxState),
    /// Refused for a reason that can change: `retrying`, or `parked` once this is attempt
    /// `park_after` or later.
    Attempt {
        /// Attempts before it is parked.
        park_after: i32,
    },
}

/// What the inbox did with a record request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded; the record as it now is.
    Now(InboxRecord),
    /// The message already has a final record (a redelivery): nothing changed.
    Duplicate(InboxRecord),
}

/// The state a record moves to on a new attempt, given what it had.
pub(crate) fn next_state(disposition: Disposition, attempts: i32) -> InboxState {
    match disposition {
        Disposition::Final(s) => s,
        Disposition::Attempt { park_after } if attempts >= park_after => InboxState::Parked,
        Disposition::Attempt { .. } => InboxState::Retrying,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_only_retrying_is_not_final() {
        for s in InboxState::ALL {
            assert_eq!(s.as_str().parse::<InboxState>().unwrap(), s);
            assert_eq!(s.is_final(), s != InboxState::Retrying);
        }
        assert!("done".parse::<InboxState>().is_err());
    }

    #[test]
    fn attempts_park_at_the_limit() {
        let a = Disposition::Attempt { park_after: 3 };
        assert_eq!(next_state(a, 1), InboxState::Retrying);
        assert_eq!(next_state(a, 2), InboxState::Retrying);
        assert_eq!(next_state(a, 3), InboxState::Parked);
        assert_eq!(
            next_state(Disposition::Final(InboxState::Refused), 1),
            InboxState::Refused
        );
    }
}
