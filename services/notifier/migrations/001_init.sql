-- The notifier's journal: one row per mail an event asks for, written as soon as its fate is known
-- (outside the consumer's transaction), so a retried event sends only what is still missing.
CREATE TABLE mails (
    event_id text NOT NULL,
    seq smallint NOT NULL,                 -- position of the mail within its event; part of the Message-ID
    event_type text NOT NULL,
    kind text NOT NULL,                    -- template name
    recipient text NOT NULL,
    subject text NOT NULL DEFAULT '',
    message_id text NOT NULL,
    account_id text,
    company_id text,
    status text NOT NULL CHECK (status IN ('sent', 'failed', 'deferred')),
    reason_code text,                      -- why it failed or waits: smtp_rejected, invalid_address, ...
    reason text,                           -- the SMTP reply or a sentence; never a token
    attempts integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz,
    PRIMARY KEY (event_id, seq)
);
CREATE INDEX mails_account ON mails (account_id, created_at) WHERE account_id IS NOT NULL;
CREATE INDEX mails_not_sent ON mails (status, updated_at) WHERE status <> 'sent';
