"""Events in: one durable queue bound to every event type that asks for mail."""

from __future__ import annotations

import asyncpg

from ..common.consumer import DEFAULT_RETRY_DELAYS, Consumer
from ..common.runtime import Runtime
from .domain import HANDLED_TYPES
from .handlers import Notifier
from .store import SCHEMA

# In-flight events, each holding a database connection while its mail goes out; the notifier's
# own pool has POOL_SPARE more, so journal writes (on their own connection) never wait long.
PREFETCH = 16
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
        broker=runtime.broker,
        pool=pool or notifier.journal,
        schema=SCHEMA,
        queue=queue or runtime.queue("notifier"),
        handlers={event_type: notifier.handle for event_type in HANDLED_TYPES},
        prefetch=prefetch,
        retry_delays=retry_delays,
    )
