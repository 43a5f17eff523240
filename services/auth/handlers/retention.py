"""Retention: expired single-use links, page sessions and pending enrolments are deleted."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from ...common.logs import get_logger
from ...common.pages import EXPIRED_KEPT
from .. import domain, store
from .context import now

log = get_logger("auth")


async def purge_expired(pool: asyncpg.Pool, at: datetime | None = None) -> dict[str, int]:
    """Delete what expired more than `EXPIRED_KEPT` before `at` (default now); how many rows per table."""
    deleted = await store.purge_expired(pool, (at or now()) - EXPIRED_KEPT, links_kept=domain.PAGE_SESSION_TTL)
    if any(deleted.values()):
        log.info("auth_expired_purged", **deleted)
    return deleted
