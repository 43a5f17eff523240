-- A scratch schema for the backbone tests: each handled TestPing leaves one row.
CREATE TABLE effects (
    id bigserial PRIMARY KEY,
    run text NOT NULL,
    account_id text NOT NULL,
    n integer NOT NULL,
    event_id text NOT NULL
);
CREATE INDEX effects_run ON effects (run);
CREATE TABLE failures (event_id text PRIMARY KEY, count integer NOT NULL);
