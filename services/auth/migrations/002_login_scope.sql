-- Login ids are scoped by company: the id one tenant chose never collides with, or reveals,
-- another tenant's (a key bound to company A that reuses company B's id gets a login of its own).
ALTER TABLE login_links ADD COLUMN company_id text;
UPDATE login_links k SET company_id = l.company_id FROM logins l WHERE l.login_id = k.login_id;
DELETE FROM login_links WHERE company_id IS NULL;
ALTER TABLE login_links ALTER COLUMN company_id SET NOT NULL;
ALTER TABLE login_links DROP CONSTRAINT login_links_login_id_fkey;
ALTER TABLE logins DROP CONSTRAINT logins_pkey;
-- The id first: keys bound to no company look logins up by id alone, with the same index.
ALTER TABLE logins ADD PRIMARY KEY (login_id, company_id);
ALTER TABLE login_links ADD CONSTRAINT login_links_login_fkey FOREIGN KEY (login_id, company_id)
    REFERENCES logins (login_id, company_id) ON DELETE CASCADE;

-- What a link stood for when it was sent, re-checked when it is redeemed: the backup address it
-- went to and the enrolment it was a second factor for (a reset or a new enrolment ends it).
ALTER TABLE login_links ADD COLUMN sent_to text, ADD COLUMN enrolled_at timestamptz;
UPDATE login_links k SET sent_to = b.address, enrolled_at = a.enrolled_at
    FROM auth.accounts a LEFT JOIN auth.backup_emails b USING (account_id)
    WHERE a.account_id = k.account_id;
