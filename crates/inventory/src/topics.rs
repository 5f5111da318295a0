//! The topics of outbox events, in one place: what postings, alerts and reports write, what the
//! bus's listeners, the WebSocket hub and the outbound SQS queue read.

/// Every posting writes one: the movement and its ledger rows.
pub const TOPIC_MOVEMENT_POSTED: &str = "movement.posted";
/// A balance's alert level changed (OUT_OF_STOCK, CRITICAL, LOW, NORMAL).
pub const TOPIC_LEVEL_CHANGED: &str = "stock.level_changed";
/// An alert was raised, escalated, eased or cleared.
pub const TOPIC_ALERT: &str = "stock.alert";
/// A report finished and can be downloaded.
pub const TOPIC_REPORT_READY: &str = "report.ready";

/// The topics sent to other systems (the outbound SQS queue).
pub const OUTBOUND_TOPICS: [&str; 3] = [TOPIC_MOVEMENT_POSTED, TOPIC_LEVEL_CHANGED, TOPIC_ALERT];
