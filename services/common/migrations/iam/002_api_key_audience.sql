-- The `aud` of the assertions a service key's calls receive; NULL: the company id. One upstream
-- per audience, so an assertion issued to one is refused by another's verifier.
ALTER TABLE api_keys ADD COLUMN audience text CHECK (audience IS NULL OR role = 'service');
