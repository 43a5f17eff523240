"""Transactional outbox: events are written with the state change, then relayed to RabbitMQ.

Writers call :func:`add_events` inside their transaction. One or more :class:`OutboxRelay`
per service publish what was committed: each relay wakes on LISTEN/NOTIFY (polling only as a
fallback; :class:`OutboxSignal` sends the NOTIFY after the writer's commit), owns a subset of
16 partitions through session advisory locks, claims rows with ``FOR UPDATE SKIP LOCKED``,
publishes a batch pipelined in id order and deletes it only after the broker confirmed all
of it (a failed batch is sent again whole: consumers are idempotent by event id). An
account's events share a partition, so their order holds even with several relays.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from typing import Any

import asyncpg

from .broker import Broker
from .errors import DATABASE_UNAVAILABLE
from .events import encode
from .logs import get_logger
from .metrics import EVENTS_PUBLISHED, OUTBOX_BACKLOG, observe_written

log = get_logger("outbox")

PARTITIONS = 16


class PublishFailed(RuntimeError):
    """The broker did not confirm part of a batch; nothing of the batch is deleted."""


def partition_of(key: str) -> int:
    """Stable partition of an ordering key (the event subject, usually an account id)."""
    return zlib.crc32(key.encode()) % PARTITIONS


def channel_name(schema: str) -> str:
    return f"{schema}_outbox"


_COLUMNS = "event_id, event_type, partition, body, correlation_id"


def _row(event: dict[str, Any]) -> tuple[Any, ...]:
    return (
        event["id"],
        event["type"],
        partition_of(event.get("subject") or event["id"]),
        encode(event),
        event.get("correlationid"),
    )


async def add_events(conn: asyncpg.Connection, schema: str, events: list[dict[str, Any]]) -> None:
    """Queue `events` in the caller's transaction; they are published once it commits."""
    if not events:
        return
    await conn.executemany(
        f"INSERT INTO {schema}.outbox ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5)", [_row(e) for e in events]
    )
    observe_written(events)
    await wake_relays(conn, schema)


def outbox_insert(schema: str, event: dict[str, Any], *, first_param: int) -> tuple[str, tuple[Any, ...]]:
    """`INSERT INTO <schema>.outbox (...) SELECT $n, ...` queuing `event`, to embed in a larger statement.

    For a writer that decides in ONE statement whether its event is queued: it appends a
    `WHERE` (and `RETURNING`) to the returned SQL, passes the returned arguments from
    parameter `first_param` on, and calls :func:`wake_relays` when a row went in.
    """
    params = ", ".join(f"${first_param + i}" for i in range(5))
    return f"INSERT INTO {schema}.outbox ({_COLUMNS}) SELECT {params}", _row(event)


async def wake_relays(conn: asyncpg.Connection, schema: str) -> None:
    """Make sure the relays of `schema` wake once the caller's transaction has committed.

    A pooled connection with an :class:`OutboxSignal` behind it only notes the schema: a
    NOTIFY inside the transaction would make its commit take PostgreSQL's cluster-wide
    notify lock and hold it through the WAL flush, so notifying commits queue one behind
    the other (pgbench on the 2-core machine: 11,700 one-insert commits/s, 2,240 with a
    `pg_notify` in each). Any other connection notifies in the transaction, on commit.
    """
    wakes = getattr(conn, "wakes", None)
    if wakes is not None:
        wakes.add(channel_name(schema))
    else:
        await conn.execute("SELECT pg_notify($1, '')", channel_name(schema))


class OutboxSignal:
    """Wakes relays after commits that wrote outbox rows: this process's at once, others by NOTIFY.

    The pool hands over the channels a connection noted (:func:`wake_relays`) when it comes
    back; `run` sends one NOTIFY per channel for all that gathered meanwhile, from its own
    short transaction, so writers never wait on the notify lock. Its payload is this
    signal's token, which the relays woken directly ignore. Rounds are at least
    `min_interval` apart, so under load the commits of a few milliseconds share one NOTIFY
    instead of one per round trip. A wake that is lost (a connection closed instead of
    coming back) costs one poll interval, never an event.
    """

    def __init__(self, min_interval: float = 0.005) -> None:
        self.min_interval = min_interval
        self.token = uuid.uuid4().hex
        self._relays: dict[str, set[OutboxRelay]] = {}
        self._pending: set[str] = set()
        self._kick = asyncio.Event()

    def register(self, relay: OutboxRelay) -> None:
        self._relays.setdefault(channel_name(relay.schema), set()).add(relay)

    def unregister(self, relay: OutboxRelay) -> None:
        self._relays.get(channel_name(relay.schema), set()).discard(relay)

    def released(self, channels: set[str]) -> None:
        """A connection that wrote to these channels' outboxes is back in the pool."""
        for channel in channels:
            for relay in self._relays.get(channel, ()):
                relay.wake()
        self._pending |= channels
        self._kick.set()

    async def run(self, pool: asyncpg.Pool) -> None:
        """Send the gathered NOTIFYs until cancelled."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            channels, self._pending = sorted(self._pending), set()
            try:
                await pool.execute("SELECT pg_notify(c, $2) FROM unnest($1::text[]) AS c", channels, self.token)
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as exc:
                # Relays in other processes fall back to polling until the database is back.
                log.warning("outbox_notify_failed", error=str(exc))
                await asyncio.sleep(0.5)
                continue
            await asyncio.sleep(self.min_interval)


class OutboxRelay:
    """Publishes one schema's outbox to the broker, in order per partition."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        broker: Broker,
        schema: str,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        gather_delay: float = 0.005,
        signal: OutboxSignal | None = None,
    ) -> None:
        self.pool = pool
        self.broker = broker
        self.schema = schema
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.gather_delay = gather_delay
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._lock_class = zlib.crc32(f"outbox:{schema}".encode()) & 0x7FFFFFFF
        self.partitions: set[int] = set()
        self.signal = signal

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        """Look at the outbox now: something was committed to it."""
        self._wake.set()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if self.signal is None or payload != self.signal.token:  # our own signal woke us directly
            self._wake.set()

    async def run(self) -> None:
        """Relay until stopped; survives database and broker outages."""
        if self.signal is not None:
            self.signal.register(self)
        try:
            await self._run()
        finally:
            if self.signal is not None:
                self.signal.unregister(self)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                async with self.pool.acquire() as conn:
                    await self._serve(conn)
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as exc:
                log.warning("outbox_relay_db_error", schema=self.schema, error=f"{type(exc).__name__}: {exc}")
                await self._pause(1.0)
            except Exception:  # a relay that stopped would leave its partitions' events waiting for good
                log.exception("outbox_relay_error", schema=self.schema)
                await self._pause(1.0)
        log.info("outbox_relay_stopped", schema=self.schema)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _serve(self, conn: asyncpg.Connection) -> None:
        await conn.add_listener(channel_name(self.schema), self._on_notify)
        self.partitions = set()
        next_take = 0.0
        try:
            while not self._stopping.is_set():
                if len(self.partitions) < PARTITIONS and time.monotonic() >= next_take:
                    # Partitions another relay holds are tried again now and then (it may stop).
                    await self._take_partitions(conn)
                    next_take = time.monotonic() + (5.0 if self.partitions else 1.0)
                published = 0
                if self.partitions and not self.broker.connected:
                    await self._pause(0.2)
                    continue
                # Cleared before looking, so a NOTIFY that lands while we look is not lost.
                self._wake.clear()
                if self.partitions:
                    try:
                        published = await self._relay_batch(conn)
                    except PublishFailed as exc:
                        # The transaction rolled back: the rows stay and go out once the broker is back.
                        log.warning("outbox_publish_failed", schema=self.schema, error=str(exc))
                        await self._pause(0.5)
                        continue
                if published >= self.batch_size:
                    continue  # a full batch: more is waiting, look again at once
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                except TimeoutError:
                    continue
                # Woken by a commit: let a few milliseconds of commits gather, so a steady trickle
                # of single-event transactions costs one relay round per few events, not per event.
                await asyncio.sleep(self.gather_delay)
        finally:
            await self._clean(conn)
            self.partitions = set()

    async def _clean(self, conn: asyncpg.Connection) -> None:
        """Unlisten and drop the partition locks before the connection goes back to the pool.

        The pool does not reset connections (services/common/db.py), so one that kept the locks
        would hold this relay's partitions for whoever borrows it next, and no relay could
        publish them again: a connection that cannot be cleaned (an error, a cancellation, a
        socket half-dead after a PostgreSQL restart) is terminated, so the pool discards it.
        """
        try:
            if conn.is_closed():
                return
        except asyncpg.InterfaceError:  # asyncpg released it already: the connection was lost
            return
        try:
            await conn.remove_listener(channel_name(self.schema), self._on_notify)
            await conn.execute("SELECT pg_advisory_unlock_all()", timeout=5)
        except BaseException as exc:
            log.warning("outbox_relay_connection_discarded", schema=self.schema, error=f"{type(exc).__name__}: {exc}")
            conn.terminate()
            if not isinstance(exc, Exception):
                raise

    async def _take_partitions(self, conn: asyncpg.Connection) -> None:
        for part in range(PARTITIONS):
            if part in self.partitions:
                continue
            if await conn.fetchval("SELECT pg_try_advisory_lock($1::int, $2::int)", self._lock_class, part):
                self.partitions.add(part)

    async def _relay_batch(self, conn: asyncpg.Connection) -> int:
        async with conn.transaction():
            rows = await conn.fetch(
                f"SELECT id, event_id, event_type, partition, body, correlation_id FROM {self.schema}.outbox"
                " WHERE partition = ANY($1::smallint[]) ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
                sorted(self.partitions),
                self.batch_size,
            )
            if not rows:
                return 0
            # Pipelined: every publish is started now, in id order, and confirms are awaited
            # together. The channel writes frames in the order the publishes start, so the
            # broker receives each partition's (each account's) events in order.
            tasks = [
                asyncio.create_task(
                    self.broker.publish_event(
                        bytes(row["body"]),
                        event_type=row["event_type"],
                        event_id=row["event_id"],
                        correlation_id=row["correlation_id"],
                        partition=row["partition"],
                    )
                )
                for row in rows
            ]
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise PublishFailed(str(result) or type(result).__name__) from result
            await conn.execute(f"DELETE FROM {self.schema}.outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
        for row in rows:
            EVENTS_PUBLISHED.labels(self.schema, row["event_type"]).inc()
        return len(rows)


async def backlog(pool: asyncpg.Pool, schema: str) -> int:
    """How many events wait in the outbox (also exported as a gauge)."""
    count = await pool.fetchval(f"SELECT count(*) FROM {schema}.outbox")
    OUTBOX_BACKLOG.labels(schema).set(count)
    return count
