-- Signing key rotation: a key is in the JWKS from creation, signs from activates_at, and stays
-- in the JWKS until published_until, once the last assertion it signed has expired.
ALTER TABLE signing_keys ADD COLUMN activates_at timestamptz;
UPDATE signing_keys SET activates_at = created_at;
ALTER TABLE signing_keys ALTER COLUMN activates_at SET NOT NULL, ALTER COLUMN activates_at SET DEFAULT now();
ALTER TABLE signing_keys ADD COLUMN published_until timestamptz;
UPDATE signing_keys SET published_until = retired_at WHERE retired_at IS NOT NULL;
-- JWS `alg` EdDSA (RFC 8037), the name every JWT library accepts; keys made before said "Ed25519".
UPDATE signing_keys SET public_jwk = jsonb_set(public_jwk, '{alg}', '"EdDSA"');
