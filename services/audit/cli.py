"""`mfa audit verify`: recompute the audit hash chain from the command line."""

from __future__ import annotations

import sys

import asyncpg

from ..common.config import Settings
from ..common.db import create_pool, redact_url
from .handlers import Verification, verify


def describe(result: Verification) -> str:
    """The human sentence for a verification result."""
    if result.broken is None:
        return (
            f"audit chain verified: {result.rows} rows, head seq {result.head_seq}, "
            f"head hash {result.head_hash.hex()}"
        )
    b = result.broken
    event = f" (event {b.event_id})" if b.event_id else ""
    return f"audit chain BROKEN at row {b.seq}{event}: {b.reason}: {b.detail} ({result.rows} rows before it verify)"


async def verify_command(settings: Settings) -> int:
    """Print the verification result; 0 when the chain verifies, 1 naming the first broken row."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        try:
            result = await verify(pool)
        except asyncpg.UndefinedTableError:
            print(f"mfa: no audit log in {redact_url(settings.database_url)}; run `mfa migrate` first", file=sys.stderr)
            return 2
    finally:
        await pool.close()
    print(describe(result))
    return 0 if result.ok else 1
