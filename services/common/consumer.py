"""The consumer loop: partitioned quorum queues, idempotent handlers, retries with delays, parking.

For a consumer queue `Q` with N partitions (MFA_QUEUE_PARTITIONS) the topology is:

- `Q.in`: a headers exchange bound to the bus by each handled event type, routing each
  message by its `mfa-partition` header (the outbox partition of its subject, 0-15) to
  partition `mfa-partition mod N`; a message without the header (published by upstream's own
  means) goes through `Q.in.unpartitioned` to partition 0;
- `Q.p<i>`: quorum queues with a single active consumer, so one account's events are
  handled by one process at a time, in order, however many replicas run; the replicas share
  the partitions out among themselves (services/common/lease.py);
- `Q.retry.q<n>`: one quorum queue per delay, whose TTL dead-letters the message back through
  `Q.in`, at least once (classic `Q.retry.<n>` queues of earlier versions are deleted once empty);
- `Q.parked`: messages that are malformed, fail their schema, come from a party that may not
  publish their type (services/common/producers.py) or failed every attempt.

A handler runs inside one database transaction together with the insert of the event id
into `<schema>.processed_events`; the message is acknowledged only after that commit, so a
redelivered event finds its id and has no second effect. Messages of one subject (account)
are handled in arrival order; different subjects run concurrently up to the prefetch.
A lost database connection uses up no attempt: the message is handed back to the queue
after a pause, so a PostgreSQL restart delays events and parks none.

:class:`BatchConsumer` hands events over in batches, in arrival order, each batch in ONE
transaction with the ids of its events; the messages are acknowledged after that commit. A
batch that fails is replayed one event at a time through the normal path, so a bad event is
retried or parked alone and the others still land. It suits handlers that only touch the
database, and appenders that serialise on a lock (the audit hash chain): one commit per batch
instead of one per event.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aio_pika
import asyncpg
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustQueue

from . import inbox
from .broker import PARTITION_HEADER
from .errors import DATABASE_UNAVAILABLE
from .events import EventError, parse_event
from .lease import PartitionLease
from .logs import get_logger
from .metrics import EVENTS_CONSUMED, EVENTS_PARKED, EVENTS_RETRIED
from .outbox import PARTITIONS

if TYPE_CHECKING:
    from .runtime import Runtime

log = get_logger("consumer")

Handler = Callable[[asyncpg.Connection, dict[str, Any]], Awaitable[None]]
BatchHandler = Callable[[asyncpg.Connection, list[dict[str, Any]]], Awaitable[None]]
DEFAULT_RETRY_DELAYS = (1.0, 5.0, 30.0, 120.0)
PUBLISHER_HEADER = "x-publisher"  # on our own retry copies: the user who published the original


UNAVAILABLE_PAUSE = 0.5
SETTLE_SECONDS = 3.0  # in-flight messages of a partition given back to another replica


def _database_unavailable(exc: BaseException) -> bool:
    """True for a lost or refused database connection (as opposed to an error of the handler)."""
    return isinstance(exc, DATABASE_UNAVAILABLE)


class PermanentError(Exception):
    """Raised by a handler for an event it can never process: the message is parked at once."""


@dataclass
class _Pending:
    """A parsed message waiting for its batch (BatchConsumer only)."""

    message: AbstractIncomingMessage
    event: dict[str, Any]
    attempt: int
    started: float


class Consumer:
    """Consumes one queue's partitions and dispatches each event, one by one, to its type's handler."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        party: str,
        schema: str,
        queue: str,
        handlers: dict[str, Handler],
        prefetch: int = 64,
        retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
        bind_all: bool = False,
        pool: asyncpg.Pool | None = None,
    ) -> None:
        """`handlers` maps event types to handlers; `"*"` handles any type (with `bind_all`).

        `party` is whose broker user it consumes as (and whose retry copies it trusts);
        `pool` replaces the runtime's pool for the handlers' transactions.
        """
        self.broker = runtime.broker_for(party)
        self.publishers = runtime.publishers
        self.pool = pool or runtime.pool
        self.schema = schema
        self.queue_name = queue
        self.handlers = handlers
        self.partitions = runtime.settings.queue_partitions
        self.prefetch = prefetch
        self.retry_delays = retry_delays
        self.bind_all = bind_all
        self._lease = PartitionLease(runtime.settings.database_url, queue, self.partitions,
                                     take=self._take, give_back=self._give_back)
        self._lease_task: asyncio.Task | None = None
        # Delivered and not yet acked, parked or sent to retry, with the partition each came from.
        self._unsettled: dict[AbstractIncomingMessage, int] = {}
        self._settled = asyncio.Event()
        self._channel: AbstractRobustChannel | None = None
        self._queues: dict[int, AbstractRobustQueue] = {}
        self._tags: dict[int, str] = {}
        self._subject_locks: dict[str, asyncio.Lock] = {}

    @property
    def parked_queue(self) -> str:
        return f"{self.queue_name}.parked"

    @property
    def exchange_name(self) -> str:
        """The consumer's own headers exchange, bound into the bus."""
        return f"{self.queue_name}.in"

    def partition_queue(self, part: int) -> str:
        return f"{self.queue_name}.p{part}"

    def retry_queue(self, attempt: int) -> str:
        return f"{self.queue_name}.retry.q{attempt}"

    @property
    def consuming(self) -> set[int]:
        """The partitions this replica consumes now."""
        return set(self._tags)

    async def start(self) -> None:
        """Declare the topology, take this replica's share of the partitions and start consuming."""
        # Quorum queues count the prefetch per consumer: a replica holding every partition has
        # about `prefetch` messages in flight in all.
        self._channel = await self.broker.channel(prefetch=math.ceil(self.prefetch / self.partitions))
        await self._declare(self._channel)
        await self._lease.balance()
        self._lease_task = asyncio.create_task(self._lease.run(), name=f"{self.queue_name}-lease")
        log.info("consumer_started", queue=self.queue_name, types=sorted(self.handlers) or ["#"],
                 partitions=sorted(self.consuming))

    async def _declare(self, channel: AbstractRobustChannel) -> None:
        bus = await channel.get_exchange(self.broker.exchange_name)
        unpartitioned = await channel.declare_exchange(
            f"{self.exchange_name}.unpartitioned", aio_pika.ExchangeType.FANOUT, durable=True
        )
        inbound = await channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.HEADERS, durable=True,
            arguments={"alternate-exchange": unpartitioned.name},
        )
        for key in ["#"] if self.bind_all else [t for t in self.handlers if t != "*"]:
            await inbound.bind(bus, key)
        for part in range(self.partitions):
            queue = await channel.declare_queue(
                self.partition_queue(part), durable=True,
                arguments={"x-queue-type": "quorum", "x-single-active-consumer": True},
            )
            self._queues[part] = queue
            for origin in range(PARTITIONS):
                # Unbinding too: a binding left by an earlier partition count would copy messages.
                args = {"x-match": "all", PARTITION_HEADER: origin}
                if origin % self.partitions == part:
                    await queue.bind(inbound, arguments=args)
                else:
                    await queue.unbind(inbound, arguments=args)
        await self._queues[0].bind(unpartitioned)
        await channel.declare_queue(self.parked_queue, durable=True, arguments={"x-queue-type": "quorum"})
        for attempt, delay in enumerate(self.retry_delays, start=1):
            await channel.declare_queue(
                self.retry_queue(attempt),
                durable=True,
                arguments={
                    # Quorum, dead-lettering at least once: a classic queue's dead-lettering is at
                    # most once, and the chaos soak lost retries that expired while the partition
                    # queues were not back yet after a broker restart. At-least-once asks for
                    # reject-publish: a full queue refuses the copy, and the delivery is retried.
                    "x-queue-type": "quorum",
                    "x-message-ttl": int(delay * 1000),
                    "x-dead-letter-exchange": self.exchange_name,
                    "x-dead-letter-routing-key": self.queue_name,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )
        await self._retire_classic_retry_queues()

    async def _retire_classic_retry_queues(self) -> None:
        """Delete the classic `Q.retry.<n>` queues of earlier versions once they are empty.

        A queue cannot change its type, so the quorum retry queues have names of their own
        (`Q.retry.q<n>`). What still waits in an old one dead-letters back through `Q.in` when its
        TTL ends, consumers or not, so it empties by itself; a later start deletes it then.
        """
        for attempt in range(1, len(self.retry_delays) + 1):
            channel = await self.broker.channel()  # a refused delete closes its channel
            try:
                await channel.queue_delete(f"{self.queue_name}.retry.{attempt}", if_empty=True)
            except aio_pika.exceptions.AMQPError as exc:
                log.info("classic_retry_queue_kept", queue=f"{self.queue_name}.retry.{attempt}", reason=str(exc))
            finally:
                if not channel.is_closed:
                    await channel.close()

    async def _take(self, part: int) -> None:
        """Start consuming partition `part` (the lease holds its lock)."""
        if part in self._tags:
            return

        async def on_message(message: AbstractIncomingMessage) -> None:
            self._unsettled[message] = part  # before any await: deliveries are recorded in tag order
            await self._deliver(message)

        self._tags[part] = await self._queues[part].consume(on_message)
        log.info("partition_taken", queue=self.queue_name, partition=part)

    async def _give_back(self, part: int) -> None:
        """Stop consuming `part` and let its messages in flight settle, before the lease unlocks it."""
        tag = self._tags.pop(part, None)
        if tag is not None:
            try:
                await self._queues[part].cancel(tag)
            except Exception as exc:  # the broker may already be gone; unacked messages return to the queue
                log.warning("consumer_cancel_failed", queue=self.queue_name, partition=part, error=str(exc))
        try:
            await self._wait_settled(lambda: part not in self._unsettled.values(), SETTLE_SECONDS)
        except TimeoutError:
            log.warning("partition_settle_timeout", queue=self.queue_name, partition=part)
        log.info("partition_given_back", queue=self.queue_name, partition=part)

    async def _wait_settled(self, done: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self._settled.clear()
                await self._settled.wait()

    def _settle(self, message: AbstractIncomingMessage) -> None:
        if self._unsettled.pop(message, None) is not None:
            self._settled.set()

    async def stop(self, timeout: float = 8.0) -> None:
        """Stop taking messages, let the ones in flight finish, give the partitions back, close the channel."""
        if self._lease_task is not None:
            self._lease_task.cancel()
            try:
                await self._lease_task
            except asyncio.CancelledError:
                pass
            self._lease_task = None
        for part in list(self._tags):
            tag = self._tags.pop(part)
            try:
                await self._queues[part].cancel(tag)
            except Exception as exc:  # the broker may already be gone; unacked messages return to the queue
                log.warning("consumer_cancel_failed", queue=self.queue_name, error=str(exc))
        try:
            await self._wait_settled(lambda: not self._unsettled, timeout)
        except TimeoutError:
            log.warning("consumer_stop_timeout", queue=self.queue_name, in_flight=len(self._unsettled))
        await self._lease.close()  # cancelled consumers: nothing left to wait for
        if self._channel is not None:
            try:
                await self._channel.close()
            except Exception as exc:
                log.warning("consumer_close_failed", queue=self.queue_name, error=str(exc))
            self._channel = None

    def _refusal(self, message: AbstractIncomingMessage, event_type: str) -> str | None:
        """Why the party that published `message` may not publish `event_type`; None when it may.

        A copy this consumer sent to its own retry queue carries our user id and, in a
        header, the original publisher's: only we can publish as ourselves, so the header is
        believed on such copies and on no other message.
        """
        user_id = message.user_id
        headers = message.headers or {}
        if user_id == self.broker.user and PUBLISHER_HEADER in headers:
            original = headers[PUBLISHER_HEADER]
            user_id = original.decode() if isinstance(original, bytes) else (str(original) if original else None)
        return self.publishers.refusal(event_type, user_id)

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        try:
            await self._process(message)
        finally:
            self._settle(message)

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
        refusal = self._refusal(message, event_type)
        if refusal is not None:
            await self._park(message, "forbidden", refusal, event_type=event_type)
            return
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
        """A copy, as our own user, on the default exchange; the original publisher travels in a header."""
        if self._channel is None:
            raise ConnectionError("consumer stopped")
        publisher = (message.headers or {}).get(PUBLISHER_HEADER) if message.user_id == self.broker.user else None
        copy = aio_pika.Message(
            message.body,
            headers={**(message.headers or {}), **headers, PUBLISHER_HEADER: publisher or message.user_id or ""},
            content_type=message.content_type,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            type=message.type,
            user_id=self.broker.user,
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


class BatchConsumer(Consumer):
    """A consumer that handles the deliveries that piled up while the previous batch committed as one batch."""

    def __init__(self, runtime: Runtime, *, batch_handler: BatchHandler | None = None, max_batch: int = 256,
                 **kwargs: Any) -> None:
        """`batch_handler` gets each batch (default: every event's own handler, in arrival order).

        With a `batch_handler`, `handlers` only names the bound types.
        """
        super().__init__(runtime, **kwargs)
        self.batch_handler: BatchHandler = batch_handler or self._each_in_order
        self.max_batch = max(1, max_batch)
        self._pending: list[_Pending] = []
        self._draining = False

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        """Park what does not parse or comes from the wrong party, queue the rest; the first caller drains.

        A message stays in `_unsettled` until it is acked, parked or sent to retry, so a batch
        never acks (with `multiple`) past a delivery it has not settled.
        """
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
                self._settle(message)
            return
        refusal = self._refusal(message, event["type"])
        if refusal is not None:
            self._bind_message(_Pending(message, event, attempt, started))
            try:
                await self._park(message, "forbidden", refusal, event_type=event["type"])
            finally:
                self._settle(message)
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
                self._settle(left.message)
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
            for message in messages:
                self._settle(message)
        return acked

    async def _each_in_order(self, conn: asyncpg.Connection, events: list[dict[str, Any]]) -> None:
        """The default batch handler: each event's own handler, in arrival order."""
        for event in events:
            handler = self.handlers.get(event["type"]) or self.handlers.get("*")
            if handler is not None:
                await handler(conn, event)

    async def _handle_batch(self, conn: asyncpg.Connection, events: list[dict[str, Any]]) -> list[str]:
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
                self._settle(item.message)
            self._consumed(event_type, outcome, item.attempt, item.started)

