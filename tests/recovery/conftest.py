"""Fixtures of the recovery tests: the real app (HTTP + SMTP + consumer), keys, directory events, a tap on events."""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.common.apikeys import create_key
from services.common.events import new_event
from services.common.runtime import Runtime
from services.recovery.app import create_app
from services.recovery.domain import RateLimits

from ..conftest import free_port, publish, wait_for


@dataclass
class EventTap:
    """Every RecoveryTicket* event the service publishes, as seen on a queue of our own."""

    seen: list[dict[str, Any]] = field(default_factory=list)

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        event = json.loads(message.body)
        event["_content_type"] = message.content_type
        event["_message_id"] = message.message_id
        self.seen.append(event)

    async def wait(self, event_type: str, ticket_id: str, count: int = 1, timeout: float = 10) -> list[dict]:
        def found():
            hits = [e for e in self.seen if e["type"] == event_type and e["data"]["ticket_id"] == ticket_id]
            return hits if len(hits) >= count else None

        return await wait_for(found, timeout, message=f"{count} {event_type} for {ticket_id}")


@dataclass
class Recovery:
    """The running recovery app and what tests need around it."""

    client: TestClient
    runtime: Runtime
    smtp_port: int
    tap: EventTap
    keys: dict[str, str]

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    async def publish(self, event: dict) -> None:
        """Publish an event to the exchange, as another service's relay would."""
        await publish(self.runtime, event)

    async def processed(self, event_id: str) -> None:
        await wait_for(
            lambda: self.runtime.pool.fetchval(
                "SELECT true FROM recovery.processed_events WHERE event_id = $1", event_id),
            message=f"recovery consumed {event_id}",
        )

    async def directory_event(self, event_type: str, data: dict, *, time: datetime | None = None) -> dict:
        event = new_event(event_type, data, source="/tests/upstream", subject=data.get("account_id"),
                          company_id=data.get("company_id"), time=time or datetime.now(UTC))
        await self.publish(event)
        await self.processed(event["id"])
        return event

    async def company_with_account(self, *, company_mfa: bool = False, account_mfa: bool = False,
                                   enrolled: bool = False, backup: bool = False) -> dict[str, str]:
        """A fresh company and one account in recovery's read model, through the directory events."""
        tag = uuid.uuid4().hex[:8]
        person = {
            "company_id": f"co-{tag}",
            "company_name": f"Acme {tag}",
            "account_id": f"acc-{tag}",
            "email": f"jane.{tag}@acme.example",
            "first_name": "Jane",
            "last_name": "Doe",
        }
        await self.directory_event("CompanyUpserted", {"company_id": person["company_id"],
                                                       "name": person["company_name"], "mfa_required": company_mfa})
        await self.directory_event("AccountUpserted", {
            "account_id": person["account_id"], "company_id": person["company_id"], "email": person["email"],
            "first_name": "Jane", "last_name": "Doe", "role": "employee", "mfa_required": account_mfa})
        if enrolled:
            await self.directory_event("MfaEnrolled", {
                "account_id": person["account_id"], "company_id": person["company_id"], "email": person["email"],
                "first_name": "Jane", "method": "totp", "enrolled_at": datetime.now(UTC).isoformat()})
        if backup:
            await self.directory_event("BackupEmailConfirmed", {
                "account_id": person["account_id"], "company_id": person["company_id"],
                "backup_email": f"jane.{tag}@private.example"})
        return person

    async def ticket_row(self, email: str, company: str):
        from services.recovery.domain import company_key, normalize_email

        return await self.runtime.pool.fetchrow(
            "SELECT * FROM recovery.tickets WHERE email_key = $1 AND company_key = $2 ORDER BY created_at DESC LIMIT 1",
            normalize_email(email), company_key(company))


@pytest.fixture(scope="module")
async def recovery(runtime):
    """One recovery app per test module: HTTP on a test server, SMTP on a free port, its consumer and relay."""
    port = free_port()
    rt = Runtime(dataclasses.replace(runtime.settings, inbound_smtp_port=port), pool=runtime.pool,
                 broker=runtime.broker, keys=runtime.keys)
    # Every test mail comes from 127.0.0.1: the per-IP limit is lifted, the per-sender one kept small.
    app = create_app(rt, limits=RateLimits(per_sender=3, per_ip=100_000))
    tap = EventTap()
    channel = await runtime.broker.channel()
    queue = await channel.declare_queue(runtime.queue(f"recovery-tap-{uuid.uuid4().hex[:8]}"), exclusive=True)
    for event_type in ("RecoveryTicketOpened", "RecoveryTicketApproved", "RecoveryTicketRejected", "RecoveryPhotoDeleted"):
        await queue.bind(runtime.settings.exchange, event_type)
    await queue.consume(tap.on_message, no_ack=True)  # no ack to race the channel's close (see tests/conftest.py tap)
    keys = {
        "helpdesk": await create_key(runtime.pool, "helpdesk", label="recovery tests"),
        "service": await create_key(runtime.pool, "service", label="recovery tests"),
        "auditor": await create_key(runtime.pool, "auditor", label="recovery tests"),
    }
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Recovery(client, rt, port, tap, keys)
    finally:
        await client.close()
        await channel.close()
