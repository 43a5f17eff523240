"""Shared fixtures: a throwaway database and unique exchange/queue names per test run.

Everything talks to the real PostgreSQL and RabbitMQ; the run stops at once with a clear
sentence when either cannot be reached.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aio_pika
import asyncpg
import pytest

from services.common.brokeradmin import teardown
from services.common.config import Settings
from services.common.crypto import Keyring
from services.common.db import MigrationSet, migrate, redact_url
from services.common.events import CONTENT_TYPE, encode
from services.common.logs import configure_logging
from services.common.runner import migration_sets
from services.common.runtime import Runtime
from services.registry import SERVICES

# The suite runs with the development key and one broker user (guest); tests of the separate
# broker users create their own, per run (tests/test_broker_users.py).
os.environ.setdefault("MFA_ENV", "development")
RUN_ID = uuid.uuid4().hex[:10]
BASE = Settings.from_env()
BACKBONE = MigrationSet.for_service("bbtest", Path(__file__).parent / "backbone_migrations")


def _db_url(name: str) -> str:
    head, _, _ = BASE.database_url.rpartition("/")
    return f"{head}/{name}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, below the kernel's ephemeral range.

    A port the kernel picks (bind to 0) comes from the range it also gives outgoing connections,
    so between this call and the server's bind a client socket of the suite could take it (a
    `mfa run all` once exited 2, "already in use", in the middle of the suite). Ports below that
    range are only ever taken by a bind.
    """
    low, _ = _EPHEMERAL
    for _ in range(200):
        port = random.randrange(max(1024, low - 12_000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_range()


async def drop_database(name: str) -> None:
    """Drop a throwaway database, whoever is still connected to it."""
    admin = await asyncpg.connect(_db_url("postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def private_database(name: str, sets: list[MigrationSet] | None = None) -> AsyncIterator[str]:
    """The URL of a throwaway database `name` with the migrations `sets` (by default every service's), dropped after."""
    url = _db_url(name)
    try:
        await migrate(url, sets if sets is not None else migration_sets(list(SERVICES.values())))
        yield url
    finally:
        await drop_database(name)


def isolated(settings: Settings, database_url: str, tag: str, **changes) -> Settings:
    """`settings` on `database_url`, with an exchange and a queue prefix of their own (named with `tag`)."""
    return dataclasses.replace(settings, database_url=database_url, exchange=f"{settings.exchange}.{tag}",
                               queue_prefix=f"{settings.queue_prefix}{tag}.", **changes)


def pytest_configure(config):
    configure_logging(os.environ.get("MFA_LOG_LEVEL", "WARNING"), "console")


async def _check_reachable() -> str | None:
    try:
        conn = await asyncpg.connect(_db_url("postgres"), timeout=5)
        await conn.close()
    except Exception as exc:
        return f"PostgreSQL is not reachable at {redact_url(BASE.database_url)}: {exc}"
    try:
        conn = await aio_pika.connect(BASE.amqp_url, timeout=5)
        await conn.close()
    except Exception as exc:
        return f"RabbitMQ is not reachable at {redact_url(BASE.amqp_url)}: {exc}"
    return None


def pytest_sessionstart(session):
    problem = asyncio.run(_check_reachable())
    if problem:
        pytest.exit(problem, returncode=3)


@pytest.fixture(scope="session")
def run_id() -> str:
    return RUN_ID


@pytest.fixture(scope="session")
async def settings():
    """Settings pointing at a fresh database and a unique exchange and queue prefix."""
    name = f"mfa_test_{RUN_ID}"
    test_settings = dataclasses.replace(
        BASE,
        database_url=_db_url(name),
        exchange=f"mfa.events.test.{RUN_ID}",
        queue_prefix=f"test.{RUN_ID}.",
        log_level="WARNING",
    )
    await migrate(test_settings.database_url, [*migration_sets(list(SERVICES.values())), BACKBONE])
    yield test_settings
    await _cleanup_broker(test_settings)
    await drop_database(name)


async def _cleanup_broker(test_settings: Settings) -> None:
    """Delete this run's queues, consumer exchanges and exchange (their names all carry RUN_ID)."""
    await teardown(test_settings, exchange=True)


@pytest.fixture(scope="session")
async def runtime(settings):
    """A Runtime (pool and broker) shared by the tests of a run."""
    rt = await Runtime.open(settings, pool_size=40)
    yield rt
    await rt.close()


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, message: str = "condition"):
    """Poll an async or sync predicate until it returns a truthy value; fail after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


async def publish(runtime, *events: dict) -> None:
    """Publish events straight to the exchange, as the relay of another service would."""
    for event in events:
        await runtime.broker.exchange.publish(
            aio_pika.Message(encode(event), message_id=event["id"], content_type=CONTENT_TYPE,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=event["type"],
        )


def seal(settings, event_type: str, account_id: str, token: str) -> str:
    """A token sealed the way auth seals tokens in events (BackupEmailRequested, BackupEmailChanged)."""
    return Keyring(settings.secret_keys).seal(token.encode(), aad=f"{event_type}:{account_id}".encode())


async def tap(runtime, exchange: str, *routing_keys: str) -> tuple[aio_pika.abc.AbstractChannel, list[dict]]:
    """Every event published to `exchange` with one of `routing_keys` from now on, as a list that fills up.

    Seen on an exclusive queue of our own (as the suite's guest user, which may read everything); returns the
    channel too: close it after.
    """
    channel = await runtime.broker.channel()
    await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(runtime.queue(f"tap-{uuid.uuid4().hex[:8]}"), exclusive=True)
    for key in routing_keys:
        await queue.bind(exchange, key)
    events: list[dict] = []

    async def on_message(message):
        events.append(json.loads(message.body))

    # No acks: an ack still on its way when the test closes the channel reaches a closed channel,
    # and RabbitMQ closes the whole shared connection for it (504 "expected 'channel.open'").
    await queue.consume(on_message, no_ack=True)
    return channel, events


async def parked_messages(runtime, queue: str, count: int, timeout: float = 15, *,
                          message_id: str | None = None) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take `count` messages off the parked queue `queue` (its full name), waiting up to `timeout`.

    With `message_id`, only the messages of that id: the others stay in the queue (left unacknowledged,
    the broker puts them back when the channel closes).
    """
    channel = await runtime.broker.channel()
    got: list = []
    try:
        q = await channel.get_queue(queue)

        async def fetch():
            message = await q.get(fail=False, no_ack=message_id is None)
            if message is not None and message_id is not None:
                if message.message_id != message_id:
                    return False  # someone else's
                await message.ack()
            if message is not None:
                got.append(message)
            return len(got) >= count

        await wait_for(fetch, timeout=timeout, message=f"{count} parked in {queue}")
    finally:
        await channel.close()
    return got
