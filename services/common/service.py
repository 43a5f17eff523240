"""What each service declares, and the background workers every service runs beside its HTTP app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .consumer import Consumer
from .db import MigrationSet
from .logs import get_logger
from .outbox import OutboxRelay
from .runtime import Runtime
from .web import RUNTIME

log = get_logger("service")


@dataclass(frozen=True)
class ServiceSpec:
    """A service: its name, schema, migrations, port setting and app factory."""

    name: str
    schema: str
    migrations: Path
    port_setting: str
    create_app: Callable[[Runtime], web.Application]
    pool_size: int = 10  # this service's share of the process's one database pool
    publishes: bool = True  # has an outbox for `mfa relay` to publish

    @property
    def migration_set(self) -> MigrationSet:
        return MigrationSet.for_service(self.schema, self.migrations)


def workers_ctx(schema: str, consumers: Callable[[Runtime], list[Consumer]], *, relay: bool = True):
    """A cleanup_ctx that runs the schema's outbox relay and the given consumers for the app's lifetime.

    On shutdown consumers stop first (no new messages, in-flight ones finish and are acked),
    then the relay publishes what those handlers committed and stops.
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        runtime = app[RUNTIME]
        assert runtime.pool is not None and runtime.broker is not None
        inline = relay and runtime.settings.relay_mode == "inline"  # else `mfa relay` publishes this outbox
        relay_worker = OutboxRelay(runtime.pool, runtime.broker, schema, signal=runtime.signal) if inline else None
        relay_task = asyncio.create_task(relay_worker.run(), name=f"{schema}-relay") if relay_worker else None
        started: list[Consumer] = []
        try:
            for consumer in consumers(runtime):
                await consumer.start()
                started.append(consumer)
            yield
        finally:
            await asyncio.gather(*(consumer.stop(timeout=3.0) for consumer in started))
            if relay_worker and relay_task:
                relay_worker.stop()
                try:
                    await asyncio.wait_for(relay_task, 2)
                except TimeoutError:
                    log.warning("relay_stop_timeout", schema=schema)

    return ctx
