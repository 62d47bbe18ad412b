-- Circuit breakers: one shared state per breaker name, for every run and node.

CREATE TABLE breakers (
    name       TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    failures   INTEGER NOT NULL,
    opened_at  REAL,
    trials     INTEGER NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
