"""Retention: expired single-use links, page sessions and pending enrolments are deleted, and old logins."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from ...common.logs import get_logger
from ...common.pages import EXPIRED_KEPT
from .. import domain, store
from .context import now

log = get_logger("auth")


async def purge_expired(pool: asyncpg.Pool, logins_kept: timedelta, at: datetime | None = None) -> dict[str, int]:
    """Delete what expired more than `EXPIRED_KEPT` before `at` (default now), and logins `logins_kept`
    after they expired (MFA_LOGIN_RETENTION_DAYS); how many rows per table."""
    at = at or now()
    tokens_before = at - EXPIRED_KEPT
    deleted = await store.purge_expired(pool, tokens_before, tokens_before - domain.PAGE_SESSION_TTL, at - logins_kept)
    if any(deleted.values()):
        log.info("auth_expired_purged", **deleted)
    return deleted
