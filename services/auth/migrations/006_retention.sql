-- What the hourly purge (handlers/retention.py) finds expired rows by: without these it would
-- scan whole tables, and again for each batch it deletes.
CREATE INDEX page_sessions_expires ON page_sessions (expires_at);
CREATE INDEX page_links_expires ON page_links (expires_at);
CREATE INDEX login_links_expires ON login_links (expires_at);
CREATE INDEX pending_enrollments_expires ON pending_enrollments (expires_at);
