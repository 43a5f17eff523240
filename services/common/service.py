"""What each service declares, and the background workers every service runs beside its HTTP app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .consumer import Consumer
from .db import MigrationSet
from .logs import get_logger
from .outbox import OutboxRelay
from .runtime import Runtime, cancel_and_wait
from .web import RUNTIME

log = get_logger("service")

# Every service's consumers come from one kind of factory: its app (runtime and app keys inside).
ConsumerFactory = Callable[[web.Application], list[Consumer]]


@dataclass(frozen=True)
class ServiceSpec:
    """A service: its name, schema, migrations, port settings, app and consumer factories, and whether it publishes.

    `publishes` (the service writes an outbox) decides whether a relay runs for it, inline or
    in `mfa relay`; the service's broker user is its `name`.
    """

    name: str
    schema: str
    migrations: Path
    port_setting: str
    create_app: Callable[[Runtime], web.Application]
    consumers: ConsumerFactory
    publishes: bool
    pool_size: int = 10  # this service's share of the process's one database pool
    extra_port_settings: tuple[str, ...] = ()  # other ports it listens on (named when one is taken)

    @property
    def migration_set(self) -> MigrationSet:
        return MigrationSet.for_service(self.schema, self.migrations)

    @property
    def port_settings(self) -> tuple[str, ...]:
        return (self.port_setting, *self.extra_port_settings)


def workers_ctx(spec: ServiceSpec):
    """A cleanup_ctx that runs the service's consumers, and its outbox relay when it publishes inline.

    On shutdown consumers stop first (no new messages, in-flight ones finish and are acked),
    then the relay publishes what those handlers committed and stops.
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        runtime = app[RUNTIME]
        inline = spec.publishes and runtime.settings.relay_mode == "inline"  # else `mfa relay` publishes it
        relay_worker = (
            OutboxRelay(runtime.pool, runtime.broker_for(spec.name), spec.schema, signal=runtime.signal)
            if inline else None
        )
        relay_task = asyncio.create_task(relay_worker.run(), name=f"{spec.schema}-relay") if relay_worker else None
        started: list[Consumer] = []
        try:
            for consumer in spec.consumers(app):
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
                    log.warning("relay_stop_timeout", schema=spec.schema)

    return ctx


def periodic_ctx(name: str, interval: float, job: Callable[[web.Application], Awaitable[object]]):
    """A cleanup_ctx that runs `job(app)` now and every `interval` seconds for the app's lifetime.

    A round that fails (the database away, say) is logged and tried again next round; on
    shutdown a round in progress may finish for up to 5 s, then it is cancelled.
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()

        async def loop() -> None:
            while not stop.is_set():
                try:
                    await job(app)
                except Exception as exc:  # noqa: BLE001 - the next round tries again
                    log.warning("periodic_job_failed", job=name, error=f"{type(exc).__name__}: {exc}")
                try:
                    await asyncio.wait_for(stop.wait(), interval)
                except TimeoutError:
                    pass

        task = asyncio.create_task(loop(), name=name)
        try:
            yield
        finally:
            stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), 5)
            except TimeoutError:
                log.warning("periodic_job_stop_timeout", job=name)
                await cancel_and_wait(task)

    return ctx
