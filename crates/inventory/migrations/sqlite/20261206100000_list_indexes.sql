-- Every filtered list reads an index in the order it answers, so a page costs the same on a
-- ledger of a thousand rows or of millions.
CREATE INDEX inv_ledger_sku ON inv_ledger (sku, id);
CREATE INDEX inv_ledger_posted ON inv_ledger (posted_at, id);
DROP INDEX inv_balances_level;
CREATE INDEX inv_balances_level ON inv_balances (level, sku, warehouse);
CREATE INDEX inv_alerts_level ON inv_alerts (level, id);
CREATE INDEX inv_alerts_warehouse ON inv_alerts (warehouse, id);
CREATE INDEX inv_alerts_open_id ON inv_alerts (id) WHERE cleared_at IS NULL;
CREATE INDEX inv_alerts_cleared_id ON inv_alerts (id) WHERE cleared_at IS NOT NULL;
CREATE INDEX malaka_inbox_source ON malaka_inbox (source, id);
