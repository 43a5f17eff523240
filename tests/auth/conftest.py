"""Fixtures for the auth tests: the real auth app over HTTP, API keys and an event tap on the exchange."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.auth.app import create_app
from services.common.apikeys import create_key
from services.common.crypto import Keyring
from services.common.events import parse_event
from services.common.outbox import OutboxRelay, add_events

from ..conftest import wait_for


class EventTap:
    """Every event published on the test exchange, schema-checked as a consumer would."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.raw: list[bytes] = []

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.raw.append(message.body)
        event = parse_event(message.body)  # raises on a schema violation: the test sees it missing
        assert message.message_id == event["id"]
        assert message.content_type == "application/cloudevents+json"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        self.events.append(event)

    def of(self, subject: str, event_type: str | None = None) -> list[dict]:
        return [e for e in self.events if e["subject"] == subject and (event_type is None or e["type"] == event_type)]

    async def wait(self, subject: str, event_type: str, count: int = 1, timeout: float = 10) -> list[dict]:
        return await wait_for(
            lambda: (found := self.of(subject, event_type)) and len(found) >= count and found,
            timeout=timeout,
            message=f"{count} {event_type} for {subject}",
        )


async def publish_upstream(runtime, events: list[dict]) -> None:
    """Publish as another producer (an upstream product, recovery) would: through the backbone test schema's outbox
    and a relay of our own, until the outbox is empty."""
    async with runtime.pool.acquire() as conn, conn.transaction():
        await add_events(conn, "bbtest", events)
    relay = OutboxRelay(runtime.pool, runtime.broker, "bbtest", poll_interval=0.2)
    task = asyncio.create_task(relay.run())
    try:
        await wait_for(lambda: runtime.pool.fetchval("SELECT count(*) = 0 FROM bbtest.outbox"), timeout=15,
                       message="upstream events published")
    finally:
        relay.stop()
        await asyncio.wait_for(task, 10)


@asynccontextmanager
async def tapping(runtime) -> AsyncIterator[EventTap]:
    """An EventTap on every event published to the run's exchange while inside."""
    channel = await runtime.broker.channel()
    queue = await channel.declare_queue(runtime.queue(f"tap-{uuid.uuid4().hex[:6]}"), exclusive=True)
    await queue.bind(runtime.settings.exchange, "#")
    tap = EventTap()
    tag = await queue.consume(tap.on_message, no_ack=True)  # no ack to race the channel's close (see tests/conftest.py tap)
    try:
        yield tap
    finally:
        await queue.cancel(tag)
        await channel.close()


@pytest.fixture(scope="session")
async def tap(runtime):
    async with tapping(runtime) as found:
        yield found


@pytest.fixture(scope="session")
async def client(runtime, tap):
    app = create_app(runtime)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def key(runtime) -> str:
    return await create_key(runtime.pool, "service", label="tests")


class Api:
    """A thin HTTP helper bound to one API key."""

    def __init__(self, client: TestClient, key: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {key}"}

    async def call(self, method: str, path: str, body=None, expect: int | None = None, raw: bytes | None = None):
        kwargs = {"headers": self.headers}
        if raw is not None:
            kwargs["data"] = raw
            kwargs["headers"] = {**self.headers, "Content-Type": "application/json"}
        elif body is not None:
            kwargs["json"] = body
        async with self.client.request(method, path, **kwargs) as resp:
            data = await resp.read()
            ctype = resp.content_type
            status = resp.status
        parsed = json.loads(data) if ctype in ("application/json", "application/problem+json") else data
        if expect is not None:
            assert status == expect, (status, parsed)
        if status >= 400:
            assert ctype == "application/problem+json", ctype
        return status, parsed

    async def company(self, required: bool = False, company_id: str | None = None, name: str | None = None) -> str:
        company_id = company_id or f"co-{uuid.uuid4().hex[:10]}"
        await self.call("PUT", f"/v1/companies/{company_id}", {"name": name or f"Acme {company_id}", "mfa_required": required})
        return company_id

    async def account(self, company_id: str, role: str = "employee", required: bool = False) -> str:
        account_id = f"acct-{uuid.uuid4().hex[:10]}"
        await self.call(
            "PUT",
            f"/v1/accounts/{account_id}",
            {"company_id": company_id, "email": f"{account_id}@example.com", "first_name": "Ada",
             "last_name": "Lovelace", "role": role, "mfa_required": required},
            expect=201,
        )
        return account_id

    async def enroll(self, account_id: str, login_id: str | None = None) -> tuple[str, list[str], dict]:
        """Enrol like a person: read the secret from the QR PNG with zbarimg, the code from oathtool."""
        _, started = await self.call("POST", f"/v1/accounts/{account_id}/mfa/enrollment", expect=201)
        secret = started["secret"]
        body = {"code": oathtool(secret)}
        if login_id:
            body["login_id"] = login_id
        _, confirmed = await self.call("POST", f"/v1/accounts/{account_id}/mfa/enrollment/confirm", body, expect=201)
        return secret, confirmed["backup_codes"], confirmed


async def backup_email_token(api: Api, tap: EventTap, runtime, account: str, address: str, nth: int = 1) -> str:
    """Set the account's backup e-mail; the confirmation token as the notifier would mail it."""
    await api.call("PUT", f"/v1/accounts/{account}/backup-email", {"email": address}, expect=202)
    changed = (await tap.wait(account, "BackupEmailChanged", nth))[nth - 1]["data"]
    return Keyring(runtime.settings.secret_keys).open(
        changed["confirm_token"], aad=f"BackupEmailChanged:{account}".encode()
    ).decode()


async def login_link(api: Api, tap: EventTap, runtime, account: str, address: str) -> tuple[dict, str]:
    """Confirm a backup e-mail, enrol, open a login and ask for its link: (the login, the link's token)."""
    confirm = await backup_email_token(api, tap, runtime, account, address)
    await api.call("POST", "/v1/backup-email/confirm", {"token": confirm}, expect=200)
    await api.enroll(account)
    _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    await api.call("POST", f"/v1/logins/{login['login_id']}/backup-email", expect=202)
    requested = (await tap.wait(account, "BackupEmailRequested"))[0]["data"]
    token = Keyring(runtime.settings.secret_keys).open(
        requested["link_token"], aad=f"BackupEmailRequested:{account}".encode()
    ).decode()
    return login, token


def oathtool(secret: str, offset: int = 0, digest: str = "sha1", digits: int = 6) -> str:
    """The code an independent generator (oathtool) shows for `secret` at now + offset seconds."""
    at = int(time.time()) + offset
    out = subprocess.run(
        ["oathtool", f"--totp={digest}", "-d", str(digits), "-b", "-N", f"@{at}", secret],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


def zbarimg(png: bytes) -> str:
    out = subprocess.run(["zbarimg", "--raw", "-q", "-"], input=png, check=True, capture_output=True)
    return out.stdout.decode().strip()


@pytest.fixture
def api(client, key) -> Api:
    return Api(client, key)
