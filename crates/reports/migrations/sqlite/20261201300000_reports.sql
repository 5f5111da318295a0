-- Reports: one row per request, its file in chunks (so any node can serve the download).
CREATE TABLE malaka_reports (
    id           TEXT    PRIMARY KEY,
    kind         TEXT    NOT NULL,
    params       TEXT    NOT NULL,
    format       TEXT    NOT NULL CHECK (format IN ('csv', 'json')),
    state        TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    progress     INTEGER NOT NULL DEFAULT 0,
    rows         INTEGER,
    bytes        INTEGER,
    summary      TEXT,
    error        TEXT,
    token_id     INTEGER NOT NULL,
    requested_by TEXT    NOT NULL,
    job_id       INTEGER,
    created_at   TEXT    NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    expires_at   TEXT
);
CREATE INDEX malaka_reports_created ON malaka_reports (created_at);
CREATE INDEX malaka_reports_expires ON malaka_reports (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE malaka_report_chunks (
    report_id TEXT    NOT NULL REFERENCES malaka_reports (id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL,
    data      BLOB    NOT NULL,
    PRIMARY KEY (report_id, seq)
);
