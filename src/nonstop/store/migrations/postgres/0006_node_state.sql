-- What a node says of itself: serving or shutting down (its alarms are quiet then), and
-- how it enforces the memory limits of isolated runs.

ALTER TABLE nodes ADD COLUMN state text NOT NULL DEFAULT 'serving';
ALTER TABLE nodes ADD COLUMN memory_limits text NOT NULL DEFAULT '';
