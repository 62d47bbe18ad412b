-- Runs, their step records, failed attempts and incidents.
-- Timestamps are UTC epoch seconds (double precision), as in every backend; JSON payloads
-- are text, stored verbatim so that checksums cover exactly the bytes written.

CREATE TABLE runs (
    id               text PRIMARY KEY,
    agent            text NOT NULL,
    status           text NOT NULL,
    input            text NOT NULL,
    output           text,
    error            text,
    attempt          integer NOT NULL DEFAULT 1,
    priority         integer NOT NULL DEFAULT 0,
    app_version      text,
    parent_id        text,
    -- when someone must next act on the run: claim it (pending, sleeping) or recover it
    -- (running, once the lease expires); NULL when nothing is due
    due_at           double precision,
    wake_at          double precision,
    wait_reason      text,
    lease_owner      text,
    lease_expires    double precision,
    cancel_requested boolean NOT NULL DEFAULT false,
    heartbeat_at     double precision,
    heartbeat        text,
    created_at       double precision NOT NULL,
    updated_at       double precision NOT NULL,
    started_at       double precision,
    finished_at      double precision
);

CREATE INDEX runs_due ON runs (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX runs_created ON runs (created_at);
CREATE INDEX runs_agent_status ON runs (agent, status);
CREATE INDEX runs_status ON runs (status, created_at);
CREATE INDEX runs_lease_owner ON runs (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE steps (
    run_id      text NOT NULL,
    seq         integer NOT NULL,
    name        text NOT NULL,
    status      text NOT NULL,
    payload     text NOT NULL,
    checksum    text NOT NULL,
    attempts    integer NOT NULL,
    started_at  double precision NOT NULL,
    finished_at double precision NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE step_attempts (
    run_id      text NOT NULL,
    seq         integer NOT NULL,
    run_attempt integer NOT NULL,
    attempt     integer NOT NULL,
    name        text NOT NULL,
    error       text NOT NULL,
    started_at  double precision NOT NULL,
    finished_at double precision NOT NULL,
    retry_at    double precision,
    PRIMARY KEY (run_id, seq, run_attempt, attempt)
);

CREATE TABLE incidents (
    id      bigserial PRIMARY KEY,
    run_id  text,
    agent   text,
    kind    text NOT NULL,
    detail  text NOT NULL,
    at      double precision NOT NULL
);

CREATE INDEX incidents_run ON incidents (run_id, id);
