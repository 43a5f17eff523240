-- API keys shared by every service's HTTP edge. Only a SHA-256 of each key is kept:
-- keys carry 256 random bits, so a fast hash is enough and lookups stay O(1).
CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    key_hash bytea NOT NULL UNIQUE,
    prefix text NOT NULL,
    role text NOT NULL CHECK (role IN ('service', 'helpdesk', 'auditor')),
    company_id text,
    label text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
