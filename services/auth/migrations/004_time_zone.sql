-- The person's time zone (IANA name), so the mails give times as the person reads them.
ALTER TABLE accounts ADD COLUMN time_zone text;
