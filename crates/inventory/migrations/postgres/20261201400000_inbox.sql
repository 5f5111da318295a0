-- Messages from other systems (SQS): one row per message id, written in the same transaction as
-- the postings it caused (outcome `processed`), or alone for one that caused none (`ignored`,
-- `malformed`, `refused`). A message seen again changes nothing.
CREATE TABLE malaka_inbox (
    id          TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('processed', 'ignored', 'malformed', 'refused')),
    error       TEXT,
    movements   TEXT NOT NULL DEFAULT '[]',
    received_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX malaka_inbox_received ON malaka_inbox (received_at);
