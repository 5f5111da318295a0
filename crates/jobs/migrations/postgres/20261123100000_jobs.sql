-- Durable jobs.
CREATE TABLE malaka_jobs (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue            TEXT        NOT NULL,
    kind             TEXT        NOT NULL,
    payload          JSONB       NOT NULL DEFAULT '{}',
    priority         SMALLINT    NOT NULL DEFAULT 0,
    state            TEXT        NOT NULL CHECK (state IN ('available', 'scheduled', 'running', 'retryable', 'completed', 'discarded', 'cancelled')),
    attempt          INTEGER     NOT NULL DEFAULT 0,
    max_attempts     INTEGER     NOT NULL,
    run_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_expires_at TIMESTAMPTZ,
    locked_by        TEXT,
    unique_key       TEXT,
    tags             TEXT[]      NOT NULL DEFAULT '{}',
    errors           JSONB       NOT NULL DEFAULT '[]',
    cancel_requested BOOLEAN     NOT NULL DEFAULT false,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempted_at     TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ
);

CREATE INDEX malaka_jobs_fetch ON malaka_jobs (queue, priority, run_at, id)
    WHERE state IN ('available', 'scheduled', 'retryable');
CREATE UNIQUE INDEX malaka_jobs_unique ON malaka_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('available', 'scheduled', 'running', 'retryable');
CREATE INDEX malaka_jobs_lease ON malaka_jobs (lease_expires_at) WHERE state = 'running';

-- Rows churn (claimed, finished, pruned): vacuum eagerly. No index on finished_at: every index
-- costs each claim or completion an insert, and the pruner walks the primary key instead.
ALTER TABLE malaka_jobs SET (autovacuum_vacuum_scale_factor = 0.02,
                             autovacuum_vacuum_insert_scale_factor = 0.05);

-- New runnable jobs wake the workers of their queue (delivered on commit, so a job enqueued in a
-- transaction that rolls back wakes nobody).
CREATE FUNCTION malaka_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('malaka_jobs', q.queue)
    FROM (SELECT DISTINCT queue FROM new_jobs WHERE run_at <= now()) AS q;
    RETURN NULL;
END;
$$;
CREATE TRIGGER malaka_jobs_notify AFTER INSERT ON malaka_jobs
    REFERENCING NEW TABLE AS new_jobs FOR EACH STATEMENT EXECUTE FUNCTION malaka_jobs_notify();

CREATE TABLE malaka_cron (
    name      TEXT PRIMARY KEY,
    last_tick TIMESTAMPTZ NOT NULL
);
