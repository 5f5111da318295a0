-- Inventory: articles, warehouses, movements, the append-only ledger, balances, and the outbox.
-- Quantities and money are canonical decimal TEXT (SQLite has no exact decimal type); the
-- PostgreSQL schema has the same shape so one code path serves both.

CREATE TABLE inv_articles (
    sku            TEXT    PRIMARY KEY,
    name           TEXT    NOT NULL,
    unit           TEXT    NOT NULL,
    valuation      TEXT    NOT NULL CHECK (valuation IN ('moving_average', 'fifo')),
    min_qty        TEXT    NOT NULL,
    reorder_qty    TEXT    NOT NULL,
    allow_negative BOOLEAN NOT NULL DEFAULT FALSE,
    archived       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     TEXT    NOT NULL,
    updated_at     TEXT    NOT NULL
);

CREATE TABLE inv_warehouses (
    code       TEXT    PRIMARY KEY,
    name       TEXT    NOT NULL,
    archived   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL
);

CREATE TABLE inv_movements (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    sku          TEXT NOT NULL REFERENCES inv_articles (sku),
    warehouse    TEXT NOT NULL REFERENCES inv_warehouses (code),
    to_warehouse TEXT REFERENCES inv_warehouses (code),
    qty          TEXT NOT NULL,
    unit_cost    TEXT,
    reference    TEXT,
    note         TEXT,
    posted_by    TEXT NOT NULL,
    posted_at    TEXT NOT NULL
);

CREATE TABLE inv_ledger (
    id           INTEGER PRIMARY KEY,
    movement_id  TEXT NOT NULL REFERENCES inv_movements (id),
    kind         TEXT NOT NULL,
    sku          TEXT NOT NULL,
    warehouse    TEXT NOT NULL,
    qty_change   TEXT NOT NULL,
    unit_cost    TEXT NOT NULL,
    value_change TEXT NOT NULL,
    qty_after    TEXT NOT NULL,
    value_after  TEXT NOT NULL,
    rate_after   TEXT NOT NULL,
    reference    TEXT,
    posted_by    TEXT NOT NULL,
    posted_at    TEXT NOT NULL
);
CREATE INDEX inv_ledger_article ON inv_ledger (sku, warehouse, id);
CREATE INDEX inv_ledger_warehouse ON inv_ledger (warehouse, id);

CREATE TABLE inv_balances (
    sku        TEXT NOT NULL REFERENCES inv_articles (sku),
    warehouse  TEXT NOT NULL REFERENCES inv_warehouses (code),
    qty        TEXT NOT NULL,
    value      TEXT NOT NULL,
    rate       TEXT NOT NULL,
    layers     TEXT NOT NULL,
    level      TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (sku, warehouse)
);
CREATE INDEX inv_balances_warehouse ON inv_balances (warehouse, sku);
CREATE INDEX inv_balances_level ON inv_balances (level);

-- Events written in the transaction that caused them; a relay publishes them after commit.
CREATE TABLE malaka_outbox (
    id           INTEGER PRIMARY KEY,
    topic        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    published_at TEXT
);
CREATE INDEX malaka_outbox_unpublished ON malaka_outbox (id) WHERE published_at IS NULL;
