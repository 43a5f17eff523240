"""Fixtures of the recovery pages: the real recovery and audit apps beside `site` (auth and notifier),
recovery on a real port that is also its public URL, and a real photo of a person with an ID card."""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.common.apikeys import create_key
from services.common.runtime import Runtime
from services.recovery.domain import RateLimits, company_key, normalize_email

from ..conftest import free_port, wait_for

if TYPE_CHECKING:
    from .conftest import Site

PER_SENDER = 3  # requests per hour per email on the form, as for mail (the per-IP limit is lifted: all is 127.0.0.1)


@dataclasses.dataclass
class Desk:
    """The running recovery service as a browser sees it, with a helpdesk key and a service key, and the
    audit service beside it with an auditor key."""

    base: str
    client: TestClient
    runtime: Runtime
    helpdesk_key: str
    service_key: str
    audit: TestClient
    auditor_key: str

    async def sign_in_link(self, agent: str, key: str | None = None) -> str:
        resp = await self.client.post("/v1/helpdesk-sessions", json={"agent": agent},
                                      headers={"Authorization": f"Bearer {key or self.helpdesk_key}"})
        assert resp.status == 201, await resp.text()
        return (await resp.json())["url"]

    async def sign_in(self, context, agent: str):
        """A new page of `context` signed in to the console as `agent` through a single-use link."""
        page = await context.new_page()
        await page.goto(await self.sign_in_link(agent))
        assert page.url == f"{self.base}/mfa/helpdesk"  # the token is exchanged for a cookie: no secret in the URL
        return page

    async def audited(self, event_type: str, ticket_id: str) -> dict:
        """The event about `ticket_id` as the audit log recorded it (the envelope it hashed), waiting for it."""
        async def find():
            rows = await self.runtime.pool.fetch("SELECT envelope FROM audit.events WHERE event_type = $1", event_type)
            hits = [json.loads(r["envelope"]) for r in rows]
            return next((e for e in hits if e["data"].get("ticket_id") == ticket_id), None)

        return await wait_for(find, timeout=20, message=f"{event_type} of {ticket_id} in the audit log")

    async def audit_trail(self, account_id: str, *until: str, timeout: float = 20) -> list[dict]:
        """The account's audit log as an auditor reads it (`GET /v1/audit/events`): its events in the log's
        order, waiting until one of each type in `until` is in it."""
        async def read():
            resp = await self.audit.get("/v1/audit/events", params={"account_id": account_id, "limit": "100"},
                                        headers={"Authorization": f"Bearer {self.auditor_key}"})
            assert resp.status == 200, await resp.text()
            events = [row["envelope"] for row in (await resp.json())["events"]]
            return events if set(until) <= {e["type"] for e in events} else None

        return await wait_for(read, timeout=timeout, message=f"{', '.join(until)} of {account_id} in the audit log")

    async def ticket_of(self, email: str, company: str) -> str:
        """The newest ticket of this email and company, waiting for it."""
        async def find():
            return await self.runtime.pool.fetchval(
                "SELECT ticket_id FROM recovery.tickets WHERE email_key = $1 AND company_key = $2"
                " ORDER BY created_at DESC LIMIT 1", normalize_email(email), company_key(company))

        return await wait_for(find, message=f"a ticket for {email}")

    async def open_ticket(self, email: str, company: str, first: str = "Ada", last: str = "Lovelace") -> str:
        """A ticket opened through the API (faster than the form where the form is not the subject)."""
        form = aiohttp.FormData()
        for name, value in (("email", email), ("first_name", first), ("last_name", last), ("company_name", company)):
            form.add_field(name, value)
        form.add_field("photo", id_photo(), filename="me.jpg", content_type="image/jpeg")
        resp = await self.client.post("/v1/recovery-requests", data=form,
                                      headers={"Authorization": f"Bearer {self.service_key}"})
        assert resp.status == 202, await resp.text()
        return (await resp.json())["ticket_id"]

    async def matched(self, account_id: str, *, enabled: bool | None = None) -> None:
        """Wait until recovery's directory copy knows the account (and its MFA state), from auth's events."""
        async def known():
            return await self.runtime.pool.fetchval(
                "SELECT true FROM recovery.accounts WHERE account_id = $1 AND profile_at IS NOT NULL"
                " AND ($2::boolean IS NULL OR mfa_enabled = $2)", account_id, enabled)

        await wait_for(known, timeout=20, message=f"recovery knows {account_id}")


@pytest.fixture(scope="module")
async def desk(site: Site):
    """recovery (HTTP, SMTP, directory consumer) and audit on `site`'s pool and broker."""
    from services.audit.app import create_app as audit_app
    from services.recovery.app import create_app as recovery_app

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = dataclasses.replace(site.runtime.settings, inbound_smtp_port=free_port(), recovery_public_url=base)
    runtime = dataclasses.replace(site.runtime, settings=settings)  # the same pool, brokers and signal
    client = TestClient(TestServer(recovery_app(runtime, limits=RateLimits(per_sender=PER_SENDER, per_ip=100_000)),
                                   host="127.0.0.1", port=port))
    audit = TestClient(TestServer(audit_app(runtime)))
    await client.start_server()
    await audit.start_server()
    try:
        yield Desk(base, client, runtime, await create_key(runtime.pool, "helpdesk", label="pages"),
                   await create_key(runtime.pool, "service", label="pages"), audit,
                   await create_key(runtime.pool, "auditor", label="pages"))
    finally:
        await audit.close()
        await client.close()


def id_photo(width: int = 640, height: int = 480) -> bytes:
    """A real JPEG made by Pillow: a person holding an ID card up beside the face."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (214, 226, 236))
    draw = ImageDraw.Draw(img)
    draw.ellipse((150, 70, 290, 230), fill=(233, 196, 160))  # face
    draw.rectangle((130, 240, 310, 480), fill=(44, 82, 130))  # shoulders
    draw.rounded_rectangle((340, 200, 580, 350), radius=12, fill=(250, 250, 245), outline=(90, 90, 90), width=3)
    draw.rectangle((355, 220, 425, 300), fill=(233, 196, 160))  # the card's portrait
    for row in range(4):
        draw.rectangle((440, 225 + row * 25, 560 - row * 15, 235 + row * 25), fill=(120, 120, 120))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=85)
    return out.getvalue()


async def forced_employee(site: Site, *, company: str | None = None, locale: str | None = None,
                          by: str = "company") -> dict[str, str]:
    """An employee whose MFA is forced (`by` the company or personally), enrolled on a phone that is now
    broken, without backup."""
    from .conftest import person

    assert by in ("company", "personal")
    company = company or f"Broken Phone {uuid.uuid4().hex[:6]} BV"
    company_id, account_id = await person(site, company_required=by == "company", required=by == "personal",
                                          company=company, locale=locale)
    await site.api.enroll(account_id)
    return {"company_id": company_id, "account_id": account_id, "company": company,
            "email": f"{account_id}@example.com", "first_name": "Ada", "last_name": "Lovelace"}


async def fill_form(page, who: dict[str, str], photo: bytes | None = None, *, name: str = "me-and-my-id.jpg",
                    mime: str = "image/jpeg") -> None:
    """Fill the form by its labels, as a person does (the photo chosen through the file input)."""
    await page.get_by_label("First name").fill(who["first_name"])
    await page.get_by_label("Last name").fill(who["last_name"])
    await page.get_by_label("Account email address").fill(who["email"])
    await page.get_by_label("Company name").fill(who["company"])
    await page.locator("#photo").set_input_files(files=[{"name": name, "mimeType": mime,
                                                         "buffer": id_photo() if photo is None else photo}])
