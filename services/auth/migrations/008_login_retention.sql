-- What the hourly purge finds old logins by (MFA_LOGIN_RETENTION_DAYS after they expired). A code's
-- claim never changes a login's expiry (only an emailed login link extends it), so the claim's
-- update of the login stays HOT beside this index.
CREATE INDEX logins_expires ON logins (expires_at);
