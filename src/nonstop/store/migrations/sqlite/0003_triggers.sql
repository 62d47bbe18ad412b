-- Triggers and pipelines: signals for waiting runs, stored events, schedule bookkeeping.

ALTER TABLE runs ADD COLUMN scheduled_at REAL;

CREATE INDEX runs_parent ON runs (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE signals (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id       TEXT NOT NULL,
    name         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   REAL NOT NULL,
    consumed_at  REAL,
    consumed_seq INTEGER
);

CREATE INDEX signals_pending ON signals (run_id, name, id) WHERE consumed_at IS NULL;

CREATE TABLE events (
    id            TEXT PRIMARY KEY,
    topic         TEXT NOT NULL,
    payload       TEXT NOT NULL,
    created_at    REAL NOT NULL,
    dispatched_at REAL
) WITHOUT ROWID;

CREATE INDEX events_undispatched ON events (created_at) WHERE dispatched_at IS NULL;

CREATE TABLE schedules (
    agent        TEXT PRIMARY KEY,
    spec         TEXT NOT NULL,
    anchor_at    REAL NOT NULL,
    last_fire_at REAL,
    updated_at   REAL NOT NULL
) WITHOUT ROWID;
