-- The auth schema: the directory (companies, accounts), MFA state, logins and their tokens.

CREATE TABLE companies (
    company_id text PRIMARY KEY,
    name text NOT NULL,
    mfa_required boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE accounts (
    account_id text PRIMARY KEY,
    company_id text NOT NULL REFERENCES companies (company_id),
    email text NOT NULL,
    first_name text NOT NULL DEFAULT '',
    last_name text NOT NULL DEFAULT '',
    role text NOT NULL CHECK (role IN ('employee', 'admin')),
    mfa_required boolean NOT NULL DEFAULT false,
    locale text,
    -- TOTP: the secret sealed with AES-GCM under MFA_SECRET_KEYS; NULL while MFA is off.
    totp_secret text,
    enrolled_at timestamptz,
    -- The highest time step ever accepted: a step is accepted only once, enforced by
    -- `UPDATE ... WHERE last_step < $step` so concurrent requests cannot both win.
    last_step bigint NOT NULL DEFAULT 0,
    consecutive_failures integer NOT NULL DEFAULT 0,
    lock_count integer NOT NULL DEFAULT 0,
    locked_until timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX accounts_company ON accounts (company_id);

CREATE TABLE pending_enrollments (
    account_id text PRIMARY KEY REFERENCES accounts (account_id) ON DELETE CASCADE,
    totp_secret text NOT NULL,
    failed_attempts integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

-- Keyed hashes only; deleting the row is what makes a code single use.
CREATE TABLE backup_codes (
    code_hash bytea PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX backup_codes_account ON backup_codes (account_id);

CREATE TABLE backup_emails (
    account_id text PRIMARY KEY REFERENCES accounts (account_id) ON DELETE CASCADE,
    address text NOT NULL,
    verified_at timestamptz,
    confirm_hash bytea UNIQUE,
    confirm_expires_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE logins (
    login_id text PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    company_id text NOT NULL,
    decision text NOT NULL CHECK (decision IN ('allow', 'verify', 'enroll', 'deny')),
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    links_sent integer NOT NULL DEFAULT 0,
    method text,
    ip text,
    user_agent text,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    completed_at timestamptz
);
CREATE INDEX logins_account ON logins (account_id, created_at);

CREATE TABLE login_links (
    token_hash bytea PRIMARY KEY,
    login_id text NOT NULL REFERENCES logins (login_id) ON DELETE CASCADE,
    account_id text NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz
);

-- Ed25519 keys that sign assertions; private keys sealed under MFA_SECRET_KEYS.
CREATE TABLE signing_keys (
    kid text PRIMARY KEY,
    private_key text NOT NULL,
    public_jwk jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz
);
