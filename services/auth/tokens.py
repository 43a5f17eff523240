"""Signed assertions (JWT, EdDSA over Ed25519), the JWKS that verifies them, and key rotation.

A signing key is published in the JWKS from the moment it is created, signs from its
`activates_at`, and stays published until `published_until`, when the last assertion it
signed has expired. `mfa signing-keys rotate` creates the next key with an activation
`PROPAGATION` ahead: every process re-reads the keys every `RELOAD_INTERVAL`, and verifiers
may cache the JWKS for `JWKS_MAX_AGE`, so by the time the new key signs, every process
publishes it and every cached JWKS has had time to be refetched; all processes switch at the
same instant because the switch is a time in the database, not a message.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg
import orjson
from joserfc import jwt
from joserfc.jwk import KeySet, OKPKey
from joserfc.jws import JWSRegistry

from ..common import sealing
from ..common.crypto import CryptoError, Keyring
from ..common.errors import DATABASE_UNAVAILABLE
from ..common.logs import get_logger
from . import store

log = get_logger("auth.tokens")

# RFC 8037's name, the one PyJWT, node `jose`, joserfc and jwcrypto all accept; RFC 9864's newer
# "Ed25519" is refused by PyJWT 2.15 and by authlib.
ALG = "EdDSA"


class _EdDSA(type(JWSRegistry.algorithms[ALG])):  # joserfc's EdDSA, which it exports only privately
    # joserfc warns on every use that RFC 9864 deprecates the name; interop needs exactly that name.
    security_warning = None


class _Registry(JWSRegistry):
    algorithms = {**JWSRegistry.algorithms, ALG: _EdDSA()}


REGISTRY = _Registry(algorithms=[ALG])

ASSERTION_TTL = 300  # seconds an assertion is valid
RELOAD_INTERVAL = 30.0  # seconds between two reads of the signing keys in each process
JWKS_MAX_AGE = 300  # Cache-Control max-age of /.well-known/jwks.json
# A new key is published this long before it signs, and an old one stays published this long
# past the expiry of the last assertion it signed (clock skew, a slow reload).
PROPAGATION = timedelta(seconds=JWKS_MAX_AGE + 2 * RELOAD_INTERVAL)

SIGNING_KEY_LOCK = 0x6D666131  # arbitrary: serialises creating signing keys ("mfa1")


@dataclass(frozen=True)
class Rotation:
    """What `rotate` did: the new key, when it signs, and until when the keys it replaces stay published."""

    kid: str
    activates_at: datetime
    retiring: list[tuple[str, datetime]]


async def _insert_new_key(conn: asyncpg.Connection, keyring: Keyring, activates_at: datetime | None) -> str:
    key = OKPKey.generate_key("Ed25519", parameters={"kid": uuid.uuid4().hex[:16]}, private=True)
    public = {**key.as_dict(private=False), "alg": ALG, "use": "sig"}
    sealed = keyring.seal(key.as_pem(private=True), aad=sealing.signing_key(key.kid))
    await store.insert_signing_key(conn, key.kid, sealed, public, activates_at)
    return key.kid


async def rotate(
    pool: asyncpg.Pool, keyring: Keyring, *, propagation: timedelta = PROPAGATION,
    keep: timedelta = timedelta(seconds=ASSERTION_TTL) + PROPAGATION,
) -> Rotation:
    """Create the next signing key, signing `propagation` from now; retire the current ones after it.

    The keys it replaces stop signing when it activates and stay in the JWKS for `keep` more.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SIGNING_KEY_LOCK)
        now = await conn.fetchval("SELECT now()")
        activates_at = now + propagation
        kid = await _insert_new_key(conn, keyring, activates_at)
        retiring = await store.supersede_signing_keys(conn, kid, activates_at, activates_at + keep)
    log.info("signing_key_rotated", kid=kid, activates_at=activates_at.isoformat(),
             retiring=[old for old, _ in retiring])
    return Rotation(kid, activates_at, retiring)


@dataclass
class Signer:
    """Signs assertions with the key active now; publishes every published public key.

    Load it once with :meth:`load`; :meth:`run` keeps it in step with the database.
    """

    issuer: str
    ttl: int = ASSERTION_TTL
    keys: dict[str, OKPKey] = field(default_factory=dict)
    # (activation as a Unix time, kid), newest first
    schedule: list[tuple[float, str]] = field(default_factory=list)
    jwks: dict = field(default_factory=lambda: {"keys": []})
    _headers: dict[str, bytes] = field(default_factory=dict, repr=False)  # kid -> its encoded JWS header

    async def load(self, pool: asyncpg.Pool, keyring: Keyring) -> Signer:
        """Load the keys from the database, creating the first one if there is none."""
        async with pool.acquire() as conn, conn.transaction():
            # Two processes starting on an empty database must not each create a key (each
            # would then publish a JWKS without the other's key): the first one in creates it.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SIGNING_KEY_LOCK)
            rows = await store.signing_keys(conn)
            if not rows:
                await _insert_new_key(conn, keyring, None)
                rows = await store.signing_keys(conn)
        self._apply(rows, keyring)
        return self

    async def reload(self, pool: asyncpg.Pool, keyring: Keyring) -> None:
        """Re-read the published keys: a rotated-in key appears, an expired one goes."""
        rows = await store.signing_keys(pool)
        if rows:  # never drop every key: an empty table is a mistake, not a rotation
            self._apply(rows, keyring)

    def _apply(self, rows: list[store.SigningKey], keyring: Keyring) -> None:
        keys = {}
        for row in rows:
            known = self.keys.get(row.kid)
            if known is None:
                pem = keyring.open(row.private_key, aad=sealing.signing_key(row.kid))
                known = OKPKey.import_key(pem, parameters={"kid": row.kid})
            keys[row.kid] = known
        self.keys = keys
        self.schedule = sorted(((row.activates_at.timestamp(), row.kid) for row in rows), reverse=True)
        # Keys stored before EdDSA was the name said "Ed25519"; every key is published as what it signs.
        self.jwks = {"keys": [{**row.public_jwk, "alg": ALG} for row in rows]}

    async def run(self, pool: asyncpg.Pool, keyring: Keyring, interval: float = RELOAD_INTERVAL) -> None:
        """Reload every `interval` seconds until cancelled; an unreachable database keeps the keys held."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reload(pool, keyring)
            except DATABASE_UNAVAILABLE as exc:
                log.warning("signing_keys_reload_failed", error=str(exc))
            except CryptoError as exc:
                # A key sealed under a key this process lacks: keep signing with what it has, loudly.
                log.error("signing_key_unreadable", error=str(exc), hint="MFA_SECRET_KEYS differs between processes")

    @property
    def current(self) -> str:
        """The kid that signs now: the newest active key (the oldest published one before any is active)."""
        assert self.schedule, "load() first"
        now = time.time()
        for activates, kid in self.schedule:
            if activates <= now:
                return kid
        return self.schedule[-1][1]

    def sign(self, *, account_id: str, company_id: str, login_id: str, amr: list[str],
             audience: str | None = None) -> str:
        """An assertion for a completed login; `aud` is the caller key's audience, else the company id."""
        kid = self.current
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": account_id,
            "aud": audience or company_id,
            "company_id": company_id,
            "login_id": login_id,
            "amr": amr,
            "iat": now,
            "exp": now + self.ttl,
            "jti": uuid.uuid4().hex,
        }
        # The compact JWS by hand, as joserfc builds it (RFC 7515 section 7.1): the header of each
        # key is encoded once, the claims with orjson, the signature by `cryptography` directly.
        # joserfc's generic path cost about a tenth of a verification's CPU in the auth process.
        signing_input = self._header(kid) + b"." + _b64(orjson.dumps(claims))
        signature = self.keys[kid].private_key.sign(signing_input)
        return (signing_input + b"." + _b64(signature)).decode()

    def _header(self, kid: str) -> bytes:
        header = self._headers.get(kid)
        if header is None:
            header = self._headers[kid] = _b64(orjson.dumps({"typ": "JWT", "alg": ALG, "kid": kid}))
        return header


def _b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def verify_assertion(token: str, jwks: dict, *, issuer: str | None = None, audience: str | None = None) -> dict:
    """Decode and check an assertion against a JWKS (what upstream does); raises on a bad one."""
    decoded = jwt.decode(token, KeySet.import_key_set(jwks), registry=REGISTRY)
    checks: dict = {"exp": {"essential": True}, "sub": {"essential": True}}
    if issuer is not None:
        checks["iss"] = {"essential": True, "value": issuer}
    if audience is not None:
        checks["aud"] = {"essential": True, "value": audience}
    jwt.JWTClaimsRegistry(**checks).validate(decoded.claims)
    return decoded.claims
