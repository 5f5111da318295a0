-- Facts about this installation (its id, when it was created), one row per key.
CREATE TABLE malaka_meta (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
