-- The helpdesk console (issue 16): single-use sign-in links and the browser sessions they are
-- exchanged for. Both hold keyed hashes only; the URL or the cookie holds the token. The agent's
-- name and the key that asked for the link travel with the session, never with a form.
CREATE TABLE helpdesk_links (
    token_hash bytea PRIMARY KEY,
    agent text NOT NULL,
    key_id text,                 -- the helpdesk API key that asked; NULL for `mfa helpdesk-link`
    company_id text,             -- that key's company binding: the session sees what the key sees
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz
);

CREATE TABLE helpdesk_sessions (
    session_hash bytea PRIMARY KEY,
    agent text NOT NULL,
    key_id text,
    company_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    ended_at timestamptz
);
CREATE INDEX helpdesk_sessions_expires ON helpdesk_sessions (expires_at);
CREATE INDEX helpdesk_links_expires ON helpdesk_links (expires_at);
-- The console's search of the directory copy by email.
CREATE INDEX accounts_email_lower ON accounts (lower(email) text_pattern_ops);
