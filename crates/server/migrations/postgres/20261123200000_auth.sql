-- API tokens: only the SHA-256 hex hash of each secret is stored.
CREATE TABLE malaka_tokens (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'manager', 'clerk', 'viewer')),
    hash         TEXT NOT NULL UNIQUE,
    created_at   TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);

-- Idempotency-Key reservations and stored answers, per token; status is NULL while in progress.
CREATE TABLE malaka_idempotency (
    token_id     BIGINT NOT NULL REFERENCES malaka_tokens (id) ON DELETE CASCADE,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status       INTEGER,
    body         BYTEA,
    content_type TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (token_id, key)
);
CREATE INDEX malaka_idempotency_created_at ON malaka_idempotency (created_at);
