"""`mfa secrets rotate` and `mfa signing-keys rotate|list`: key maintenance of the auth service."""

from __future__ import annotations

from datetime import timedelta

from ..common.config import Settings
from ..common.crypto import Keyring
from ..common.db import create_pool
from . import store, tokens
from .handlers.rotation import rotate_secrets


async def rotate_command(settings: Settings) -> int:
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        changed = await rotate_secrets(pool, Keyring(settings.secret_keys))
    finally:
        await pool.close()
    print(f"re-encrypted {changed} secrets under key {settings.secret_keys[-1][0]!r}")
    return 0


async def signing_keys_command(settings: Settings, action: str, *, now: bool = False) -> int:
    """Rotate the assertion signing key, or list the published ones."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        if action == "rotate":
            keyring = Keyring(settings.secret_keys)
            rotation = await tokens.rotate(pool, keyring, propagation=timedelta(0)) if now else await tokens.rotate(pool, keyring)
            print(f"new signing key {rotation.kid} is in the JWKS now and signs from {rotation.activates_at.isoformat()}"
                  + (" (running services switch within 30 s)" if now else ""))
            for kid, until in rotation.retiring:
                print(f"key {kid} stops signing then and stays in the JWKS until {until.isoformat()}")
            return 0
        for key in await store.signing_keys(pool):
            until = key.published_until.isoformat() if key.published_until else "-"
            print(f"{key.kid}  signs from {key.activates_at.isoformat()}  published until {until}")
        return 0
    finally:
        await pool.close()
