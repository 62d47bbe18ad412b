-- Runs, their step records, failed attempts and incidents.
-- Timestamps are UTC epoch seconds (REAL); JSON payloads are TEXT.

CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    agent            TEXT NOT NULL,
    status           TEXT NOT NULL,
    input            TEXT NOT NULL,
    output           TEXT,
    error            TEXT,
    attempt          INTEGER NOT NULL DEFAULT 1,
    priority         INTEGER NOT NULL DEFAULT 0,
    app_version      TEXT,
    parent_id        TEXT,
    -- when someone must next act on the run: claim it (pending, sleeping) or recover it
    -- (running, once the lease expires); NULL when nothing is due
    due_at           REAL,
    wake_at          REAL,
    wait_reason      TEXT,
    lease_owner      TEXT,
    lease_expires    REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    heartbeat_at     REAL,
    heartbeat        TEXT,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL
) WITHOUT ROWID;

CREATE INDEX runs_due ON runs (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX runs_created ON runs (created_at);
CREATE INDEX runs_agent_status ON runs (agent, status);
CREATE INDEX runs_status ON runs (status, created_at);
CREATE INDEX runs_lease_owner ON runs (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE steps (
    run_id      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL,
    payload     TEXT NOT NULL,
    checksum    TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    started_at  REAL NOT NULL,
    finished_at REAL NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

CREATE TABLE step_attempts (
    run_id      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    run_attempt INTEGER NOT NULL,  -- the run's attempt during which this try happened
    attempt     INTEGER NOT NULL,
    name        TEXT NOT NULL,
    error       TEXT NOT NULL,
    started_at  REAL NOT NULL,
    finished_at REAL NOT NULL,
    retry_at    REAL,
    PRIMARY KEY (run_id, seq, run_attempt, attempt)
) WITHOUT ROWID;

CREATE TABLE incidents (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  TEXT,
    agent   TEXT,
    kind    TEXT NOT NULL,
    detail  TEXT NOT NULL,
    at      REAL NOT NULL
);

CREATE INDEX incidents_run ON incidents (run_id, id);
