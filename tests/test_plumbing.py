"""Process plumbing: the pool lends connections in the order they were asked for; the relay setting."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from services.common.db import create_pool


async def test_connections_are_lent_in_the_order_they_were_asked_for(settings):
    """40 clients share 2 connections; nobody is served before someone who asked earlier.

    asyncpg's own pool fails this: about one grant in eight went to a later asker.
    """
    pool = await create_pool(settings.database_url, min_size=2, max_size=2)
    asks = itertools.count()
    grants: list[int] = []

    async def client(i: int) -> None:
        for _ in range(10):
            ask = next(asks)
            async with pool.acquire() as conn:
                grants.append(ask)
                await conn.fetchval("SELECT $1::int", i)

    try:
        await asyncio.gather(*(client(i) for i in range(40)))
    finally:
        pool.terminate()
    assert len(grants) == 400
    assert [b for a, b in itertools.pairwise(grants) if b < a] == []


async def test_permits_come_back_after_errors_timeouts_and_double_release(settings):
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        with pytest.raises(ZeroDivisionError):
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
                raise ZeroDivisionError  # the caller's own error while it holds the connection
        held = await pool.acquire()
        with pytest.raises(TimeoutError):
            await pool.acquire(timeout=0.05)
        await pool.release(held)
        await pool.release(held)  # a second release of the same connection frees no extra permit
        assert await pool.fetchval("SELECT 41 + 1") == 42
        first = await pool.acquire(timeout=1)
        with pytest.raises(TimeoutError):
            await pool.acquire(timeout=0.05)  # still exactly one connection to lend
        await pool.release(first)
    finally:
        pool.terminate()


def test_relay_mode_setting():
    from services.common.config import ConfigError, Settings

    assert Settings.from_env({}).relay_mode == "inline"
    assert Settings.from_env({"MFA_RELAY": "Separate"}).relay_mode == "separate"
    with pytest.raises(ConfigError, match="MFA_RELAY must be inline or separate"):
        Settings.from_env({"MFA_RELAY": "elsewhere"})
