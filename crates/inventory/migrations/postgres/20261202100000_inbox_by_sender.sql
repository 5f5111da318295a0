-- The inbox keyed by (source, message id): two senders that number their messages alike no
-- longer collide. A command refused for a reason that can change (insufficient stock, an
-- unknown article) is `retrying` and keeps every attempt's reason in `errors`; after its
-- attempts it is `parked` (or `dead_lettered` when the queue's redrive policy took it first).
-- Final states: processed, ignored, malformed, refused, parked, dead_lettered.
CREATE TABLE malaka_inbox_v2 (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('processed', 'ignored', 'malformed', 'refused',
                                               'retrying', 'parked', 'dead_lettered')),
    attempts    INTEGER NOT NULL DEFAULT 1,
    errors      TEXT NOT NULL DEFAULT '[]',
    movements   TEXT NOT NULL DEFAULT '[]',
    received_at TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (source, message_id)
);
INSERT INTO malaka_inbox_v2
    (source, message_id, kind, payload, state, attempts, errors, movements, received_at, updated_at)
SELECT source, id, kind, payload, outcome, 1,
       CASE WHEN error IS NULL THEN '[]'
            ELSE json_build_array(json_build_object('at', received_at, 'error', error))::text END,
       movements, received_at, received_at
FROM malaka_inbox ORDER BY received_at;
DROP TABLE malaka_inbox;
ALTER TABLE malaka_inbox_v2 RENAME TO malaka_inbox;
CREATE INDEX malaka_inbox_received ON malaka_inbox (received_at);
CREATE INDEX malaka_inbox_state ON malaka_inbox (state, id);
