//! Inventory domain (placeholder: the ledger arrives with the inventory issue).
//!
//! It will hold articles, warehouses, movements, the append-only ledger, balances, valuation
//! (moving average and FIFO) and alert levels, with their SQLite and PostgreSQL store. No HTTP.
