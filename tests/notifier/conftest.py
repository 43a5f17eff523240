"""Fixtures of the notifier tests: a real SMTP server, a running notifier consumer, event helpers."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY

from services.common.consumer import Consumer
from services.common.db import create_pool
from services.common.events import Actor, new_event
from services.notifier.consumers import POOL_SPARE, PREFETCH, notifier_consumer
from services.notifier.domain import TEMPLATE_KINDS
from services.notifier.handlers import Notifier
from services.notifier.mailer import Mailer, SmtpConfig
from services.notifier.templates import Catalog

from ..conftest import publish as publish  # the notifier tests import them from here
from ..conftest import seal as seal
from .smtp_server import TestSmtpServer

FAST_RETRIES = (0.1, 0.2, 0.4, 0.8)


@pytest.fixture(scope="session")
async def journal_pool(settings):
    """The notifier's own pool, as the app opens it (consumer transactions plus journal writes)."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=PREFETCH + POOL_SPARE)
    yield pool
    await pool.close()


@pytest.fixture
async def smtp():
    """A plain SMTP server on a free port."""
    server = await TestSmtpServer().start()
    yield server
    await server.stop()


@dataclass
class Running:
    notifier: Notifier
    consumer: Consumer
    mailer: Mailer

    @property
    def queue(self) -> str:
        return self.consumer.queue_name


@pytest.fixture
async def start_notifier(runtime, journal_pool):
    """Start a notifier consumer on its own queue, sending to the given SMTP config; stopped after the test."""
    started: list[Running] = []

    async def start(config: SmtpConfig, *, retry_delays=FAST_RETRIES, settings=None, **kw) -> Running:
        mailer = await Mailer(config).start()
        notifier = Notifier.from_settings(settings or runtime.settings, catalog=Catalog.load(required=TEMPLATE_KINDS),
                                          mailer=mailer, journal=journal_pool)
        consumer = notifier_consumer(runtime, notifier, queue=runtime.queue(f"notifier-{uuid.uuid4().hex[:8]}"),
                                     retry_delays=retry_delays, **kw)
        await consumer.start()
        running = Running(notifier, consumer, mailer)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.consumer.stop()
        await running.mailer.close()
        channel = await runtime.broker.channel()
        await channel.queue_delete(running.queue)  # keeps later tests' events from piling up in it
        await channel.close()


def plain(server: TestSmtpServer, **kw) -> SmtpConfig:
    return SmtpConfig(host="127.0.0.1", port=server.port, **kw)


EVENT_TIME = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def event(event_type: str, data: dict, *, subject: str | None = None, event_id: str | None = None,
          time: datetime = EVENT_TIME) -> dict:
    """A schema-checked event as auth or recovery would publish it (at a fixed time, for stable texts)."""
    source = "/mfa/recovery" if event_type.startswith("Recovery") else "/mfa/auth"
    return new_event(event_type, data, source=source, subject=subject or data.get("account_id") or data.get("ticket_id"),
                     company_id=data.get("company_id"), correlation_id=str(uuid.uuid4()),
                     actor=Actor("api_key", "test-key"), event_id=event_id, time=time)


def ids() -> tuple[str, str]:
    """A fresh (account id, company id)."""
    return f"acct-{uuid.uuid4().hex[:10]}", f"co-{uuid.uuid4().hex[:8]}"


def sample(name: str, labels: dict) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def journal(pool, event_id: str) -> list:
    return await pool.fetch("SELECT * FROM notifier.mails WHERE event_id = $1 ORDER BY seq", event_id)


async def processed(pool, queue: str, event_id: str) -> bool:
    return bool(await pool.fetchval(
        "SELECT 1 FROM notifier.processed_events WHERE consumer = $1 AND event_id = $2", queue, event_id))


def with_settings(settings, **changes):
    return dataclasses.replace(settings, **changes)
