-- The audit log: an append-only, hash-chained copy of every event on the exchange.
-- Applied with search_path = audit, so unqualified names land in the audit schema.

-- One row: the last appended seq and hash. Appenders lock it FOR UPDATE, which serialises
-- appends across workers and processes and makes "seq = head + 1" safe.
CREATE TABLE chain_head (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq bigint NOT NULL,
    hash bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO chain_head (id, seq, hash) VALUES (true, 0, decode(repeat('00', 32), 'hex'));

CREATE TABLE events (
    seq bigint PRIMARY KEY,
    event_id text NOT NULL UNIQUE,
    event_type text NOT NULL,
    event_time timestamptz NOT NULL,
    company_id text,
    subject text,
    recorded_at timestamptz NOT NULL,
    -- canonical JSON of the envelope with sensitive fields redacted; kept as text so that the
    -- bytes that were hashed are the bytes that are stored
    envelope text NOT NULL,
    prev_hash bytea NOT NULL,
    hash bytea NOT NULL
);
CREATE INDEX events_company_seq ON events (company_id, seq);
CREATE INDEX events_type_seq ON events (event_type, seq);
CREATE INDEX events_subject_seq ON events (subject, seq);
CREATE INDEX events_time ON events (event_time);

-- The database itself refuses to change history, whoever asks.
CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit.% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- The head only moves forward.
CREATE FUNCTION head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq <= OLD.seq THEN
        RAISE EXCEPTION 'audit.chain_head only moves forward (% -> %)', OLD.seq, NEW.seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER chain_head_forward BEFORE UPDATE ON chain_head
    FOR EACH ROW EXECUTE FUNCTION head_forward_only();
CREATE TRIGGER chain_head_no_delete BEFORE DELETE ON chain_head
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER chain_head_no_truncate BEFORE TRUNCATE ON chain_head
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
