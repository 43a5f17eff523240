"""Recovery and auth together, only through HTTP and the event backbone: a helpdesk reset from mail to MFA off."""

from __future__ import annotations

import json
import uuid

import aio_pika
import pyotp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.auth.app import create_app as create_auth_app

from ..conftest import wait_for
from .mails import jpeg, raw_mail_with_photo
from .test_intake import send_mail


@pytest.fixture(scope="module")
async def auth(runtime, recovery):
    client = TestClient(TestServer(create_auth_app(runtime)))
    await client.start_server()
    yield client
    await client.close()


@pytest.fixture(scope="module")
async def mfa_events(runtime):
    """MfaDisabled and MfaEnrolled events as auth publishes them."""
    seen: list[dict] = []
    channel = await runtime.broker.channel()
    queue = await channel.declare_queue(runtime.queue(f"recovery-e2e-{uuid.uuid4().hex[:8]}"), exclusive=True)
    for event_type in ("MfaDisabled", "MfaEnrolled"):
        await queue.bind(runtime.settings.exchange, event_type)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        seen.append(json.loads(message.body))

    await queue.consume(on_message, no_ack=True)  # no ack to race the channel's close (see tests/conftest.py tap)
    yield seen
    await channel.close()


async def test_mailed_request_approved_by_the_helpdesk_turns_forced_mfa_off(recovery, auth, mfa_events):
    service = recovery.auth("service")
    tag = uuid.uuid4().hex[:8]
    company_id, account_id = f"co-e2e-{tag}", f"acc-e2e-{tag}"
    company_name, email = f"Forced {tag} BV", f"anna.{tag}@forced.example"
    resp = await auth.put(f"/v1/companies/{company_id}", json={"name": company_name, "mfa_required": True},
                          headers=service)
    assert resp.status in (200, 201), await resp.text()
    resp = await auth.put(f"/v1/accounts/{account_id}", headers=service, json={
        "company_id": company_id, "email": email, "first_name": "Anna", "last_name": "de Vries",
        "role": "employee", "mfa_required": False})
    assert resp.status in (200, 201), await resp.text()
    resp = await auth.post(f"/v1/accounts/{account_id}/mfa/enrollment", headers=service)
    secret = (await resp.json())["secret"]
    resp = await auth.post(f"/v1/accounts/{account_id}/mfa/enrollment/confirm", headers=service,
                           json={"code": pyotp.TOTP(secret).now()})
    assert resp.status == 201, await resp.text()

    # Recovery learns the directory and the MFA state from auth's events alone.
    async def enrolled_in_read_model():
        return await recovery.runtime.pool.fetchval(
            "SELECT mfa_enabled FROM recovery.accounts WHERE account_id = $1 AND profile_at IS NOT NULL", account_id)

    await wait_for(enrolled_in_read_model, timeout=15, message="recovery's read model sees MFA on")

    # The person mails the helpdesk from a phone, as the help-centre article asks.
    raw = raw_mail_with_photo(sender=f"Anna de Vries <anna.{tag}@private.example>",
                              subject=f"Fwd: Resetting MFA authenticator ({company_name})",
                              body=f"Hi,\r\nMy account email is {email}\r\nFirst name: Anna\r\nLast name: de Vries",
                              photo=jpeg(200_000))
    assert (await send_mail(recovery, raw, f"anna.{tag}@private.example")).code == 250
    row = await recovery.ticket_row(email, company_name)
    resp = await recovery.client.get(f"/v1/recovery-tickets/{row['ticket_id']}", headers=recovery.auth("helpdesk"))
    view = await resp.json()
    assert view["match"]["account_id"] == account_id and view["match"]["names_match"]
    assert view["match"]["mfa_enabled"] and view["match"]["mfa_forced"]

    resp = await recovery.client.post(f"/v1/recovery-tickets/{row['ticket_id']}/approve",
                                      json={"agent": "helpdesk-ben", "note": "photo and ID match"},
                                      headers=recovery.auth("helpdesk"))
    assert resp.status == 200, await resp.text()

    def disabled():
        return [e for e in mfa_events if e["type"] == "MfaDisabled" and e["subject"] == account_id]

    [event] = await wait_for(disabled, timeout=15, message="auth's MfaDisabled")
    assert event["data"]["reason"] == "helpdesk_recovery" and event["data"]["ticket_id"] == row["ticket_id"]
    assert event["data"]["agent"] == "helpdesk-ben"
    resp = await auth.get(f"/v1/accounts/{account_id}/mfa", headers=service)
    state = await resp.json()
    assert state["enabled"] is False and state["forced"] is True  # enrols again at the next login
    await wait_for(lambda: recovery.runtime.pool.fetchval(
        "SELECT NOT mfa_enabled FROM recovery.accounts WHERE account_id = $1", account_id),
        message="recovery's read model sees MFA off")
