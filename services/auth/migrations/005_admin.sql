-- The administrator's pages: an `admin` kind of page link and session (bound to the admin's
-- account), and the index the Employees tab pages and counts with.

ALTER TABLE page_links DROP CONSTRAINT page_links_kind_check,
    ADD CONSTRAINT page_links_kind_check CHECK (kind IN ('prompt', 'portal', 'admin'));
ALTER TABLE page_sessions DROP CONSTRAINT page_sessions_kind_check,
    ADD CONSTRAINT page_sessions_kind_check CHECK (kind IN ('prompt', 'portal', 'admin'));

-- The Employees tab lists one company ordered by (email, account_id) and pages by keyset on the
-- same pair: with this index a page of 5,000 employees is an index range read, never a sort.
-- It also serves every lookup by company, so the narrower index goes.
CREATE INDEX accounts_company_email ON accounts (company_id, email, account_id);
DROP INDEX accounts_company;
