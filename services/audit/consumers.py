"""Events in: the audit queue is bound to `#` and appends every event to the hash chain.

Appends serialise on the chain head, so the consumer runs in batch mode: one transaction
(and one lock hold) per batch of deliveries instead of one per event.
"""

from __future__ import annotations

from aiohttp import web

from ..common.consumer import BatchConsumer, Consumer
from ..common.web import RUNTIME
from .handlers import batch_handler, redaction_key

QUEUE = "audit"
PREFETCH = 512
MAX_BATCH = 256


def build_consumers(app: web.Application) -> list[Consumer]:
    """The audit consumer: every event type, batched, on `<prefix>.audit`."""
    runtime = app[RUNTIME]
    return [
        BatchConsumer(
            runtime,
            party="audit",
            schema="audit",
            queue=runtime.queue(QUEUE),
            handlers={},
            bind_all=True,
            batch_handler=batch_handler(redaction_key(runtime.settings.secret_keys)),
            prefetch=PREFETCH,
            max_batch=MAX_BATCH,
        )
    ]
