"""Process-wide resources: settings, the database pool and the broker connections.

Opened once in the process's lifetime (never at import) with :meth:`Runtime.open`, and shared
by every service app that runs in the process; `mfa run all` runs four apps on one Runtime.
Each service publishes and consumes as its own broker user, so the runtime holds one
connection per distinct user among the services it was opened for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .apikeys import KeyCache
from .broker import Broker
from .config import Settings
from .db import FairPool, create_pool
from .outbox import OutboxSignal
from .producers import Publishers


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
    """What a service needs from the outside world, complete; tests open one per test run.

    `broker` is the connection of the first party the runtime was opened for (MFA_AMQP_URL's
    user when opened for none: scripts and tests); `brokers` maps each party to its own.
    """

    settings: Settings
    pool: FairPool
    broker: Broker
    keys: KeyCache = field(repr=False)
    brokers: Mapping[str, Broker] = field(default_factory=dict, repr=False)
    signal: OutboxSignal = field(default_factory=OutboxSignal, repr=False)
    _signal_task: asyncio.Task | None = field(default=None, repr=False)

    @classmethod
    async def open(cls, settings: Settings, *, parties: Sequence[str] = (), pool_size: int = 10) -> Runtime:
        """Open the pool and a broker connection per distinct user of `parties`; all or nothing."""
        urls = {party: settings.amqp_url_for(party) for party in parties}  # a missing password fails first
        signal = OutboxSignal()
        pool = await create_pool(settings.database_url, min_size=2, max_size=pool_size, on_release=signal.released)
        by_url: dict[str, Broker] = {}
        try:
            for url in dict.fromkeys([*urls.values()] or [settings.amqp_url]):
                by_url[url] = await Broker.open(url, settings.exchange)
        except BaseException:
            await asyncio.gather(*(b.close() for b in by_url.values()))
            await pool.close()
            raise
        brokers = {party: by_url[url] for party, url in urls.items()}
        runtime = cls(settings, pool, next(iter(by_url.values())), KeyCache(pool), brokers, signal)
        runtime._signal_task = asyncio.create_task(signal.run(pool), name="outbox-signal")
        return runtime

    def broker_for(self, party: str) -> Broker:
        """The connection `party` publishes and consumes on (the default one when not opened for it)."""
        return self.brokers.get(party, self.broker)

    @property
    def publishers(self) -> Publishers:
        return Publishers.from_settings(self.settings)

    @property
    def broker_connected(self) -> bool:
        return all(b.connected for b in {id(b): b for b in (self.broker, *self.brokers.values())}.values())

    async def close(self) -> None:
        await cancel_and_wait(self._signal_task)
        self._signal_task = None
        for broker in {id(b): b for b in (self.broker, *self.brokers.values())}.values():
            await broker.close()
        try:
            await asyncio.wait_for(self.pool.close(), 5)
        except TimeoutError:
            # A connection still held after in-flight work had its chance: exit anyway.
            self.pool.terminate()

    def queue(self, name: str) -> str:
        """The queue name for a consumer, with the configured prefix (tests use unique ones)."""
        return self.settings.queue(name)
