-- Pause requests: a running run is flagged and parks as `paused` at its next step boundary.
-- A column of its own beside cancel_requested, so that nodes of the previous version keep
-- working on the same database during a rolling deploy (a cancel overrides a pause).

ALTER TABLE runs ADD COLUMN pause_requested INTEGER NOT NULL DEFAULT 0;
