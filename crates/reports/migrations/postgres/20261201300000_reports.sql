-- Reports: one row per request, its file in chunks (so any node can serve the download).
CREATE TABLE malaka_reports (
    id           TEXT        PRIMARY KEY,
    kind         TEXT        NOT NULL,
    params       TEXT        NOT NULL,
    format       TEXT        NOT NULL CHECK (format IN ('csv', 'json')),
    state        TEXT        NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    progress     BIGINT      NOT NULL DEFAULT 0,
    rows         BIGINT,
    bytes        BIGINT,
    summary      TEXT,
    error        TEXT,
    token_id     BIGINT      NOT NULL,
    requested_by TEXT        NOT NULL,
    job_id       BIGINT,
    created_at   TIMESTAMPTZ NOT NULL,
    started_at   TIMESTAMPTZ,
    finished_at  TIMESTAMPTZ,
    expires_at   TIMESTAMPTZ
);
CREATE INDEX malaka_reports_created ON malaka_reports (created_at);
CREATE INDEX malaka_reports_expires ON malaka_reports (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE malaka_report_chunks (
    report_id TEXT    NOT NULL REFERENCES malaka_reports (id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL,
    data      BYTEA   NOT NULL,
    PRIMARY KEY (report_id, seq)
);
