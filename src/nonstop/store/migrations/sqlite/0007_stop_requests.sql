-- One column says what an operator asked of a running run: 0 nothing, 1 cancel, 2 pause
-- (at its next step boundary). A cancel overrides a pause, never the reverse.

ALTER TABLE runs RENAME COLUMN cancel_requested TO stop_requested;
