-- Durable delivery of published outbox events to the event bus's named listeners: each
-- listener's position in publication order, and every delivery that failed: retried with
-- backoff, parked after its attempts, replayable by a person.
CREATE TABLE malaka_listener_cursors (
    listener   TEXT PRIMARY KEY,
    seq        BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE malaka_delivery_failures (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    listener        TEXT NOT NULL,
    event_key       TEXT NOT NULL,
    topic           TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('retrying', 'parked', 'resolved')),
    attempts        INTEGER NOT NULL,
    errors          TEXT NOT NULL,
    next_attempt_at TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (listener, event_key)
);
CREATE INDEX malaka_delivery_failures_due ON malaka_delivery_failures (state, next_attempt_at);
