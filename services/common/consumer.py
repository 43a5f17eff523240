"""The consumer loop: durable quorum queues, idempotent handlers, retries with delays, parking.

For a queue `Q` the topology is:

- `Q`: quorum queue bound to the exchange by each handled event type;
- `Q.retry.<n>`: one queue per delay, whose TTL dead-letters the message back to `Q`;
- `Q.parked`: messages that are malformed, fail their schema or failed every attempt.

A handler runs inside one database transaction together with the insert of the event id
into `<schema>.processed_events`; the message is acknowledged only after that commit, so a
redelivered event finds its id and has no second effect. Messages of one subject (account)
are handled in arrival order; different subjects run concurrently up to the prefetch.
A lost database connection uses up no attempt: the message is handed back to the queue
after a pause, so a PostgreSQL restart delays events and parks none.

Batch mode (optional, `batch_handler=`): events are handed to one handler in batches, in
arrival order, each batch in ONE transaction with the ids of its events; the messages are
acknowledged after that commit. A batch that fails is replayed one event at a time through
the normal path, so a bad event is retried or parked alone and the others still land.
It suits appenders that serialise on a lock (the audit hash chain): one commit per batch
instead of one per event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import asyncpg
import structlog
from aio_pika.abc import AbstractIncomingMessage

from . import inbox
from .broker import Broker
from .errors import DATABASE_UNAVAILABLE
from .events import EventError, parse_event
from .logs import get_logger
from .metrics import EVENTS_CONSUMED, EVENTS_PARKED, EVENTS_RETRIED

log = get_logger("consumer")

Handler = Callable[[asyncpg.Connection, dict[str, Any]], Awaitable[None]]
BatchHandler = Callable[[asyncpg.Connection, list[dict[str, Any]]], Awaitable[None]]
DEFAULT_RETRY_DELAYS = (1.0, 5.0, 30.0, 120.0)


UNAVAILABLE_PAUSE = 0.5


def _database_unavailable(exc: BaseException) -> bool:
    """True for a lost or refused database connection (as opposed to an error of the handler)."""
    return isinstance(exc, DATABASE_UNAVAILABLE)


class PermanentError(Exception):
    """Raised by a handler for an event it can never process: the message is parked at once."""


@dataclass
class _Pending:
    """A parsed message waiting for its batch (batch mode only)."""

    message: AbstractIncomingMessage
    event: dict[str, Any]
    attempt: int
    started: float


class Consumer:
    """Consumes one queue and dispatches each event type to its handler."""

    def __init__(
        self,
        *,
        broker: Broker,
        pool: asyncpg.Pool,
        schema: str,
        queue: str,
        handlers: dict[str, Handler],
        prefetch: int = 64,
        retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
        bind_all: bool = False,
        batch_handler: BatchHandler | None = None,
        batched: bool = False,
        max_batch: int = 256,
    ) -> None:
        """`handlers` maps event types to handlers; `"*"` handles any type (with `bind_all`).

        With `batch_handler`, every event goes to it instead, in batches of at most
        `max_batch` (see the module docstring); `handlers` then only names the bound types.
        `batched=True` runs the per-type `handlers` that way: one by one, in arrival order,
        inside each batch's transaction. It suits handlers that only touch the database.
        """
        if batched and batch_handler is None:
            batch_handler = self._each_in_order
        self.broker = broker
        self.pool = pool
        self.schema = schema
        self.queue_name = queue
        self.handlers = handlers
        self.prefetch = prefetch
        self.retry_delays = retry_delays
        self.bind_all = bind_all
        self.batch_handler = batch_handler
        self.max_batch = max(1, max_batch)
        self._pending: list[_Pending] = []
        self._draining = False
        self._unsettled: set[AbstractIncomingMessage] = set()
        self._channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._queue: aio_pika.abc.AbstractRobustQueue | None = None
        self._tag: str | None = None
        self._subject_locks: dict[str, asyncio.Lock] = {}
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def parked_queue(self) -> str:
        return f"{self.queue_name}.parked"

    def retry_queue(self, attempt: int) -> str:
        return f"{self.queue_name}.retry.{attempt}"

    async def start(self) -> None:
        """Declare the topology and start consuming."""
        self._channel = await self.broker.channel(prefetch=self.prefetch)
        exchange = await self._channel.get_exchange(self.broker.exchange_name)
        self._queue = await self._channel.declare_queue(
            self.queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        if self.bind_all:
            await self._queue.bind(exchange, "#")
        else:
            for event_type in self.handlers:
                if event_type != "*":
                    await self._queue.bind(exchange, event_type)
        await self._channel.declare_queue(self.parked_queue, durable=True, arguments={"x-queue-type": "quorum"})
        for attempt, delay in enumerate(self.retry_delays, start=1):
            await self._channel.declare_queue(
                self.retry_queue(attempt),
                durable=True,
                arguments={
                    "x-message-ttl": int(delay * 1000),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.queue_name,
                },
            )
        self._tag = await self._queue.consume(self._on_message)
        log.info("consumer_started", queue=self.queue_name, types=sorted(self.handlers) or ["#"])

    async def stop(self, timeout: float = 8.0) -> None:
        """Stop taking messages, let the ones in flight finish, close the channel."""
        if self._queue is not None and self._tag is not None:
            try:
                await self._queue.cancel(self._tag)
            except Exception as exc:  # the broker may already be gone; unacked messages return to the queue
                log.warning("consumer_cancel_failed", queue=self.queue_name, error=str(exc))
            self._tag = None
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("consumer_stop_timeout", queue=self.queue_name, in_flight=self._in_flight)
        if self._channel is not None:
            try:
                await self._channel.close()
            except Exception as exc:
                log.warning("consumer_close_failed", queue=self.queue_name, error=str(exc))
            self._channel = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._in_flight += 1
        self._idle.clear()
        try:
            if self.batch_handler is not None:
                await self._enqueue(message)
            else:
                await self._process(message)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _process(self, message: AbstractIncomingMessage) -> None:
        started = time.perf_counter()
        attempt = int((message.headers or {}).get("x-attempt", 0) or 0)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(queue=self.queue_name, message_id=message.message_id)
        try:
            event = parse_event(message.body)
        except EventError as exc:
            await self._park(message, "invalid", str(exc), event_type=message.routing_key or "?")
            return
        event_type = event["type"]
        structlog.contextvars.bind_contextvars(
            event_id=event["id"], event_type=event_type, correlation_id=event.get("correlationid")
        )
        handler = self.handlers.get(event_type) or self.handlers.get("*")
        subject = event.get("subject") or event["id"]
        lock = self._subject_locks.setdefault(subject, asyncio.Lock())
        try:
            async with lock:
                outcome = await self._handle(handler, event)
        except PermanentError as exc:
            await self._park(message, "rejected", str(exc), event_type=event_type)
            return
        except Exception as exc:
            await self._retry(message, attempt, event_type, exc)
            return
        finally:
            if not lock.locked() and subject in self._subject_locks and not lock._waiters:  # noqa: SLF001
                self._subject_locks.pop(subject, None)
        await message.ack()
        self._consumed(event_type, outcome, attempt, started)

    async def _enqueue(self, message: AbstractIncomingMessage) -> None:
        """Batch mode: park what does not parse, queue the rest; the first caller drains the queue.

        A message stays in `_unsettled` until it is acked, parked or sent to retry, so a batch
        never acks (with `multiple`) past a delivery it has not settled.
        """
        self._unsettled.add(message)  # before any await: deliveries are recorded in tag order
        started = time.perf_counter()
        attempt = int((message.headers or {}).get("x-attempt", 0) or 0)
        try:
            event = parse_event(message.body)
        except EventError as exc:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(queue=self.queue_name, message_id=message.message_id)
            try:
                await self._park(message, "invalid", str(exc), event_type=message.routing_key or "?")
            finally:
                self._unsettled.discard(message)
            return
        self._pending.append(_Pending(message, event, attempt, started))
        if self._draining:
            return  # the delivery that is draining settles this one; stop() waits for that drain
        # Messages delivered while a batch commits pile up and form the next batch: no timer needed.
        self._draining = True
        try:
            while self._pending:
                try:
                    # One connection for the whole drain: each release to the pool costs a reset round trip.
                    async with self.pool.acquire() as conn:
                        while self._pending:
                            batch = self._pending[: self.max_batch]
                            del self._pending[: len(batch)]
                            await self._run_batch(conn, batch)
                except Exception as exc:
                    # No usable connection: what waits takes the one-by-one path and its retries.
                    structlog.contextvars.clear_contextvars()
                    log.warning("batch_drain_failed", queue=self.queue_name, error=f"{type(exc).__name__}: {exc}")
                    batch = self._pending[:]
                    self._pending.clear()
                    await self._replay_one_by_one(batch)
        finally:
            self._draining = False
            for left in self._pending:  # only when this drain was cancelled: unacked, the broker redelivers
                self._unsettled.discard(left.message)
            self._pending.clear()

    async def _run_batch(self, conn: asyncpg.Connection, batch: list[_Pending]) -> None:
        try:
            outcomes = await self._handle_batch(conn, [item.event for item in batch])
        except Exception as exc:
            structlog.contextvars.clear_contextvars()  # the batch, not the message that started it
            log.warning(
                "event_batch_failed", queue=self.queue_name, size=len(batch), error=f"{type(exc).__name__}: {exc}"
            )
            await self._replay_one_by_one(batch)
            return
        acked = await self._ack_batch(batch)
        # The same summary line per message as the single path, without re-binding the log
        # context for each one (this loop runs thousands of times a second).
        structlog.contextvars.clear_contextvars()
        for item, outcome, ok in zip(batch, outcomes, acked, strict=True):
            if ok:
                event = item.event
                EVENTS_CONSUMED.labels(self.queue_name, event["type"], outcome).inc()
                log.info(
                    "event_consumed",
                    queue=self.queue_name,
                    message_id=item.message.message_id,
                    event_id=event["id"],
                    event_type=event["type"],
                    correlation_id=event.get("correlationid"),
                    outcome=outcome,
                    attempt=item.attempt,
                    duration_ms=round((time.perf_counter() - item.started) * 1000, 2),
                )

    async def _ack_batch(self, batch: list[_Pending]) -> list[bool]:
        """Ack a committed batch: one `multiple` ack when no older delivery on its channel is unsettled."""
        messages = [item.message for item in batch]
        last = messages[-1]
        try:
            channel = last.channel
            members = set(messages)
            covers = last.delivery_tag is not None and all(m.channel is channel for m in messages) and not any(
                m not in members and m.delivery_tag is not None and m.delivery_tag <= last.delivery_tag
                and m.channel is channel
                for m in self._unsettled
            )
        except Exception:  # a closed channel: acks below fail and the broker redelivers
            covers = False
        acked = [False] * len(messages)
        try:
            if covers:
                await last.ack(multiple=True)
                acked = [True] * len(messages)
            else:
                for i, message in enumerate(messages):
                    await message.ack()
                    acked[i] = True
        except Exception as exc:  # channel gone: the broker redelivers, the ids are already recorded
            log.warning("ack_failed", queue=self.queue_name, error=str(exc))
        finally:
            self._unsettled.difference_update(messages)
        return acked

    async def _each_in_order(self, conn: asyncpg.Connection, events: list[dict[str, Any]]) -> None:
        """The batch handler behind `batched=True`: each event's own handler, in arrival order."""
        for event in events:
            handler = self.handlers.get(event["type"]) or self.handlers.get("*")
            if handler is not None:
                await handler(conn, event)

    async def _handle_batch(self, conn: asyncpg.Connection, events: list[dict[str, Any]]) -> list[str]:
        assert self.batch_handler is not None
        async with conn.transaction():
            new_ids = await inbox.claim_many(conn, self.schema, self.queue_name, events)
            fresh: list[dict[str, Any]] = []
            outcomes: list[str] = []
            for event in events:
                if event["id"] in new_ids:
                    new_ids.discard(event["id"])  # a second copy within the batch is a duplicate
                    fresh.append(event)
                    outcomes.append("handled")
                else:
                    outcomes.append("duplicate")
            if fresh:
                await self.batch_handler(conn, fresh)
            return outcomes

    async def _replay_one_by_one(self, batch: list[_Pending]) -> None:
        assert self.batch_handler is not None
        batch_handler = self.batch_handler

        async def single(conn: asyncpg.Connection, event: dict[str, Any]) -> None:
            await batch_handler(conn, [event])

        for item in batch:
            self._bind_message(item)
            event_type = item.event["type"]
            try:
                try:
                    outcome = await self._handle(single, item.event)
                except PermanentError as exc:
                    await self._park(item.message, "rejected", str(exc), event_type=event_type)
                    continue
                except Exception as exc:
                    await self._retry(item.message, item.attempt, event_type, exc)
                    continue
                await item.message.ack()
            except Exception as exc:  # channel gone: unacked, the broker redelivers; the rest still go
                log.warning("settle_failed", queue=self.queue_name, error=f"{type(exc).__name__}: {exc}")
                continue
            finally:
                self._unsettled.discard(item.message)
            self._consumed(event_type, outcome, item.attempt, item.started)

    def _bind_message(self, item: _Pending) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            queue=self.queue_name,
            message_id=item.message.message_id,
            event_id=item.event["id"],
            event_type=item.event["type"],
            correlation_id=item.event.get("correlationid"),
        )

    def _consumed(self, event_type: str, outcome: str, attempt: int, started: float) -> None:
        EVENTS_CONSUMED.labels(self.queue_name, event_type, outcome).inc()
        log.info(
            "event_consumed",
            outcome=outcome,
            attempt=attempt,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _handle(self, handler: Handler | None, event: dict[str, Any]) -> str:
        async with self.pool.acquire() as conn, conn.transaction():
            if not await inbox.claim(conn, self.schema, self.queue_name, event):
                return "duplicate"
            if handler is not None:
                await handler(conn, event)
            return "handled"

    async def _republish(self, message: AbstractIncomingMessage, routing_key: str, headers: dict[str, Any]) -> None:
        assert self._channel is not None
        copy = aio_pika.Message(
            message.body,
            headers={**(message.headers or {}), **headers},
            content_type=message.content_type,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            type=message.type,
        )
        await self._channel.default_exchange.publish(copy, routing_key=routing_key, timeout=10)

    async def _retry(self, message: AbstractIncomingMessage, attempt: int, event_type: str, exc: Exception) -> None:
        if _database_unavailable(exc):
            # Not the event's fault: it must not use up its attempts and end parked because
            # PostgreSQL restarted. Hold the delivery a moment (backpressure), then hand it back.
            log.warning("database_unavailable_requeue", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(UNAVAILABLE_PAUSE)
            try:
                await message.nack(requeue=True)
            except Exception as nack_exc:  # channel gone: the broker redelivers anyway
                log.warning("requeue_failed", error=str(nack_exc))
            return
        next_attempt = attempt + 1
        if next_attempt > len(self.retry_delays):
            await self._park(message, "exhausted", f"{type(exc).__name__}: {exc}", event_type=event_type)
            return
        try:
            await self._republish(message, self.retry_queue(next_attempt), {"x-attempt": next_attempt})
        except Exception as pub_exc:
            # Could not schedule the retry: leave it to the broker to redeliver.
            log.warning("retry_publish_failed", error=str(pub_exc))
            await message.nack(requeue=True)
            return
        await message.ack()
        EVENTS_RETRIED.labels(self.queue_name, event_type).inc()
        log.warning(
            "event_retry_scheduled",
            attempt=next_attempt,
            delay_s=self.retry_delays[next_attempt - 1],
            error=f"{type(exc).__name__}: {exc}",
        )

    async def _park(self, message: AbstractIncomingMessage, reason: str, detail: str, *, event_type: str) -> None:
        try:
            await self._republish(message, self.parked_queue, {"x-parked-reason": reason, "x-parked-detail": detail[:500]})
        except Exception as pub_exc:
            log.warning("park_publish_failed", error=str(pub_exc))
            await message.nack(requeue=True)
            return
        await message.ack()
        EVENTS_PARKED.labels(self.queue_name, event_type, reason).inc()
        EVENTS_CONSUMED.labels(self.queue_name, event_type, "parked").inc()
        log.error("event_parked", reason=reason, detail=detail[:500])
