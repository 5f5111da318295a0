-- FIFO layers as rows: a posting touches only the layers it consumes or adds, instead of
-- rewriting one JSON value of every open layer. Each consumption is recorded against the ledger
-- row that consumed it. The layers of existing balances are carried over, oldest first.
CREATE TABLE inv_layers (
    sku         TEXT NOT NULL,
    warehouse   TEXT NOT NULL,
    -- Position in the balance's FIFO order (allocated from inv_balances.layer_seq).
    seq         INTEGER NOT NULL,
    -- Quantity left ('0' once consumed; kept for the consumptions that name it).
    qty         TEXT NOT NULL,
    rate        TEXT NOT NULL,
    received_at TEXT,
    -- The ledger row that brought it in (NULL for layers carried over from before).
    ledger_id   INTEGER,
    PRIMARY KEY (sku, warehouse, seq)
);
CREATE INDEX inv_layers_open ON inv_layers (sku, warehouse, seq) WHERE qty <> '0';

CREATE TABLE inv_layer_uses (
    ledger_id INTEGER NOT NULL,
    sku       TEXT NOT NULL,
    warehouse TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    qty       TEXT NOT NULL,
    rate      TEXT NOT NULL,
    PRIMARY KEY (ledger_id, seq)
);
CREATE INDEX inv_layer_uses_layer ON inv_layer_uses (sku, warehouse, seq);

INSERT INTO inv_layers (sku, warehouse, seq, qty, rate, received_at, ledger_id)
SELECT b.sku, b.warehouse, CAST(j.key AS INTEGER),
       CAST(json_extract(j.value, '$.qty') AS TEXT), CAST(json_extract(j.value, '$.rate') AS TEXT),
       json_extract(j.value, '$.received_at'), NULL
FROM inv_balances b, json_each(b.layers) j;

ALTER TABLE inv_balances ADD COLUMN layer_seq INTEGER NOT NULL DEFAULT 0;
UPDATE inv_balances SET layer_seq = json_array_length(layers);
ALTER TABLE inv_balances DROP COLUMN layers;
