"""The event backbone against the real PostgreSQL and RabbitMQ: outbox, relay, consumers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid

import aio_pika
import asyncpg
import pytest

from services.common.consumer import BatchConsumer, Consumer, PermanentError
from services.common.events import EventError, new_event, parse_event
from services.common.outbox import PARTITIONS, OutboxRelay, add_events
from services.common.runtime import Runtime

from .conftest import parked_messages, wait_for

SCHEMA = "bbtest"


def ping(run: str, account: str, n: int, **extra) -> dict:
    return new_event(
        "TestPing", {"n": n, "account_id": account, **extra}, source="/tests", subject=account, correlation_id=run
    )


async def effects(pool, run: str) -> list:
    return await pool.fetch("SELECT account_id, n, event_id FROM bbtest.effects WHERE run = $1 ORDER BY id", run)


def recording_handler(run: str, seen: list | None = None):
    async def handler(conn, event):
        if seen is not None:
            seen.append(event)
        await conn.execute(
            "INSERT INTO bbtest.effects (run, account_id, n, event_id) VALUES ($1, $2, $3, $4)",
            run,
            event["data"]["account_id"],
            event["data"]["n"],
            event["id"],
        )

    return handler


@pytest.fixture
async def relay(runtime):
    worker = OutboxRelay(runtime.pool, runtime.broker, SCHEMA, poll_interval=0.5)
    task = asyncio.create_task(worker.run())
    yield worker
    worker.stop()
    await asyncio.wait_for(task, 10)


def make_consumer(runtime, name: str, handler, *, batched: bool = False, **kw) -> Consumer:
    return (BatchConsumer if batched else Consumer)(
        runtime,
        party="auth",
        schema=SCHEMA,
        queue=runtime.queue(name),
        handlers={"TestPing": handler},
        retry_delays=kw.pop("retry_delays", (0.2, 0.4, 0.6)),
        **kw,
    )


async def write(pool, events: list[dict]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await add_events(conn, SCHEMA, events)


async def test_event_is_consumed_once_with_envelope_intact(runtime, relay):
    run = uuid.uuid4().hex
    seen: list = []
    consumer = make_consumer(runtime, f"once-{run}", recording_handler(run, seen))
    await consumer.start()
    try:
        event = ping(run, "acct-1", 1)
        await write(runtime.pool, [event])
        # A later event of the same account is handled after any second delivery of the first.
        await write(runtime.pool, [ping(run, "acct-1", 2)])
        rows = await wait_for(lambda: _count_at_least(runtime.pool, run, 2), message="both effects")
    finally:
        await consumer.stop()
    assert [(r["account_id"], r["n"], r["event_id"]) for r in rows[:1]] == [("acct-1", 1, event["id"])]
    assert [r["n"] for r in rows] == [1, 2]
    assert len(seen) == 2
    received = seen[0]
    assert received == json.loads(json.dumps(event))
    assert received["specversion"] == "1.0"
    assert received["dataschema"] == "urn:mfa:schema:events:TestPing:v1"
    assert received["correlationid"] == run


async def test_duplicate_delivery_has_one_effect(runtime, relay):
    run = uuid.uuid4().hex
    consumer = make_consumer(runtime, f"dup-{run}", recording_handler(run))
    await consumer.start()
    try:
        event = ping(run, "acct-dup", 7)
        # The same event written twice, as a relay crashing after publish but before delete would cause.
        await write(runtime.pool, [event])
        await write(runtime.pool, [event])
        # Written after both copies, same account: once it is handled, both copies were too.
        await write(runtime.pool, [ping(run, "acct-dup", 8)])
        rows = await wait_for(lambda: _count_at_least(runtime.pool, run, 2), message="marker effect")
    finally:
        await consumer.stop()
    assert [r["n"] for r in rows] == [7, 8]
    assert await runtime.pool.fetchval(
        "SELECT count(*) FROM bbtest.processed_events WHERE event_id = $1", event["id"]
    ) == 1


async def test_handler_failing_twice_then_succeeding_has_one_effect(runtime, relay):
    run = uuid.uuid4().hex
    inner = recording_handler(run)

    async def flaky(conn, event):
        await inner(conn, event)  # the effect is written, then rolled back by the failure
        async with runtime.pool.acquire() as other:
            count = await other.fetchval(
                "INSERT INTO bbtest.failures VALUES ($1, 1) ON CONFLICT (event_id)"
                " DO UPDATE SET count = failures.count + 1 RETURNING count",
                event["id"],
            )
        if count <= 2:
            raise RuntimeError(f"transient failure {count}")

    consumer = make_consumer(runtime, f"flaky-{run}", flaky)
    await consumer.start()
    try:
        event = ping(run, "acct-flaky", 3)
        await write(runtime.pool, [event])
        rows = await wait_for(lambda: effects(runtime.pool, run), timeout=15, message="effect after retries")
    finally:
        await consumer.stop()
    assert len(rows) == 1
    assert await runtime.pool.fetchval("SELECT count FROM bbtest.failures WHERE event_id = $1", event["id"]) == 3


async def test_always_failing_handler_parks_the_message(runtime, relay):
    run = uuid.uuid4().hex

    async def broken(conn, event):
        raise RuntimeError("always broken")

    consumer = make_consumer(runtime, f"broken-{run}", broken)
    await consumer.start()
    try:
        event = ping(run, "acct-broken", 1)
        await write(runtime.pool, [event])
        parked = await parked_messages(runtime, consumer.parked_queue, 1)
    finally:
        await consumer.stop()
    assert parked[0].message_id == event["id"]
    assert parked[0].headers["x-parked-reason"] == "exhausted"
    assert parked[0].headers["x-attempt"] == 3
    assert parse_event(parked[0].body)["id"] == event["id"]


async def test_permanent_error_parks_at_once(runtime, relay):
    run = uuid.uuid4().hex
    calls = []

    async def refuse(conn, event):
        calls.append(event["id"])
        raise PermanentError("unknown account")

    consumer = make_consumer(runtime, f"perm-{run}", refuse)
    await consumer.start()
    try:
        await write(runtime.pool, [ping(run, "acct-perm", 1)])
        parked = await parked_messages(runtime, consumer.parked_queue, 1)
    finally:
        await consumer.stop()
    assert parked[0].headers["x-parked-reason"] == "rejected"
    assert len(calls) == 1


async def test_garbage_and_schema_invalid_messages_are_parked_and_worker_keeps_serving(runtime, relay):
    run = uuid.uuid4().hex
    consumer = make_consumer(runtime, f"garbage-{run}", recording_handler(run))
    await consumer.start()
    try:
        exchange = runtime.broker.exchange
        await exchange.publish(aio_pika.Message(b"\xff\x00not json"), routing_key="TestPing")
        bad = ping(run, "acct-bad", 1)
        bad["data"]["n"] = "not a number"
        await exchange.publish(aio_pika.Message(json.dumps(bad).encode()), routing_key="TestPing")
        parked = await parked_messages(runtime, consumer.parked_queue, 2)
        good = ping(run, "acct-good", 2)
        await write(runtime.pool, [good])
        rows = await wait_for(lambda: effects(runtime.pool, run), message="good event after garbage")
    finally:
        await consumer.stop()
    assert {m.headers["x-parked-reason"] for m in parked} == {"invalid"}
    assert [r["n"] for r in rows] == [2]


def test_schema_rejects_invalid_data_on_publish():
    with pytest.raises(EventError):
        new_event("TestPing", {"n": "x", "account_id": "a"}, source="/tests")
    with pytest.raises(EventError):
        new_event("NoSuchType", {}, source="/tests")


async def test_two_relays_share_partitions_and_keep_order(runtime, relay):
    run = uuid.uuid4().hex
    second = OutboxRelay(runtime.pool, runtime.broker, SCHEMA, poll_interval=0.2)
    task = asyncio.create_task(second.run())
    consumer = make_consumer(runtime, f"order-{run}", recording_handler(run), prefetch=50)
    await consumer.start()
    try:
        accounts = [f"acct-{i}" for i in range(10)]
        for batch in range(10):
            await write(runtime.pool, [ping(run, a, batch * 10 + k) for a in accounts for k in range(10)])
        rows = await wait_for(
            lambda: _count_at_least(runtime.pool, run, 1000), timeout=30, message="1000 effects"
        )
    finally:
        await consumer.stop()
        second.stop()
        await asyncio.wait_for(task, 10)
    assert len(rows) == 1000
    for account in accounts:
        ns = [r["n"] for r in rows if r["account_id"] == account]
        assert ns == sorted(ns) and len(ns) == 100


async def _count_at_least(pool, run, n):
    rows = await effects(pool, run)
    return rows if len(rows) >= n else None


@pytest.fixture
async def private_broker(tmp_path):
    """A RabbitMQ node of this test's own (bench/nodes.py), to stop and start: never the shared one."""
    from bench.nodes import RABBIT_BIN, PrivateRabbit

    if not (RABBIT_BIN / "rabbitmq-server").exists():
        pytest.skip("needs RabbitMQ installed on this machine for a private node")
    node = PrivateRabbit(tmp_path, uuid.uuid4().hex[:8])
    try:
        await node.start()
        yield node
    finally:
        await node.shutdown()


@pytest.mark.slow
async def test_broker_outage_loses_nothing_and_keeps_order(runtime, private_broker):
    run = uuid.uuid4().hex
    mine = await Runtime.open(dataclasses.replace(runtime.settings, amqp_url=private_broker.url), pool_size=10)
    relay = OutboxRelay(mine.pool, mine.broker, SCHEMA, poll_interval=0.5)
    relay_task = asyncio.create_task(relay.run())
    consumer = make_consumer(mine, f"outage-{run}", recording_handler(run), prefetch=100)
    await consumer.start()
    accounts = [f"acct-{i}" for i in range(20)]
    try:
        await private_broker.stop_app()
        try:
            await wait_for(lambda: not mine.broker.connected, timeout=30, message="broker seen down")
            for k in range(50):  # 50 transactions x 20 accounts = 1,000 events written while the broker is away
                await write(mine.pool, [ping(run, a, k) for a in accounts])
            backlog = await mine.pool.fetchval("SELECT count(*) FROM bbtest.outbox")
        finally:
            await private_broker.start_app()
        assert backlog >= 1000
        rows = await wait_for(lambda: _count_at_least(mine.pool, run, 1000), timeout=90, message="1000 effects")
    finally:
        await consumer.stop()
        relay.stop()
        await asyncio.wait_for(relay_task, 10)
        await mine.close()
    assert len(rows) == 1000
    assert len({r["event_id"] for r in rows}) == 1000
    for account in accounts:
        ns = [r["n"] for r in rows if r["account_id"] == account]
        assert ns == list(range(50))


async def test_batched_mode_runs_each_handler_in_order_and_parks_only_the_bad_event(runtime, relay):
    run = uuid.uuid4().hex
    inner = recording_handler(run)

    async def picky(conn, event):
        if event["data"]["n"] == 13:
            raise PermanentError("thirteen")
        await inner(conn, event)

    consumer = make_consumer(runtime, f"batched-{run}", picky, batched=True)
    await consumer.start()
    try:
        await write(runtime.pool, [ping(run, "acct-b", n) for n in range(30)])
        rows = await wait_for(lambda: _count_at_least(runtime.pool, run, 29), timeout=15, message="29 effects")
        parked = await parked_messages(runtime, consumer.parked_queue, 1)
    finally:
        await consumer.stop()
    assert [r["n"] for r in rows] == [n for n in range(30) if n != 13]
    assert parse_event(parked[0].body)["data"]["n"] == 13


async def test_a_lost_database_connection_uses_up_no_attempt(runtime, relay):
    run = uuid.uuid4().hex
    inner = recording_handler(run)
    kills = []

    async def flaky_database(conn, event):
        if len(kills) < 3:
            kills.append(event["id"])
            # The server ends this session, as a PostgreSQL restart would.
            async with runtime.pool.acquire() as other:
                await other.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
            await conn.execute("SELECT 1")
        await inner(conn, event)

    # One retry only: were connection losses counted as attempts, the event would end parked.
    consumer = make_consumer(runtime, f"dbloss-{run}", flaky_database, retry_delays=(0.2,))
    await consumer.start()
    try:
        await write(runtime.pool, [ping(run, "acct-db", 1)])
        rows = await wait_for(lambda: effects(runtime.pool, run), timeout=20, message="effect after reconnects")
    finally:
        await consumer.stop()
    assert len(kills) == 3 and [r["n"] for r in rows] == [1]


@pytest.mark.parametrize("writer", ["same process", "other process", "plain connection"])
async def test_commit_wakes_the_relay_without_polling(runtime, writer):
    """A relay that would poll only once a minute relays a commit at once, whoever wrote it.

    In the relay's process the pool wakes it directly when the writer's connection comes back;
    a relay elsewhere (here: another Runtime, with its own pool and signal) hears the NOTIFY
    sent after the commit; a connection outside any such pool notifies in its transaction.
    """
    run = uuid.uuid4().hex
    other = await Runtime.open(runtime.settings, pool_size=2)
    relay_side = runtime if writer == "same process" else other
    worker = OutboxRelay(relay_side.pool, relay_side.broker, SCHEMA, poll_interval=60, signal=relay_side.signal)
    task = asyncio.create_task(worker.run())
    consumer = make_consumer(runtime, f"wake-{run}", recording_handler(run))
    await consumer.start()
    try:
        # Once it holds every partition, what it relays next it relays because it was woken.
        await wait_for(lambda: len(worker.partitions) == PARTITIONS, message="relay holds all partitions")
        for n in (1, 2):
            if writer == "plain connection":
                conn = await asyncpg.connect(runtime.settings.database_url)
                try:
                    async with conn.transaction():
                        await add_events(conn, SCHEMA, [ping(run, "acct-wake", n)])
                finally:
                    await conn.close()
            else:
                await write(runtime.pool, [ping(run, "acct-wake", n)])
            # Far below the 60 s poll: only a wake explains it.
            rows = await wait_for(lambda n=n: _count_at_least(runtime.pool, run, n), timeout=5, message=f"event {n}")
    finally:
        await consumer.stop()
        worker.stop()
        await asyncio.wait_for(task, 10)
        await other.close()
    assert [r["n"] for r in rows] == [1, 2]


async def test_a_relay_discards_a_connection_it_cannot_clean(runtime, monkeypatch):
    """The pool does not reset connections: one put back with the relay's partition locks would keep them."""
    from services.common.db import PooledConnection, create_pool

    pool = await create_pool(runtime.settings.database_url, min_size=1, max_size=1)
    worker = OutboxRelay(pool, runtime.broker, SCHEMA, poll_interval=0.2)
    task = asyncio.create_task(worker.run())

    async def held() -> int:
        return await runtime.pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = $1::int::oid"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())", worker._lock_class)

    try:
        await wait_for(lambda: len(worker.partitions) == PARTITIONS, message="relay holds all partitions")
        assert await held() == PARTITIONS

        async def broken(self, channel, callback):
            raise asyncpg.InterfaceError("simulated: the connection cannot be cleaned")

        monkeypatch.setattr(PooledConnection, "remove_listener", broken)
        worker.stop()
        await asyncio.wait_for(task, 10)
        # Terminated rather than pooled with the locks: nobody holds the relay's partitions any more.
        async def none_held() -> bool:
            return await held() == 0

        await wait_for(none_held, timeout=5, message="no session holding the relay's partition locks")
        monkeypatch.undo()
        # And the pool opens a fresh connection for the next relay, which takes every partition.
        again = OutboxRelay(pool, runtime.broker, SCHEMA, poll_interval=0.2)
        again_task = asyncio.create_task(again.run())
        try:
            await wait_for(lambda: len(again.partitions) == PARTITIONS, message="a new relay holds all partitions")
        finally:
            again.stop()
            await asyncio.wait_for(again_task, 10)
    finally:
        if not task.done():
            worker.stop()
            await asyncio.wait_for(task, 10)
        await pool.close()
