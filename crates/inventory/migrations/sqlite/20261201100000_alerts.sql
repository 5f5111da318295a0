-- Publishing the outbox: the relay gives each event it has handed on a sequence number in the
-- order it published them (`seq`, what WebSocket clients resume from), and stock alerts.

ALTER TABLE malaka_outbox ADD COLUMN seq INTEGER;
CREATE UNIQUE INDEX malaka_outbox_seq ON malaka_outbox (seq) WHERE seq IS NOT NULL;
CREATE INDEX malaka_outbox_published_at ON malaka_outbox (published_at) WHERE published_at IS NOT NULL;

-- One row per alert: raised when a balance leaves NORMAL, its level moved while it is open,
-- cleared when the balance is NORMAL again. `last_event` is the outbox event (or, for the
-- sweep, the newest event at the time) that last changed it: older events are not applied again.
CREATE TABLE inv_alerts (
    id              INTEGER PRIMARY KEY,
    sku             TEXT    NOT NULL,
    warehouse       TEXT    NOT NULL,
    level           TEXT    NOT NULL CHECK (level IN ('LOW', 'CRITICAL', 'OUT_OF_STOCK')),
    qty             TEXT    NOT NULL,
    min_qty         TEXT    NOT NULL,
    raised_at       TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    cleared_at      TEXT,
    acknowledged_by TEXT,
    acknowledged_at TEXT,
    last_event      INTEGER NOT NULL
);
CREATE UNIQUE INDEX inv_alerts_open ON inv_alerts (sku, warehouse) WHERE cleared_at IS NULL;
CREATE INDEX inv_alerts_key ON inv_alerts (sku, warehouse, id);
