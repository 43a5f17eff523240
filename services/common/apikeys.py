"""API keys: random bearer tokens with a role and an optional company binding, stored hashed."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass

import asyncpg

ROLES = ("service", "helpdesk", "auditor")
KEY_PREFIX = "mfa_"
AUDIENCE = re.compile(r"[\x21-\x7e]{1,200}")


@dataclass(frozen=True)
class Principal:
    """The caller behind an API key."""

    key_id: str
    role: str
    company_id: str | None
    audience: str | None = None  # `aud` of the assertions this (service) key's calls receive; None: the company id

    def sees(self, company_id: str | None) -> bool:
        """True when this key may see data of `company_id` (unbound keys see every company)."""
        return self.company_id is None or self.company_id == company_id


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def create_key(
    conn: asyncpg.Connection | asyncpg.Pool, role: str, company_id: str | None = None, label: str = "",
    audience: str | None = None,
) -> str:
    """Store a new key and return it in clear; it is never retrievable again.

    `audience` (service keys only) becomes the `aud` of the assertions its calls receive.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if audience is not None:
        if role != "service":
            raise ValueError("only service keys receive assertions, so only they take an audience")
        if not AUDIENCE.fullmatch(audience):
            raise ValueError("the audience is 1 to 200 visible characters, e.g. a URL of the upstream product")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO iam.api_keys (id, key_hash, prefix, role, company_id, label, audience)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        uuid.uuid4(),
        hash_key(key),
        key[:10],
        role,
        company_id,
        label,
        audience,
    )
    return key


async def revoke_key(conn: asyncpg.Connection | asyncpg.Pool, key_or_prefix: str) -> int:
    """Revoke a key given in full or by the 10-character prefix `create` printed; returns how many."""
    result = await conn.execute(
        "UPDATE iam.api_keys SET revoked_at = now() WHERE revoked_at IS NULL AND (key_hash = $1 OR prefix = $2)",
        hash_key(key_or_prefix),
        key_or_prefix[:10] if len(key_or_prefix) >= 10 else "\x00",
    )
    return int(result.split()[-1])


class KeyCache:
    """Resolves keys to principals, caching hits briefly so each request costs no query.

    A revoked key stops working within `ttl` seconds.
    """

    def __init__(self, pool: asyncpg.Pool, ttl: float = 30.0, max_entries: int = 10_000) -> None:
        self.pool = pool
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}

    async def resolve(self, key: str) -> Principal | None:
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit and hit[0] > now:
            return hit[1]
        row = await self.pool.fetchrow(
            "SELECT id, role, company_id, audience FROM iam.api_keys WHERE key_hash = $1 AND revoked_at IS NULL", digest
        )
        principal = Principal(str(row["id"]), row["role"], row["company_id"], row["audience"]) if row else None
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[digest] = (now + (self.ttl if principal else 2.0), principal)
        return principal
