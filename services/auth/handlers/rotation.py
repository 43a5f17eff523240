"""Key rotation: every stored sealed value re-sealed under the newest `MFA_SECRET_KEYS` key."""

from __future__ import annotations

import asyncpg

from ...common import sealing
from ...common.crypto import Keyring
from .. import store


async def rotate_secrets(pool: asyncpg.Pool, keyring: Keyring) -> int:
    """Re-seal every stored secret under the newest key; returns how many changed.

    Runs beside live traffic: each value is replaced in its own statement and only if it is
    still the value that was read, so a secret disabled or re-enrolled meanwhile is left as
    the user left it (and no lock is held on all accounts at once).
    """
    changed = 0
    async with pool.acquire() as conn:
        for row in await store.sealed_secrets(conn):
            if not keyring.needs_rotation(row.sealed):
                continue
            aad = sealing.signing_key(row.owner) if row.kind == "signing" else sealing.totp_secret(row.owner)
            plain = keyring.open(row.sealed, aad=aad)
            if await store.reseal(conn, row.kind, row.owner, row.sealed, keyring.seal(plain, aad=aad)):
                changed += 1
    return changed
