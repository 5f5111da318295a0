-- Durable jobs. Times are Unix microseconds (UTC).
CREATE TABLE malaka_jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    queue            TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    payload          TEXT    NOT NULL DEFAULT '{}',
    priority         INTEGER NOT NULL DEFAULT 0,
    state            TEXT    NOT NULL CHECK (state IN ('available', 'scheduled', 'running', 'retryable', 'completed', 'discarded', 'cancelled')),
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,
    lease_expires_at INTEGER,
    locked_by        TEXT,
    unique_key       TEXT,
    tags             TEXT    NOT NULL DEFAULT '[]',
    errors           TEXT    NOT NULL DEFAULT '[]',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    attempted_at     INTEGER,
    finished_at      INTEGER
);

-- What workers claim: runnable jobs by queue, most urgent first (lower priority value first).
CREATE INDEX malaka_jobs_fetch ON malaka_jobs (queue, priority, run_at, id)
    WHERE state IN ('available', 'scheduled', 'retryable');
-- One unfinished job per unique key.
CREATE UNIQUE INDEX malaka_jobs_unique ON malaka_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('available', 'scheduled', 'running', 'retryable');
-- The rescuer's scan for expired leases.
CREATE INDEX malaka_jobs_lease ON malaka_jobs (lease_expires_at) WHERE state = 'running';

-- The last tick each cron entry enqueued: claiming a tick is a conditional update, so exactly one
-- node enqueues it.
CREATE TABLE malaka_cron (
    name      TEXT PRIMARY KEY NOT NULL,
    last_tick INTEGER NOT NULL
);
