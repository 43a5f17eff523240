-- The hosted pages: single-use URL tokens (a prompt_url, a "My login" link) and the browser
-- sessions they are exchanged for. Both hold keyed hashes only; the cookie or URL holds the token.

CREATE TABLE page_links (
    token_hash bytea PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('prompt', 'portal')),
    account_id text NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    login_id text REFERENCES logins (login_id) ON DELETE CASCADE,
    return_to text NOT NULL,
    state text,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz
);
CREATE INDEX page_links_login ON page_links (login_id);

CREATE TABLE page_sessions (
    session_hash bytea PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('prompt', 'portal')),
    account_id text NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    login_id text REFERENCES logins (login_id) ON DELETE CASCADE,
    return_to text NOT NULL,
    state text,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX page_sessions_login ON page_sessions (login_id);
