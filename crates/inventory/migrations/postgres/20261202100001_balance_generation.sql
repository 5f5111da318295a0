-- A counter that every committed change of balances or articles bumps in its own transaction
-- (on SQLite once per group commit), so a process holding balances in a cache (`serve`) sees
-- another process's postings (`malaka worker`) without waiting for the cache to expire.
-- PostgreSQL nodes learn of changes from the outbox's NOTIFY instead (one row every posting
-- updated would serialize them).
CREATE TABLE inv_generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  BIGINT  NOT NULL
);
INSERT INTO inv_generation (id, n) VALUES (1, 0);
