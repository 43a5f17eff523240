-- Recovery: the directory read model (from events), tickets, photos kept apart, rate limits.

-- Directory read model. Each aspect carries the time of the event that set it, and an update
-- applies only when its event is not older: duplicates and out-of-order events change nothing.
CREATE TABLE companies (
    company_id text PRIMARY KEY,
    name text,
    name_key text,
    name_at timestamptz,
    mfa_required boolean NOT NULL DEFAULT false,
    policy_at timestamptz
);
CREATE INDEX companies_name_key ON companies (name_key);

CREATE TABLE accounts (
    account_id text PRIMARY KEY,
    company_id text,
    email text,
    email_key text,
    first_name text,
    last_name text,
    role text,
    profile_at timestamptz,          -- last AccountUpserted
    removed_at timestamptz,          -- last AccountRemoved; live while profile_at is newer
    mfa_required boolean NOT NULL DEFAULT false,
    policy_at timestamptz,
    mfa_enabled boolean NOT NULL DEFAULT false,
    mfa_at timestamptz,
    backup_email_confirmed boolean NOT NULL DEFAULT false,
    backup_at timestamptz
);
CREATE INDEX accounts_email_key ON accounts (email_key);

CREATE TABLE tickets (
    ticket_id text PRIMARY KEY,
    status text NOT NULL CHECK (status IN ('open', 'incomplete', 'claimed', 'approved', 'rejected')),
    channel text NOT NULL CHECK (channel IN ('email', 'form')),
    requester_email text NOT NULL DEFAULT '',
    email_key text,
    first_name text NOT NULL DEFAULT '',
    last_name text NOT NULL DEFAULT '',
    company_name text NOT NULL DEFAULT '',
    company_key text,
    reply_to text,
    missing text[] NOT NULL DEFAULT '{}',
    problems text[] NOT NULL DEFAULT '{}',
    -- A ticket opened with a key bound to a company only ever matches accounts of that company.
    scope_company_id text,
    account_id text,
    company_id text,
    request_count integer NOT NULL DEFAULT 1,
    claimed_by text,
    claimed_at timestamptz,
    decided_by text,
    decided_at timestamptz,
    decision_note text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- One undecided ticket per person: repeated requests join it.
CREATE UNIQUE INDEX tickets_one_undecided ON tickets (email_key, company_key)
    WHERE status IN ('open', 'incomplete', 'claimed');
CREATE INDEX tickets_queue ON tickets (status, created_at, ticket_id);
CREATE INDEX tickets_company ON tickets (company_id, status, created_at);

-- Photos are personal data: kept apart from the ticket, deleted on decision or after 30 days.
CREATE TABLE photos (
    ticket_id text PRIMARY KEY REFERENCES tickets (ticket_id) ON DELETE CASCADE,
    content_type text NOT NULL,
    size integer NOT NULL,
    sha256 bytea NOT NULL,
    data bytea NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
-- Images do not compress: skip the attempt.
ALTER TABLE photos ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE INDEX photos_received_at ON photos (received_at);

-- Every photo deletion, without the photo: what, when, why.
CREATE TABLE photo_deletions (
    id bigserial PRIMARY KEY,
    ticket_id text NOT NULL REFERENCES tickets (ticket_id),
    reason text NOT NULL CHECK (reason IN ('decided', 'expired', 'replaced')),
    content_type text NOT NULL,
    size integer NOT NULL,
    sha256 bytea NOT NULL,
    received_at timestamptz NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX photo_deletions_ticket ON photo_deletions (ticket_id, id);

-- Intake hits per key (a keyed hash of a sender address or IP) per fixed window.
CREATE TABLE rate_limits (
    key bytea NOT NULL,
    window_start timestamptz NOT NULL,
    hits integer NOT NULL,
    PRIMARY KEY (key, window_start)
);
