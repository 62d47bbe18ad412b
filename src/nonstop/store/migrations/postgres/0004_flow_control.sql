-- Flow control: token buckets of rate-limited agents, shared by every node.

CREATE TABLE rate_limits (
    key        text PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at double precision NOT NULL
);
