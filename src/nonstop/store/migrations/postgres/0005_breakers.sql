-- Circuit breakers: one shared state per breaker name, for every run and node.

CREATE TABLE breakers (
    name       text PRIMARY KEY,
    state      text NOT NULL,
    failures   integer NOT NULL,
    opened_at  double precision,
    trials     integer NOT NULL,
    updated_at double precision NOT NULL
);
