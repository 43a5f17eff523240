"""Sharing a consumer's queue partitions among its replicas, through PostgreSQL advisory locks.

Each replica of a consumer holds one "member" lock (so every replica can count the others)
and one lock per partition it consumes. Every `interval` it computes its fair share,
ceil(partitions / replicas): above it, it gives partitions back (stops consuming them, lets
their messages in flight settle, then unlocks); below it, it takes free ones. Session locks
vanish with their connection, so a replica that dies frees its partitions for the others.
The broker keeps the guarantee while a lock changes hands: every partition queue has a
single active consumer, so even two replicas subscribed at once never both receive.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections.abc import Awaitable, Callable

import asyncpg

from .logs import get_logger

log = get_logger("lease")

MAX_REPLICAS = 256


def lock_class(kind: str, name: str) -> int:
    """The first key of the advisory locks of one kind for one consumer queue."""
    return zlib.crc32(f"{kind}:{name}".encode()) & 0x7FFFFFFF


class PartitionLease:
    """Takes and gives back partitions of one consumer queue; calls `take`/`give_back` for each."""

    def __init__(
        self,
        database_url: str,
        name: str,
        partitions: int,
        *,
        take: Callable[[int], Awaitable[None]],
        give_back: Callable[[int], Awaitable[None]],
        interval: float = 1.0,
    ) -> None:
        self.database_url = database_url
        self.name = name
        self.partitions = partitions
        self.interval = interval
        self._take = take
        self._give_back = give_back
        self._members = lock_class("replica", name)
        self._parts = lock_class("partition", name)
        self._conn: asyncpg.Connection | None = None
        self.held: set[int] = set()
        self._slot: int | None = None

    async def balance(self) -> None:
        """One round: join, count the replicas, give back or take partitions toward a fair share."""
        if self._conn is None or self._conn.is_closed():
            await self._lost()
            self._conn = await asyncpg.connect(self.database_url, timeout=5)
        conn = self._conn
        if self._slot is None:
            for slot in range(MAX_REPLICAS):
                if await conn.fetchval("SELECT pg_try_advisory_lock($1::int, $2::int)", self._members, slot):
                    self._slot = slot
                    break
            else:
                return  # more replicas than slots: this one stands by
        replicas = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND granted"
            " AND classid = $1::int::oid AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            self._members,
        )
        share = math.ceil(self.partitions / max(1, replicas))
        for part in sorted(self.held, reverse=True)[: max(0, len(self.held) - share)]:
            await self._give_back(part)
            self.held.discard(part)
            await conn.fetchval("SELECT pg_advisory_unlock($1::int, $2::int)", self._parts, part)
        start = self._slot % self.partitions  # replicas start looking at different partitions
        for offset in range(self.partitions):
            if len(self.held) >= share:
                break
            part = (start + offset) % self.partitions
            if part in self.held:
                continue
            if await conn.fetchval("SELECT pg_try_advisory_lock($1::int, $2::int)", self._parts, part):
                self.held.add(part)
                await self._take(part)

    async def run(self) -> None:
        """Balance every `interval` until cancelled; a lost database connection gives everything back."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.balance()
            except Exception as exc:  # the database or the broker away: start over once they are back
                log.warning("partition_lease_failed", queue=self.name, error=f"{type(exc).__name__}: {exc}")
                try:
                    await self._lost()
                except Exception as lost_exc:
                    log.warning("partition_lease_reset_failed", queue=self.name, error=str(lost_exc))

    async def _lost(self) -> None:
        """The locks went with the connection: stop consuming what they covered."""
        for part in sorted(self.held):
            await self._give_back(part)
        self.held.clear()
        self._slot = None
        if self._conn is not None and not self._conn.is_closed():
            self._conn.terminate()
        self._conn = None

    async def close(self) -> None:
        """Give every partition back and leave (the locks end with the connection)."""
        for part in sorted(self.held):
            await self._give_back(part)
        self.held.clear()
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
        self._conn = None
