-- The hosted pages: single-use URL tokens (a prompt_url, a "My login" link) and the browser
-- sessions they are exchanged for. Both hold keyed hashes only; the cookie or URL holds the token.
-- A prompt belongs to one login, named with its company (login ids are scoped by company).

CREATE TABLE page_links (
    token_hash bytea PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('prompt', 'portal')),
    account_id text NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    company_id text NOT NULL,
    login_id text,
    return_to text NOT NULL,
    state text,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    FOREIGN KEY (login_id, company_id) REFERENCES logins (login_id, company_id) ON DELETE CASCADE
);
CREATE INDEX page_links_login ON page_links (login_id, company_id);

CREATE TABLE page_sessions (
    session_hash bytea PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('prompt', 'portal')),
    account_id text NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    company_id text NOT NULL,
    login_id text,
    return_to text NOT NULL,
    state text,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    FOREIGN KEY (login_id, company_id) REFERENCES logins (login_id, company_id) ON DELETE CASCADE
);
CREATE INDEX page_sessions_login ON page_sessions (login_id, company_id);
