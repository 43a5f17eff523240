#!/usr/bin/env bash
# The README's quickstart: the whole second step of a login, called as an upstream product calls it.
# Needs a running stack (`make run` or `docker compose up`), curl, jq, oathtool, zbarimg, Python with
# PyJWT and Node with jose. CI runs this file (tests/interop/test_quickstart.py) and checks that the
# README shows exactly these commands.
set -euo pipefail

AUTH=${AUTH:-http://127.0.0.1:8081}   # the auth service
ISSUER=${ISSUER:-$AUTH}               # `iss` of the assertions: MFA_ISSUER, by default MFA_PUBLIC_URL
KEY=${KEY:?set KEY to a service API key: mfa api-key create --role service}
PYTHON=${PYTHON:-python3}             # a Python with PyJWT: pip install 'pyjwt[crypto]'
JOSE_DIR=${JOSE_DIR:-.}               # a folder where `npm install jose` was run
ID=${ID:-$(date +%s)}                 # new ids on every run
api() { curl -fsS -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@"; }

# 1. The company (it requires MFA) and one of its employees, as the upstream directory knows them.
jq -n '{name: "Acme", mfa_required: true}' | api -X PUT "$AUTH/v1/companies/acme-$ID" -d @-
jq -n --arg company "acme-$ID" --arg email "ada-$ID@example.com" \
  '{company_id: $company, email: $email, first_name: "Ada", last_name: "Lovelace", role: "employee", mfa_required: false}' \
  | api -X PUT "$AUTH/v1/accounts/ada-$ID" -d @-

# 2. Ada passed the password step. MFA is forced and she has none yet: the decision is "enroll".
LOGIN=$(jq -n --arg account "ada-$ID" '{account_id: $account}' | api -X POST "$AUTH/v1/logins" -d @-)
jq . <<<"$LOGIN"
test "$(jq -r .decision <<<"$LOGIN")" = enroll
LOGIN_ID=$(jq -r .login_id <<<"$LOGIN")

# 3. A new secret and its QR code: show qr.png to Ada; here zbarimg reads it as her phone would.
api -X POST "$AUTH/v1/accounts/ada-$ID/mfa/enrollment" -d '{}' | jq '{otpauth_uri, expires_at}'
api "$AUTH/v1/accounts/ada-$ID/mfa/enrollment/qr.png" -o qr.png
SECRET=$(zbarimg -q --raw qr.png | sed -E 's/.*[?&]secret=([A-Z2-7]+).*/\1/')

# 4. She types the code her app shows (oathtool plays the app): MFA is on, and this login is done.
CONFIRMED=$(jq -n --arg code "$(oathtool --totp -b "$SECRET")" --arg login "$LOGIN_ID" '{code: $code, login_id: $login}' \
  | api -X POST "$AUTH/v1/accounts/ada-$ID/mfa/enrollment/confirm" -d @-)
jq '{backup_codes, assertion}' <<<"$CONFIRMED"

# 5. Her next login asks for a code ("verify"). A code is good once: wait for the app's next one.
LOGIN=$(jq -n --arg account "ada-$ID" '{account_id: $account}' | api -X POST "$AUTH/v1/logins" -d @-)
test "$(jq -r .decision <<<"$LOGIN")" = verify
sleep $(( 30 - $(date +%s) % 30 ))
VERIFIED=$(jq -n --arg code "$(oathtool --totp -b "$SECRET")" '{method: "totp", code: $code}' \
  | api -X POST "$AUTH/v1/logins/$(jq -r .login_id <<<"$LOGIN")/verify" -d @-)
ASSERTION=$(jq -r .assertion <<<"$VERIFIED")

# 6. Upstream lets Ada in only once the assertion verifies: in Python with PyJWT ...
"$PYTHON" - "$ASSERTION" "$AUTH/.well-known/jwks.json" "$ISSUER" "acme-$ID" <<'PY'
import sys, jwt
token, jwks_url, issuer, audience = sys.argv[1:]
key = jwt.PyJWKClient(jwks_url).get_signing_key_from_jwt(token).key
claims = jwt.decode(token, key, algorithms=["EdDSA"], issuer=issuer, audience=audience)
print("PyJWT verified:", claims["sub"], claims["amr"])
PY

# 7. ... or in Node with jose.
(cd "$JOSE_DIR" && node --input-type=module - "$ASSERTION" "$AUTH/.well-known/jwks.json" "$ISSUER" "acme-$ID" <<'JS'
import { createRemoteJWKSet, jwtVerify } from "jose";
const [token, jwksUrl, issuer, audience] = process.argv.slice(2);
const { payload } = await jwtVerify(token, createRemoteJWKSet(new URL(jwksUrl)), { issuer, audience });
console.log("jose verified:", payload.sub, payload.amr);
JS
)
