-- Triggers and pipelines: signals for waiting runs, stored events, schedule bookkeeping.

ALTER TABLE runs ADD COLUMN scheduled_at double precision;

CREATE INDEX runs_parent ON runs (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE signals (
    id           bigserial PRIMARY KEY,
    run_id       text NOT NULL,
    name         text NOT NULL,
    payload      text NOT NULL,
    created_at   double precision NOT NULL,
    consumed_at  double precision,
    consumed_seq integer
);

CREATE INDEX signals_pending ON signals (run_id, name, id) WHERE consumed_at IS NULL;

CREATE TABLE events (
    id            text PRIMARY KEY,
    topic         text NOT NULL,
    payload       text NOT NULL,
    created_at    double precision NOT NULL,
    dispatched_at double precision
);

CREATE INDEX events_undispatched ON events (created_at) WHERE dispatched_at IS NULL;

CREATE TABLE schedules (
    agent        text PRIMARY KEY,
    spec         text NOT NULL,
    anchor_at    double precision NOT NULL,
    last_fire_at double precision,
    updated_at   double precision NOT NULL
);
