-- A page session references the link it was opened from, instead of its account and its login:
-- one foreign key check per exchange, on the row the same statement just updated, instead of two
-- on other tables (a third of the exchange's time in the database). Removing an account or a login
-- still removes its sessions: it removes their links, which removes the sessions.
ALTER TABLE page_sessions ADD COLUMN link_hash bytea REFERENCES page_links (token_hash) ON DELETE CASCADE;
-- Sessions open while this runs: any used link of the same kind, account and login stands for them.
UPDATE page_sessions s SET link_hash = l.token_hash
FROM page_links l
WHERE l.used_at IS NOT NULL AND l.kind = s.kind AND l.account_id = s.account_id AND l.company_id = s.company_id
  AND l.login_id IS NOT DISTINCT FROM s.login_id;
DELETE FROM page_sessions WHERE link_hash IS NULL;
-- Not NOT NULL: auth processes of the previous release, still running during a rolling upgrade,
-- insert sessions without it. Such a session is not removed with its account, but it can do
-- nothing once the account is gone: the pages read a session with its account, and the QR code's
-- pending enrolment went with the account.
ALTER TABLE page_sessions
    DROP CONSTRAINT page_sessions_account_id_fkey,
    DROP CONSTRAINT page_sessions_login_id_company_id_fkey;
DROP INDEX page_sessions_login;
CREATE INDEX page_sessions_link ON page_sessions (link_hash);
-- Room on every page for the exchange's update of `used_at` (no indexed column) to stay on its
-- page (a HOT update): no new entry in any of the link's three indexes.
ALTER TABLE page_links SET (fillfactor = 70);
