-- Rolling deploys: where a new run is routed (canary share) and which nodes are alive.

ALTER TABLE runs ADD COLUMN route double precision NOT NULL DEFAULT 0.5;

CREATE TABLE nodes (
    id           text PRIMARY KEY,
    app          text NOT NULL,
    version      text NOT NULL,
    canary_share double precision NOT NULL DEFAULT 0,
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    started_at   double precision NOT NULL,
    last_seen    double precision NOT NULL
);

CREATE INDEX runs_version ON runs (app_version, status);
