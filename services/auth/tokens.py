"""Signed assertions (JWT, Ed25519) and the JWKS that verifies them."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import asyncpg
from joserfc import jwt
from joserfc.jwk import KeySet, OKPKey

from ..common import sealing
from ..common.crypto import Keyring
from . import store

ALG = "Ed25519"  # RFC 9864 name of EdDSA over Ed25519
ASSERTION_TTL = 300


SIGNING_KEY_LOCK = 0x6D666131  # arbitrary: serialises creating the first signing key ("mfa1")


@dataclass
class Signer:
    """Signs assertions with the newest key; publishes every active public key."""

    issuer: str
    keys: dict[str, OKPKey] = field(default_factory=dict)
    current: str | None = None
    jwks: dict = field(default_factory=lambda: {"keys": []})

    async def load(self, pool: asyncpg.Pool, keyring: Keyring) -> Signer:
        """Load keys from the database, creating the first one if there is none."""
        async with pool.acquire() as conn, conn.transaction():
            # Two processes starting on an empty database must not each create a key (each
            # would then publish a JWKS without the other's key): the first one in creates it.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SIGNING_KEY_LOCK)
            rows = await store.signing_keys(conn)
            if not rows:
                key = OKPKey.generate_key("Ed25519", parameters={"kid": uuid.uuid4().hex[:16]}, private=True)
                sealed = keyring.seal(key.as_pem(private=True), aad=sealing.signing_key(key.kid))
                public = {**key.as_dict(private=False), "alg": ALG, "use": "sig"}
                await store.insert_signing_key(conn, key.kid, sealed, public)
                rows = await store.signing_keys(conn)
        for row in rows:
            pem = keyring.open(row.private_key, aad=sealing.signing_key(row.kid))
            self.keys[row.kid] = OKPKey.import_key(pem, parameters={"kid": row.kid})
        self.current = rows[0].kid
        self.jwks = {"keys": [row.public_jwk for row in rows]}
        return self

    def sign(self, *, account_id: str, company_id: str, login_id: str, amr: list[str]) -> str:
        assert self.current is not None, "load() first"
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": account_id,
            "aud": company_id,
            "login_id": login_id,
            "amr": amr,
            "iat": now,
            "exp": now + ASSERTION_TTL,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode({"alg": ALG, "kid": self.current, "typ": "JWT"}, claims, self.keys[self.current], algorithms=[ALG])


def verify_assertion(token: str, jwks: dict) -> dict:
    """Decode and check an assertion against a JWKS (what upstream does); raises on a bad one."""
    decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=[ALG])
    jwt.JWTClaimsRegistry(exp={"essential": True}, sub={"essential": True}).validate(decoded.claims)
    return decoded.claims
