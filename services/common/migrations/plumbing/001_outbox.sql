-- Applied to every service schema: the transactional outbox and the consumer idempotency record.
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    event_id text NOT NULL,
    event_type text NOT NULL,
    partition smallint NOT NULL,
    body bytea NOT NULL,
    correlation_id text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX outbox_partition_id ON outbox (partition, id);

CREATE TABLE processed_events (
    consumer text NOT NULL,
    event_id text NOT NULL,
    event_type text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
