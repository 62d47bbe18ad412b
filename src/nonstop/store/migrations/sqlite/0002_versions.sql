-- Rolling deploys: where a new run is routed (canary share) and which nodes are alive.

ALTER TABLE runs ADD COLUMN route REAL NOT NULL DEFAULT 0.5;

CREATE TABLE nodes (
    id           TEXT PRIMARY KEY,
    app          TEXT NOT NULL,
    version      TEXT NOT NULL,
    canary_share REAL NOT NULL DEFAULT 0,
    hostname     TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   REAL NOT NULL,
    last_seen    REAL NOT NULL
) WITHOUT ROWID;

CREATE INDEX runs_version ON runs (app_version, status);
