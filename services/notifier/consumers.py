"""Events in: one durable queue bound to every event type that asks for mail."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from ..common.consumer import DEFAULT_RETRY_DELAYS, Consumer
from ..common.runtime import Runtime
from ..common.web import RUNTIME
from .domain import HANDLED_TYPES
from .handlers import Notifier
from .keys import CONSUMER_OPTIONS, NOTIFIER, PREFETCH
from .store import SCHEMA

# PREFETCH in-flight events, each holding a database connection while its mail goes out; the
# notifier's own pool has POOL_SPARE more, so journal writes (on their own connection) never wait long.
POOL_SPARE = 4


def notifier_consumer(
    runtime: Runtime,
    notifier: Notifier,
    *,
    pool: asyncpg.Pool | None = None,
    queue: str | None = None,
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
    prefetch: int = PREFETCH,
) -> Consumer:
    """The notifier's consumer; tests pass their own queue name and shorter retry delays."""
    return Consumer(
        runtime,
        party="notifier",
        pool=pool or notifier.journal,
        schema=SCHEMA,
        queue=queue or runtime.queue("notifier"),
        handlers={event_type: notifier.handle for event_type in HANDLED_TYPES},
        prefetch=prefetch,
        retry_delays=retry_delays,
    )


def build_consumers(app: web.Application) -> list[Consumer]:
    """The notifier's one consumer, with the app's notifier and consumer options."""
    options = app[CONSUMER_OPTIONS]
    return [notifier_consumer(app[RUNTIME], app[NOTIFIER], queue=options.queue, retry_delays=options.retry_delays,
                              prefetch=options.prefetch)]
