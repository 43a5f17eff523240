// Verifies an assertion as an upstream on Node would: jose's createRemoteJWKSet and jwtVerify with
// their defaults, plus the issuer and audience checks; expiry is checked by default.
// usage: node verify.mjs JWKS_URL TOKEN ISSUER AUDIENCE  -> the payload as JSON, or exit 1 with the error code
import { createRemoteJWKSet, jwtVerify } from "jose";

const [jwksUrl, token, issuer, audience] = process.argv.slice(2);
const jwks = createRemoteJWKSet(new URL(jwksUrl));
try {
  const { payload, protectedHeader } = await jwtVerify(token, jwks, { issuer, audience, requiredClaims: ["exp", "sub"] });
  console.log(JSON.stringify({ payload, protectedHeader }));
} catch (error) {
  console.error(error.code ?? error.name);
  process.exit(1);
}
