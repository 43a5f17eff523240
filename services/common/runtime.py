"""Process-wide resources: settings, the database pool and the broker connection.

Opened once in the process's lifetime (never at import) and shared by every service app
that runs in the process; `mfa run all` runs four apps on one Runtime.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg

from .apikeys import KeyCache
from .broker import Broker
from .config import Settings
from .db import create_pool
from .outbox import OutboxSignal


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel a background task of ours and wait until it has finished."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


@dataclass
class Runtime:
    """What a service needs from the outside world; tests build one per test run."""

    settings: Settings
    pool: asyncpg.Pool | None = None
    broker: Broker | None = None
    keys: KeyCache | None = field(default=None, repr=False)
    signal: OutboxSignal = field(default_factory=OutboxSignal, repr=False)
    _signal_task: asyncio.Task | None = field(default=None, repr=False)

    async def open(self, *, pool_size: int = 10) -> Runtime:
        self.pool = await create_pool(
            self.settings.database_url, min_size=2, max_size=pool_size, on_release=self.signal.released
        )
        self._signal_task = asyncio.create_task(self.signal.run(self.pool), name="outbox-signal")
        self.keys = KeyCache(self.pool)
        self.broker = Broker(self.settings.amqp_url, self.settings.exchange)
        try:
            await self.broker.connect()
        except Exception:
            await self._stop_signal()
            await self.pool.close()
            raise
        return self

    async def _stop_signal(self) -> None:
        await cancel_and_wait(self._signal_task)
        self._signal_task = None

    async def close(self) -> None:
        await self._stop_signal()
        if self.broker is not None:
            await self.broker.close()
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), 5)
            except TimeoutError:
                # A connection still held after in-flight work had its chance: exit anyway.
                self.pool.terminate()

    def queue(self, name: str) -> str:
        """The queue name for a consumer, with the configured prefix (tests use unique ones)."""
        return f"{self.settings.queue_prefix}{name}"
