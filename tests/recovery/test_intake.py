"""Intake through the real app: the form over HTTP and mail over real SMTP, against PostgreSQL and RabbitMQ."""

from __future__ import annotations

import io
import json
import uuid

import aiohttp
import aiosmtplib
import pytest

from services.recovery.api import MAX_TEXT_FIELD_BYTES
from services.recovery.domain import MAX_MAIL_BYTES, MAX_PHOTO_BYTES

from .mails import (
    HELPDESK,
    android_html_only,
    heic,
    iphone_mail,
    jpeg,
    pdf,
    plain_with_attachment,
    raw_mail_with_photo,
)


def image_format(data: bytes) -> str:
    """The format Pillow decodes `data` as (it raises when the bytes are no image)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.format


def form(email: str, company: str, *, photo: bytes | None = None, first: str = "Jane", last: str = "Doe",
         ip: str | None = None, photo_type: str = "image/jpeg", skip: tuple[str, ...] = ()) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value in (("email", email), ("first_name", first), ("last_name", last), ("company_name", company),
                        ("ip", ip)):
        if value is not None and name not in skip:
            data.add_field(name, value)
    if "photo" not in skip:
        data.add_field("photo", photo if photo is not None else jpeg(30_000), filename="me.jpg",
                       content_type=photo_type)
    return data


async def smtp_send(port: int, raw: bytes, sender: str) -> aiosmtplib.SMTPResponse:
    """Deliver `raw` as a mail client's submission would; the server's answer to DATA (raises on 4xx/5xx)."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30) as smtp:
        await smtp.mail(sender)
        await smtp.rcpt(HELPDESK)
        return await smtp.data(raw)


async def send_mail(recovery, raw: bytes, sender: str) -> aiosmtplib.SMTPResponse:
    return await smtp_send(recovery.smtp_port, raw, sender)


async def post_form(recovery, data, role="service"):
    return await recovery.client.post("/v1/recovery-requests", data=data, headers=recovery.auth(role))


def body_for(person: dict, **extra) -> str:
    lines = ["Hello,", "", "I lost my phone and cannot log in.", f"Account email: {person['email']}",
             f"First name: {person.get('first_name', 'Jane')}", f"Last name: {person.get('last_name', 'Doe')}",
             "", "Sent from my iPhone"]
    return "\n".join(lines)


# ---- the form


async def test_form_opens_ticket_and_event_carries_a_reference_not_the_photo(recovery):
    person = await recovery.company_with_account()
    photo = jpeg(40_000)
    resp = await post_form(recovery, form(person["email"], person["company_name"], photo=photo))
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert list(body) == ["ticket_id"]
    ticket_id = body["ticket_id"]
    [event] = await recovery.tap.wait("RecoveryTicketOpened", ticket_id)
    assert event["_content_type"] == "application/cloudevents+json" and event["_message_id"] == event["id"]
    assert event["source"] == "/mfa/recovery" and event["authtype"] == "api_key"
    assert event["subject"] == person["account_id"] and event["companyid"] == person["company_id"]
    assert event["correlationid"] == resp.headers["X-Correlation-ID"]
    data = event["data"]
    assert data["status"] == "open" and data["channel"] == "form" and data["missing"] == []
    assert data["account_id"] == person["account_id"] and data["requester_email"] == person["email"]
    assert data["photo_ref"] == f"/v1/recovery-tickets/{ticket_id}/photo"
    assert len(json.dumps(event)) < 4000  # no photo bytes in the event
    stored = await recovery.runtime.pool.fetchrow(
        "SELECT t.status, p.data FROM recovery.tickets t JOIN recovery.photos p USING (ticket_id) WHERE ticket_id = $1",
        ticket_id)
    assert stored["status"] == "open" and image_format(bytes(stored["data"])) == "JPEG"


async def test_matching_and_unknown_accounts_get_the_same_answer(recovery):
    person = await recovery.company_with_account()
    known = await post_form(recovery, form(person["email"], person["company_name"]))
    unknown = await post_form(recovery, form(f"nobody.{uuid.uuid4().hex[:6]}@acme.example", person["company_name"]))
    no_company = await post_form(recovery, form(person["email"], f"Ghost {uuid.uuid4().hex[:6]}"))
    answers = [(r.status, r.content_type, sorted((await r.json()).keys())) for r in (known, unknown, no_company)]
    assert answers[0] == answers[1] == answers[2] == (202, "application/json", ["ticket_id"])
    # Only the helpdesk sees which one matched.
    views = []
    for resp in (known, unknown, no_company):
        ticket_id = (await resp.json())["ticket_id"]
        got = await recovery.client.get(f"/v1/recovery-tickets/{ticket_id}", headers=recovery.auth("helpdesk"))
        views.append(await got.json())
    assert views[0]["match"]["account_id"] == person["account_id"] and views[0]["matched"]
    assert views[1]["match"] is None and views[2]["match"] is None


async def test_repeated_requests_open_tickets_of_their_own_linked_together_then_the_rate_limit_applies(recovery):
    person = await recovery.company_with_account()
    ids = []
    for first in ("Jane", "Janet", "Jane"):
        resp = await post_form(recovery, form(person["email"].upper(), person["company_name"].lower(), first=first))
        assert resp.status == 202
        ids.append((await resp.json())["ticket_id"])
    assert len(set(ids)) == 3
    rows = await recovery.runtime.pool.fetch(
        "SELECT ticket_id, first_name, request_count FROM recovery.tickets WHERE ticket_id = ANY($1::text[])"
        " ORDER BY created_at", ids)
    assert [(r["first_name"], r["request_count"]) for r in rows] == [("Jane", 1), ("Janet", 1), ("Jane", 1)]
    opened = [(await recovery.tap.wait("RecoveryTicketOpened", i))[0]["data"] for i in ids]
    assert [d["related_ticket_ids"] for d in opened] == [[], ids[:1], ids[:2]]
    assert not any(d["joined"] for d in opened)
    status_view = await recovery.client.get(f"/v1/recovery-tickets/{ids[0]}", headers=recovery.auth("helpdesk"))
    assert (await status_view.json())["related_ticket_ids"] == ids[1:]
    # No photo was replaced: each ticket keeps the one its own request brought.
    assert await recovery.runtime.pool.fetchval(
        "SELECT count(*) FROM recovery.photos WHERE ticket_id = ANY($1::text[])", ids) == 3
    # The test app allows 3 requests per sender and window: the fourth is refused, nothing stored.
    resp = await post_form(recovery, form(person["email"], person["company_name"]))
    assert resp.status == 429
    problem = await resp.json()
    assert problem["code"] == "rate_limited" and problem["retry_after"] > 0
    assert await recovery.runtime.pool.fetchval(
        "SELECT count(*) FROM recovery.tickets WHERE email_key = $1", person["email"].lower()) == 3


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("missing_photo", 400, "missing_field"),
        ("missing_names", 400, "missing_field"),
        ("pdf_photo", 415, "unsupported_photo_type"),
        ("header_injection", 400, "invalid_name"),
        ("bad_email", 400, "invalid_email"),
        ("json_body", 415, "multipart_required"),
        ("broken_multipart", 400, "invalid_multipart"),
        ("oversized_photo", 413, "photo_too_large"),
        ("email_twice", 400, "duplicate_field"),
        ("two_photos", 400, "duplicate_field"),
        ("long_name", 400, "field_too_long"),
        ("name_not_utf8", 400, "invalid_characters"),
    ],
)
async def test_bad_form_gets_a_clear_error_and_stores_nothing(recovery, case, status, code):
    email, company = f"bad.{uuid.uuid4().hex[:8]}@acme.example", "Acme"
    headers = recovery.auth("service")
    if case == "missing_photo":
        resp = await post_form(recovery, form(email, company, skip=("photo",)))
    elif case == "missing_names":
        resp = await post_form(recovery, form(email, company, skip=("first_name", "last_name")))
    elif case == "pdf_photo":
        resp = await post_form(recovery, form(email, company, photo=pdf(), photo_type="image/jpeg"))
    elif case == "header_injection":
        resp = await post_form(recovery, form(email, company, first="Jane\r\nBcc: evil@x.example"))
    elif case == "bad_email":
        resp = await post_form(recovery, form("jane at acme", company))
        email = "jane at acme"
    elif case == "json_body":
        resp = await recovery.client.post("/v1/recovery-requests", json={"email": email}, headers=headers)
    elif case == "broken_multipart":
        resp = await recovery.client.post(
            "/v1/recovery-requests", data=b"--xyz\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\nx\r\n--wrong",
            headers={**headers, "Content-Type": "multipart/form-data; boundary=xyz"})
    elif case == "email_twice":
        data = form(email, company)
        data.add_field("email", email)
        resp = await post_form(recovery, data)
    elif case == "two_photos":
        data = form(email, company)
        data.add_field("photo", jpeg(20_000), filename="again.jpg", content_type="image/jpeg")
        resp = await post_form(recovery, data)
    elif case == "long_name":
        resp = await post_form(recovery, form(email, company, first="J" * (MAX_TEXT_FIELD_BYTES + 1)))
    elif case == "name_not_utf8":
        data = form(email, company, skip=("first_name",))
        data.add_field("first_name", io.BytesIO(b"J\xffane"))
        resp = await post_form(recovery, data)
    elif case == "oversized_photo":
        resp = await post_form(recovery, form(email, company, photo=jpeg(MAX_PHOTO_BYTES + 1)))
    else:
        raise AssertionError(f"no request for case {case!r}")
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == code
    assert await recovery.ticket_row(email, company) is None


async def test_form_roles(recovery):
    person = await recovery.company_with_account()
    assert (await post_form(recovery, form(person["email"], person["company_name"]), role="helpdesk")).status == 202
    resp = await post_form(recovery, form(person["email"], person["company_name"]), role="auditor")
    assert resp.status == 403 and (await resp.json())["code"] == "wrong_role"
    resp = await recovery.client.post("/v1/recovery-requests", data=form(person["email"], person["company_name"]))
    assert resp.status == 401 and (await resp.json())["code"] == "missing_api_key"


# ---- the mailbox


async def test_phone_mail_opens_a_matched_ticket(recovery):
    person = await recovery.company_with_account()
    photo = jpeg(120_000)
    raw = iphone_mail(sender=f"Jane Doe <{person['email']}>",
                      subject=f"RE: resetting mfa authenticator ({person['company_name']})",
                      body=body_for(person), photo=photo)
    response = await send_mail(recovery, raw, person["email"])
    assert response.code == 250
    row = await recovery.ticket_row(person["email"], person["company_name"])
    assert row["status"] == "open" and row["channel"] == "email" and row["account_id"] == person["account_id"]
    assert (row["first_name"], row["last_name"]) == ("Jane", "Doe")
    [event] = await recovery.tap.wait("RecoveryTicketOpened", row["ticket_id"])
    assert event["authtype"] == "system" and event["data"]["channel"] == "email"
    assert event["data"]["reply_to"] == person["email"]
    got = await recovery.client.get(f"/v1/recovery-tickets/{row['ticket_id']}/photo", headers=recovery.auth("helpdesk"))
    assert got.status == 200 and got.content_type == "image/jpeg" and image_format(await got.read()) == "JPEG"
    assert got.headers["Cache-Control"] == "no-store"


async def test_html_only_mail_with_inline_image_and_a_heic_mail(recovery):
    person = await recovery.company_with_account()
    html = (f"<html><body><div>Hi, my name is Jane Doe.</div><div>My account: {person['email']}</div>"
            "<div><img src='cid:{cid}'></div></body></html>")
    raw = android_html_only(sender=f"jane.private.{person['account_id']}@gmail.example",
                            subject=f"Resetting MFA authenticator ({person['company_name']})", html=html,
                            photo=jpeg(9000))
    assert (await send_mail(recovery, raw, "jane.private@gmail.example")).code == 250
    row = await recovery.ticket_row(person["email"], person["company_name"])
    assert row["status"] == "open" and row["account_id"] == person["account_id"]

    other = await recovery.company_with_account()
    raw = plain_with_attachment(sender=other["email"], subject=f"Resetting MFA authenticator ({other['company_name']})",
                                body=body_for(other), data=heic(20_000), maintype="image", subtype="heic",
                                filename="IMG_3003.HEIC")
    assert (await send_mail(recovery, raw, other["email"])).code == 250
    row = await recovery.ticket_row(other["email"], other["company_name"])
    photo = await recovery.runtime.pool.fetchval(
        "SELECT content_type FROM recovery.photos WHERE ticket_id = $1", row["ticket_id"])
    assert row["status"] == "open" and photo == "image/jpeg"  # the HEIC is kept as a JPEG re-encoded from it


async def test_mail_without_a_usable_photo_opens_an_incomplete_ticket(recovery):
    person = await recovery.company_with_account()
    raw = plain_with_attachment(sender=person["email"], subject=f"Resetting MFA authenticator ({person['company_name']})",
                                body=body_for(person), data=pdf(), maintype="application", subtype="pdf",
                                filename="id.pdf")
    assert (await send_mail(recovery, raw, person["email"])).code == 250
    row = await recovery.ticket_row(person["email"], person["company_name"])
    assert row["status"] == "incomplete" and row["missing"] == ["photo"]
    [event] = await recovery.tap.wait("RecoveryTicketOpened", row["ticket_id"])
    assert event["data"]["status"] == "incomplete" and event["data"]["missing"] == ["photo"]
    assert event["data"]["problems"] == ["photo_unsupported_type"] and event["data"]["photo_ref"] is None
    # The second mail brings the photo: it opens a ticket of its own, linked to the first, which stays as it was.
    raw = iphone_mail(sender=f"Jane Doe <{person['email']}>",
                      subject=f"Re: Resetting MFA authenticator ({person['company_name']})",
                      body="Here is the photo.", photo=jpeg(5000))
    assert (await send_mail(recovery, raw, person["email"])).code == 250
    again = await recovery.ticket_row(person["email"], person["company_name"])
    assert again["ticket_id"] != row["ticket_id"] and again["status"] == "open" and again["missing"] == []
    [event] = await recovery.tap.wait("RecoveryTicketOpened", again["ticket_id"])
    assert event["data"]["related_ticket_ids"] == [row["ticket_id"]]
    first = await recovery.runtime.pool.fetchrow("SELECT status, missing FROM recovery.tickets WHERE ticket_id = $1",
                                                 row["ticket_id"])
    assert first["status"] == "incomplete" and list(first["missing"]) == ["photo"]


async def test_unreadable_mail_still_opens_an_incomplete_ticket(recovery):
    sender = f"confused.{uuid.uuid4().hex[:8]}@private.example"
    raw = (f"From: {sender}\r\nSubject: help\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
           "--b\r\nContent-Type: text/plain; charset=x-klingon\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           "!!!%%%\r\n--b\r\nContent-Type: image/jpeg\r\nContent-Transfer-Encoding: base64\r\n\r\nnot-base64\r\n").encode()
    assert (await send_mail(recovery, raw, sender)).code == 250
    row = await recovery.runtime.pool.fetchrow(
        "SELECT * FROM recovery.tickets WHERE reply_to = $1", sender)
    assert row["status"] == "incomplete"
    assert set(row["missing"]) == {"first_name", "last_name", "company_name", "photo"}
    assert row["requester_email"] == sender  # no address in the body: the sender is the best guess


async def test_photo_above_10_mb_in_a_mail_is_refused_but_the_ticket_opens(recovery):
    person = await recovery.company_with_account()
    raw = raw_mail_with_photo(sender=person["email"], subject=f"Resetting MFA authenticator ({person['company_name']})",
                              body=body_for(person), photo=jpeg(MAX_PHOTO_BYTES + 1024))
    assert (await send_mail(recovery, raw, person["email"])).code == 250
    row = await recovery.ticket_row(person["email"], person["company_name"])
    assert row["status"] == "incomplete" and row["problems"] == ["photo_too_large"]


async def test_mail_above_the_size_limit_gets_552(recovery):
    sender = f"huge.{uuid.uuid4().hex[:8]}@private.example"
    raw = raw_mail_with_photo(sender=sender, subject="Resetting MFA authenticator (Acme)", body="hi",
                              photo=jpeg(MAX_MAIL_BYTES * 3 // 4 + 100_000))
    assert len(raw) > MAX_MAIL_BYTES
    with pytest.raises(aiosmtplib.SMTPResponseException) as err:
        await send_mail(recovery, raw, sender)
    assert err.value.code == 552
    assert await recovery.runtime.pool.fetchval("SELECT count(*) FROM recovery.tickets WHERE reply_to = $1", sender) == 0


async def test_auto_replies_and_flooding_senders_are_dropped_with_250(recovery):
    person = await recovery.company_with_account()
    subject = f"Resetting MFA authenticator ({person['company_name']})"
    raw = plain_with_attachment(sender=person["email"], subject=subject, body=body_for(person), data=jpeg(),
                                maintype="image", subtype="jpeg", filename="a.jpg",
                                extra_headers={"Auto-Submitted": "auto-replied"})
    assert (await send_mail(recovery, raw, person["email"])).code == 250
    assert await recovery.ticket_row(person["email"], person["company_name"]) is None
    # Three mails are taken (three tickets); the fourth from the same sender is dropped silently.
    raw = plain_with_attachment(sender=person["email"], subject=subject, body=body_for(person), data=jpeg(),
                                maintype="image", subtype="jpeg", filename="a.jpg")
    for _ in range(4):
        assert (await send_mail(recovery, raw, person["email"])).code == 250
    assert await recovery.runtime.pool.fetchval(
        "SELECT count(*) FROM recovery.tickets WHERE email_key = $1", person["email"].lower()) == 3


async def test_database_down_answers_451_and_the_server_keeps_serving(runtime):
    from services.common.db import create_pool
    from services.recovery.domain import RateLimits
    from services.recovery.inbound import InboundMailbox, MailboxHandler
    from services.recovery.workers import ParsePool

    from ..conftest import free_port

    pool = await create_pool(runtime.settings.database_url, min_size=1, max_size=1)
    await pool.close()  # what the handler sees while PostgreSQL is away
    port = free_port()
    mailbox = InboundMailbox(MailboxHandler(pool, rate_key=b"k" * 32, limits=RateLimits(), mailbox=(HELPDESK,),
                                           parsers=ParsePool()),
                             "127.0.0.1", port, "mfa.localhost")
    await mailbox.start()
    try:
        raw = plain_with_attachment(sender="a@private.example", subject="Resetting MFA authenticator (Acme)",
                                    body="x", data=jpeg(), maintype="image", subtype="jpeg", filename="a.jpg")
        for _ in range(2):  # the server survives the failure and answers the next message the same way
            with pytest.raises(aiosmtplib.SMTPResponseException) as err:
                await smtp_send(port, raw, "a@private.example")
            assert err.value.code == 451
    finally:
        await mailbox.stop()


async def test_the_mailbox_listens_only_while_the_app_runs(runtime):
    import dataclasses

    from aiohttp.test_utils import TestClient, TestServer

    from services.common.runtime import Runtime
    from services.recovery.app import create_app

    from ..conftest import free_port

    port = free_port()
    rt = Runtime(dataclasses.replace(runtime.settings, inbound_smtp_port=port), pool=runtime.pool,
                 broker=runtime.broker, keys=runtime.keys)
    client = TestClient(TestServer(create_app(rt)))
    with pytest.raises(aiosmtplib.SMTPConnectError):
        await smtp_send(port, b"Subject: x\r\n\r\nx\r\n", "a@private.example")
    await client.start_server()
    try:
        sender = f"life.{uuid.uuid4().hex[:8]}@private.example"
        assert (await smtp_send(port, b"Subject: x\r\n\r\nx\r\n", sender)).code == 250
    finally:
        await client.close()
    with pytest.raises(aiosmtplib.SMTPConnectError):
        await smtp_send(port, b"Subject: x\r\n\r\nx\r\n", "a@private.example")


async def test_concurrent_requests_for_one_person_open_linked_tickets_in_order(recovery):
    import asyncio

    person = await recovery.company_with_account()
    responses = await asyncio.gather(*(post_form(recovery, form(person["email"], person["company_name"]))
                                       for _ in range(3)))
    assert [r.status for r in responses] == [202, 202, 202]
    ids = [(await r.json())["ticket_id"] for r in responses]
    # Intakes of one person run one after the other: each names every ticket opened before it.
    related = sorted([(await recovery.tap.wait("RecoveryTicketOpened", i))[0]["data"]["related_ticket_ids"]
                      for i in ids], key=len)
    assert [len(r) for r in related] == [0, 1, 2] and related[1] == related[2][:1]


async def test_the_per_ip_limit_counts_across_senders(recovery):
    from services.recovery.domain import IntakeRequest, RateLimits
    from services.recovery.handlers import check_rate_limit

    limits = RateLimits(per_sender=100, per_ip=2)
    ip = f"2001:db8::{uuid.uuid4().hex[:4]}"
    answers = [await check_rate_limit(recovery.runtime.pool, b"k" * 32, limits,
                                      IntakeRequest(channel="email", sender=f"s{i}.{uuid.uuid4().hex[:6]}@x.example",
                                                    ip=ip))
               for i in range(3)]
    assert answers[:2] == [None, None] and answers[2] > 0
    # The counters hold keyed hashes, never the address itself.
    assert await recovery.runtime.pool.fetchval(
        "SELECT count(*) FROM recovery.rate_limits WHERE position($1::bytea in key) > 0", ip.encode()) == 0
