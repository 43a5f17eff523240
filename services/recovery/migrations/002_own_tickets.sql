-- Every request opens a ticket of its own (issue 11): a second request for the same email and
-- company never changes the first one's names, photo or reply address. The tickets of one person
-- stay linked through (email_key, company_key) for the helpdesk to see.
DROP INDEX tickets_one_undecided;
CREATE INDEX tickets_person ON tickets (email_key, company_key, created_at);

-- The confirmed backup email from BackupEmailConfirmed: decisions are mailed to the account's own
-- addresses (login email and backup email), never only to an address a request gave.
ALTER TABLE accounts ADD COLUMN backup_email text;
