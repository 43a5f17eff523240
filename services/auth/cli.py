"""`mfa secrets rotate`: re-seal stored secrets under the newest MFA_SECRET_KEYS key."""

from __future__ import annotations

from ..common.config import Settings
from ..common.crypto import Keyring
from ..common.db import create_pool
from .handlers.rotation import rotate_secrets


async def rotate_command(settings: Settings) -> int:
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        changed = await rotate_secrets(pool, Keyring(settings.secret_keys))
    finally:
        await pool.close()
    print(f"re-encrypted {changed} secrets under key {settings.secret_keys[-1][0]!r}")
    return 0
