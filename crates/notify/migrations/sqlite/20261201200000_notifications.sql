-- Notification rules: where alerts (and finished reports) are sent. Lists are JSON arrays of
-- text; an empty list matches everything.
CREATE TABLE malaka_notification_rules (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL,
    channel    TEXT    NOT NULL CHECK (channel IN ('email', 'webhook')),
    target     TEXT    NOT NULL,
    secret     TEXT,
    warehouses TEXT    NOT NULL DEFAULT '[]',
    skus       TEXT    NOT NULL DEFAULT '[]',
    min_level  TEXT    NOT NULL DEFAULT 'LOW' CHECK (min_level IN ('LOW', 'CRITICAL', 'OUT_OF_STOCK')),
    events     TEXT    NOT NULL DEFAULT '["stock_alert"]',
    enabled    BOOLEAN NOT NULL DEFAULT TRUE,
    created_by TEXT    NOT NULL,
    created_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL
);
