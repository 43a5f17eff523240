"""The notifier end to end on the real RabbitMQ, PostgreSQL and an aiosmtpd server."""

from __future__ import annotations

import re
import uuid
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from services.common.crypto import Keyring

from ..conftest import parked_messages, wait_for
from .conftest import event, ids, journal, plain, processed, publish, sample, seal
from .smtp_server import Received, TestSmtpServer

T0 = "2030-01-02T03:04:05Z"
T1 = "2030-01-02T03:19:05Z"


def text_of(mail: Received) -> str:
    return mail.message.get_body(("plain",)).get_content()


def html_of(mail: Received) -> str:
    return mail.message.get_body(("html",)).get_content()


def link_in(mail: Received) -> tuple[str, str]:
    """(url without query, token) of the one link in the mail's text."""
    (url,) = re.findall(r"https?://\S+", text_of(mail))
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}", parse_qs(parts.query)["token"][0]


async def test_each_event_type_produces_the_right_mail(runtime, smtp, start_notifier):
    settings = runtime.settings
    running = await start_notifier(plain(smtp))
    acct, co = ids()
    person = {"account_id": acct, "company_id": co, "email": f"{acct}@example.com", "first_name": "Ann"}
    backup = f"{acct}@backup.example"
    login_token, confirm_token = f"login-{uuid.uuid4().hex}", f"confirm-{uuid.uuid4().hex}"
    ticket = f"T-{uuid.uuid4().hex[:8]}"
    requester = f"req-{uuid.uuid4().hex[:8]}@example.com"
    events = [
        event("BackupEmailRequested", {"login_id": "l1", "account_id": acct, "company_id": co, "backup_email": backup,
                                       "first_name": "Ann", "expires_at": T1,
                                       "link_token": seal(settings, "BackupEmailRequested", acct, login_token)}),
        event("BackupEmailChanged", {**person, "backup_email": backup, "expires_at": T1,
                                     "confirm_token": seal(settings, "BackupEmailChanged", acct, confirm_token)}),
        event("MfaEnrolled", {**person, "method": "totp", "enrolled_at": T0}),
        event("MfaDisabled", {**person, "backup_email": backup, "reason": "admin", "actor_account_id": "admin-1",
                              "forced": False, "disabled_at": T0}),
        event("BackupCodesRegenerated", {**person, "count": 10}),
        event("MfaLocked", {**person, "locked_until": T1, "consecutive_failures": 5}),
        event("RecoveryTicketOpened", {"ticket_id": ticket, "requester_email": requester, "first_name": "Ann",
                                       "last_name": "Lee", "company_name": "Acme", "account_id": acct,
                                       "company_id": co, "status": "open", "channel": "form", "missing": []}),
        event("RecoveryTicketApproved", {"ticket_id": ticket, "requester_email": requester, "first_name": "Ann",
                                         "account_id": acct, "company_id": co, "agent": "Bob"}),
        event("RecoveryTicketRejected", {"ticket_id": ticket, "requester_email": requester, "account_id": None,
                                         "company_id": None, "agent": "Bob", "reason": "The photo is unreadable."}),
    ]
    await publish(runtime, *events)
    await wait_for(lambda: len(smtp.recorder.mails) >= 12, message="12 mails")
    await wait_for(lambda: all_processed(runtime, running.queue, events), message="events acknowledged")

    by_id = {m.message["Message-ID"]: m for m in smtp.recorder.mails}
    assert len(smtp.recorder.mails) == len(by_id) == 12

    def mail(ev: dict, seq: int) -> Received:
        return by_id[f"<{ev['id']}.{seq}@mfa.localhost>"]

    requested, changed, enrolled, disabled, codes, locked, opened, approved, rejected = events

    m = mail(requested, 1)
    assert m.rcpt_tos == [backup] and m.message["To"].addresses[0].addr_spec == backup
    assert m.message["Subject"] == "MFA: your login link"  # named by MFA_PRODUCT_NAME
    assert link_in(m) == (f"{settings.public_url}/mfa/login-link", login_token)
    # The opened token is exactly what auth sealed in the event, and the HTML carries the same link.
    assert Keyring(settings.secret_keys).open(requested["data"]["link_token"],
                                              aad=f"BackupEmailRequested:{acct}".encode()).decode() == login_token
    assert f"/mfa/login-link?token={login_token}" in html_of(m)
    assert "2030-01-02 03:19 UTC" in text_of(m) and "15 minutes" in text_of(m)

    m = mail(changed, 1)
    assert m.rcpt_tos == [backup] and m.message["Subject"] == "MFA: confirm your backup email address"
    assert link_in(m) == (f"{settings.public_url}/mfa/backup-email/confirm", confirm_token)
    m = mail(changed, 2)
    assert m.rcpt_tos == [person["email"]]
    assert m.message["Subject"] == "MFA: a backup email address was added to your account"
    assert backup in text_of(m) and "token" not in text_of(m)

    m = mail(enrolled, 1)
    assert m.rcpt_tos == [person["email"]] and "now on" in m.message["Subject"]
    assert "2030-01-02 03:04 UTC" in text_of(m) and "If this was not you" in text_of(m)

    to_login, to_backup = mail(disabled, 1), mail(disabled, 2)
    assert to_login.rcpt_tos == [person["email"]] and to_backup.rcpt_tos == [backup]
    assert "turned off" in to_login.message["Subject"]
    assert "administrator of your company" in text_of(to_login)
    assert "backup email address for the account" in text_of(to_backup)

    m = mail(codes, 1)
    assert m.rcpt_tos == [person["email"]] and "backup codes" in m.message["Subject"]
    assert "10 new backup codes" in text_of(m)

    m = mail(locked, 1)
    assert m.rcpt_tos == [person["email"]] and "5 times" in text_of(m) and "2030-01-02 03:19 UTC" in text_of(m)

    ack, desk = mail(opened, 1), mail(opened, 2)
    assert ack.rcpt_tos == [requester] and ticket in text_of(ack)
    assert ack.message["Reply-To"] == settings.helpdesk_email
    assert desk.rcpt_tos == [settings.helpdesk_email]
    assert desk.message["Subject"] == "New MFA recovery request: Ann Lee (Acme)"
    assert desk.message["Reply-To"] == requester and acct in text_of(desk)

    assert mail(approved, 1).rcpt_tos == [requester] and "reset" in mail(approved, 1).message["Subject"]
    m = mail(rejected, 1)
    assert m.rcpt_tos == [requester] and "The photo is unreadable." in text_of(m)

    for m in smtp.recorder.mails:
        assert m.mail_from == "no-reply@mfa.localhost"
        assert m.message["From"] == settings.mail_from
        assert m.message["Auto-Submitted"] == "auto-generated"
        assert m.message.get_content_type() == "multipart/alternative"
        assert "<html" in html_of(m)
    rows = [r for ev in events for r in await journal(running.notifier.journal, ev["id"])]
    assert len(rows) == 12 and {r["status"] for r in rows} == {"sent"}
    assert {r["message_id"] for r in rows} == set(by_id)


async def all_processed(runtime, queue, events) -> bool:
    for ev in events:
        if not await processed(runtime.pool, queue, ev["id"]):
            return False
    return True


async def test_the_same_event_twice_gives_one_mail(runtime, smtp, start_notifier):
    running = await start_notifier(plain(smtp))
    acct, co = ids()
    ev = event("MfaEnrolled", {"account_id": acct, "company_id": co, "email": f"{acct}@example.com",
                               "first_name": "Ann", "method": "totp", "enrolled_at": T0})
    labels = {"queue": running.queue, "type": "MfaEnrolled", "outcome": "duplicate"}
    await publish(runtime, ev, ev)
    await wait_for(lambda: sample("mfa_events_consumed_total", labels) == 1, message="second copy seen as duplicate")
    assert len(smtp.recorder.to(f"{acct}@example.com")) == 1
    (row,) = await journal(running.notifier.journal, ev["id"])
    assert row["status"] == "sent" and row["attempts"] == 1


async def test_a_retry_sends_only_what_is_missing(runtime, smtp, start_notifier):
    """Mail 1 goes out, mail 2 meets a 451: the retry sends mail 2 only, with the same Message-ID."""
    settings = runtime.settings
    running = await start_notifier(plain(smtp))
    acct, co = ids()
    login_email, backup = f"{acct}@example.com", f"{acct}@backup.example"
    smtp.recorder.first_replies[login_email] = ["451 4.3.0 try again later"]
    ev = event("BackupEmailChanged", {"account_id": acct, "company_id": co, "email": login_email, "first_name": "Ann",
                                      "backup_email": backup, "expires_at": T1,
                                      "confirm_token": seal(settings, "BackupEmailChanged", acct, "tok-" + acct)})
    await publish(runtime, ev)
    await wait_for(lambda: processed(runtime.pool, running.queue, ev["id"]), message="event done after retry")
    assert len(smtp.recorder.to(backup)) == 1
    assert len(smtp.recorder.to(login_email)) == 1
    assert smtp.recorder.rcpt_attempts[login_email] == 2 and smtp.recorder.rcpt_attempts[backup] == 1
    assert smtp.recorder.to(login_email)[0].message["Message-ID"] == f"<{ev['id']}.2@mfa.localhost>"
    first, second = await journal(running.notifier.journal, ev["id"])
    assert (first["status"], first["attempts"]) == ("sent", 1)
    assert (second["status"], second["attempts"]) == ("sent", 2)


async def test_a_mail_recorded_as_sent_is_not_sent_again(runtime, smtp, start_notifier):
    """The send succeeded but the consumer's transaction did not commit: the redelivery sends nothing twice."""
    running = await start_notifier(plain(smtp))
    acct, co = ids()
    ev = event("MfaDisabled", {"account_id": acct, "company_id": co, "email": f"{acct}@example.com", "first_name": "A",
                               "backup_email": f"{acct}@backup.example", "reason": "backup_code", "disabled_at": T0})
    await running.notifier.journal.execute(
        "INSERT INTO notifier.mails (event_id, seq, event_type, kind, recipient, message_id, status)"
        " VALUES ($1, 1, 'MfaDisabled', 'mfa_disabled', $2, $3, 'sent')",
        ev["id"], f"{acct}@example.com", f"<{ev['id']}.1@mfa.localhost>",
    )
    await publish(runtime, ev)
    await wait_for(lambda: processed(runtime.pool, running.queue, ev["id"]), message="event done")
    assert smtp.recorder.to(f"{acct}@example.com") == []
    assert len(smtp.recorder.to(f"{acct}@backup.example")) == 1


async def test_server_down_then_back_the_mail_arrives(runtime, start_notifier):
    down = await TestSmtpServer().start()
    port = down.port
    await down.stop()  # nothing listens on the port now: connection refused
    running = await start_notifier(plain(down))
    acct, co = ids()
    ev = event("MfaLocked", {"account_id": acct, "company_id": co, "email": f"{acct}@example.com",
                             "first_name": "Ann", "locked_until": T1, "consecutive_failures": 5})
    await publish(runtime, ev)

    async def deferred():
        rows = await journal(running.notifier.journal, ev["id"])
        return rows and rows[0]["status"] == "deferred" and rows[0]["reason_code"] == "smtp_unavailable"

    await wait_for(deferred, message="mail deferred while the server is down")
    back = await TestSmtpServer(port=port).start()
    try:
        await wait_for(lambda: back.recorder.to(f"{acct}@example.com"), timeout=10, message="mail after restart")
        await wait_for(lambda: processed(runtime.pool, running.queue, ev["id"]), message="event done")
    finally:
        await back.stop()
    (row,) = await journal(running.notifier.journal, ev["id"])
    assert row["status"] == "sent" and row["attempts"] >= 2
    assert len(back.recorder.mails) == 1


async def test_permanent_refusal_is_recorded_as_failed_and_not_retried(runtime, smtp, start_notifier):
    running = await start_notifier(plain(smtp))
    acct, co = ids()
    address = f"{acct}@example.com"
    smtp.recorder.refuse[address] = "550 5.1.1 No such user here"
    before = sample("mfa_mails_total", {"kind": "mfa_enrolled", "outcome": "failed"})
    ev = event("MfaEnrolled", {"account_id": acct, "company_id": co, "email": address, "first_name": "Ann",
                               "method": "totp", "enrolled_at": T0})
    await publish(runtime, ev)
    await wait_for(lambda: processed(runtime.pool, running.queue, ev["id"]), message="event acknowledged")
    (row,) = await journal(running.notifier.journal, ev["id"])
    assert row["status"] == "failed" and row["reason_code"] == "smtp_rejected"
    assert row["reason"] == "550 5.1.1 No such user here"
    assert smtp.recorder.rcpt_attempts[address] == 1 and smtp.recorder.mails == []
    assert sample("mfa_mails_total", {"kind": "mfa_enrolled", "outcome": "failed"}) == before + 1
    assert sample("mfa_events_retried_total", {"queue": running.queue, "type": "MfaEnrolled"}) == 0


async def test_bad_events_are_recorded_failed_and_parked_and_the_worker_goes_on(runtime, smtp, start_notifier):
    settings = runtime.settings
    running = await start_notifier(plain(smtp))
    acct, co = ids()
    good_address = f"{acct}@example.com"
    injection = event("MfaEnrolled", {"account_id": acct, "company_id": co, "email": good_address,
                                      "first_name": "Eve\r\nBcc: victim@example.com", "method": "totp",
                                      "enrolled_at": T0})
    wrong_token = event("BackupEmailRequested", {"login_id": "l", "account_id": acct, "company_id": co,
                                                 "backup_email": f"{acct}@backup.example", "first_name": "Ann",
                                                 "expires_at": T1,
                                                 # sealed for another account: must not open for this one
                                                 "link_token": seal(settings, "BackupEmailRequested", "other", "t0k3n!")})
    bad_requester = event("RecoveryTicketOpened", {"ticket_id": f"T-{acct}", "requester_email": "not an address",
                                                   "first_name": "Ann", "company_name": "Acme", "status": "open",
                                                   "channel": "email", "missing": []})
    await publish(runtime, injection, wrong_token, bad_requester)
    parked = await parked_messages(runtime, f"{running.queue}.parked", 3, timeout=10)
    assert {m.message_id for m in parked} == {injection["id"], wrong_token["id"], bad_requester["id"]}
    assert {m.headers["x-parked-reason"] for m in parked} == {"rejected"}

    (row,) = await journal(running.notifier.journal, injection["id"])
    assert (row["status"], row["reason_code"]) == ("failed", "unsafe_header")
    (row,) = await journal(running.notifier.journal, wrong_token["id"])
    assert (row["status"], row["reason_code"]) == ("failed", "bad_token")
    ack, desk = await journal(running.notifier.journal, bad_requester["id"])
    assert (ack["status"], ack["reason_code"]) == ("failed", "invalid_address")
    assert "not a valid email address" in ack["reason"]
    # The helpdesk still hears about the ticket; nothing went to the bad or injected addresses.
    assert desk["status"] == "sent"
    assert [m.rcpt_tos for m in smtp.recorder.mails] == [[settings.helpdesk_email]]
    assert smtp.recorder.mails[0].message["Reply-To"] is None
    assert smtp.recorder.rcpt_attempts["victim@example.com"] == 0

    follow_up = event("MfaEnrolled", {"account_id": acct, "company_id": co, "email": good_address,
                                      "first_name": "Ann", "method": "totp", "enrolled_at": T0})
    await publish(runtime, follow_up)
    await wait_for(lambda: smtp.recorder.to(good_address), message="a good event after the bad ones")


async def test_one_connection_is_reused_and_reopened_after_the_server_drops_it(runtime, smtp, start_notifier):
    running = await start_notifier(plain(smtp))
    acct, co = ids()

    def enrolled(n: int) -> dict:
        return event("MfaEnrolled", {"account_id": f"{acct}-{n}", "company_id": co, "first_name": "Ann",
                                     "email": f"{acct}-{n}@example.com", "method": "totp", "enrolled_at": T0})

    for n in range(4):
        await publish(runtime, enrolled(n))
        await wait_for(lambda n=n: smtp.recorder.to(f"{acct}-{n}@example.com"), message=f"mail {n}")
    assert smtp.connections == 1 and running.mailer.connections_opened == 1

    smtp.drop_connections()
    last = enrolled(9)
    await publish(runtime, last)
    await wait_for(lambda: smtp.recorder.to(f"{acct}-9@example.com"), message="mail after the drop")
    assert smtp.connections == 2 and running.mailer.connections_opened == 2
    (row,) = await journal(running.notifier.journal, last["id"])
    assert row["status"] == "sent" and row["attempts"] == 1  # the drop cost no retry


async def test_mailed_tokens_never_reach_the_logs(runtime, smtp, start_notifier):
    """The notifier opens sealed link and confirmation tokens to mail them; its log lines carry neither."""
    import io

    from services.common.logs import configure_logging

    settings = runtime.settings
    acct, co = ids()
    backup = f"{acct}@backup.example"
    login_token, confirm_token = f"login-{uuid.uuid4().hex}", f"confirm-{uuid.uuid4().hex}"
    events = [
        event("BackupEmailRequested", {"login_id": "l1", "account_id": acct, "company_id": co, "backup_email": backup,
                                       "first_name": "Ann", "expires_at": T1,
                                       "link_token": seal(settings, "BackupEmailRequested", acct, login_token)}),
        event("BackupEmailChanged", {"account_id": acct, "company_id": co, "email": f"{acct}@example.com",
                                     "first_name": "Ann", "backup_email": backup, "expires_at": T1,
                                     "confirm_token": seal(settings, "BackupEmailChanged", acct, confirm_token)}),
    ]
    buffer = io.StringIO()
    configure_logging("DEBUG", "json", stream=buffer)
    try:
        running = await start_notifier(plain(smtp))
        await publish(runtime, *events)
        await wait_for(lambda: all_processed(runtime, running.queue, events), message="events acknowledged")
    finally:
        configure_logging("WARNING", "console")
    ours = [m for m in smtp.recorder.mails if m.message["Message-ID"].split(".")[0][1:] in {e["id"] for e in events}]
    mailed = {link_in(m)[1] for m in ours if "token=" in text_of(m)}
    assert mailed == {login_token, confirm_token}  # both were opened and mailed
    logs = buffer.getvalue()
    assert events[0]["id"] in logs and "event_consumed" in logs  # the capture worked
    assert login_token not in logs and confirm_token not in logs


@pytest.mark.parametrize("smtputf8", [True, False], ids=["smtputf8", "ascii-only"])
async def test_international_addresses_reach_a_server_that_takes_them(runtime, start_notifier, smtputf8):
    acct, co = ids()
    idn_only = f"ann.{acct}@müller.example"  # goes as xn--mller-kva to any server
    utf8_local = f"jörg.{acct}@müller.example"  # needs SMTPUTF8
    server = await TestSmtpServer(smtputf8=smtputf8).start()
    try:
        running = await start_notifier(plain(server))
        sent = [event("MfaEnrolled", {"account_id": acct, "company_id": co, "email": address, "first_name": "Jörg",
                                      "method": "totp", "enrolled_at": T0}) for address in (idn_only, utf8_local)]
        await publish(runtime, *sent)
        for e in sent:
            await wait_for(lambda e=e: processed(runtime.pool, running.queue, e["id"]), message="event processed")
        (idn_row,) = await journal(running.notifier.journal, sent[0]["id"])
        assert idn_row["status"] == "sent"
        assert len(server.recorder.to(f"ann.{acct}@xn--mller-kva.example")) == 1
        (utf8_row,) = await journal(running.notifier.journal, sent[1]["id"])
        if smtputf8:
            assert utf8_row["status"] == "sent"
            (mail,) = server.recorder.to(f"jörg.{acct}@xn--mller-kva.example")
            assert f"jörg.{acct}@xn--mller-kva.example" in str(mail.message["To"])
        else:
            # A server without SMTPUTF8 cannot take the address: a clear, final verdict, not endless retries.
            assert (utf8_row["status"], utf8_row["reason_code"]) == ("failed", "smtputf8_unsupported")
            assert server.recorder.to(f"jörg.{acct}@xn--mller-kva.example") == []
    finally:
        await server.stop()


class _JournalAway:
    """The notifier's pool while the database restarts: the first `outages` journal writes fail as asyncpg fails."""

    def __init__(self, pool, outages: int) -> None:
        self.pool = pool
        self.outages = outages
        self.failed = 0

    async def execute(self, query: str, *args):
        if "INSERT INTO notifier.mails" in query and self.failed < self.outages:
            self.failed += 1
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return await self.pool.execute(query, *args)

    def __getattr__(self, name):
        return getattr(self.pool, name)


async def test_a_journal_write_waits_for_the_database_so_the_mail_is_not_sent_twice(runtime, smtp, journal_pool):
    """After a mail went out, the journal is written when the database is back; a redelivery sends nothing."""
    from services.notifier.domain import TEMPLATE_KINDS
    from services.notifier.handlers import Notifier
    from services.notifier.mailer import Mailer
    from services.notifier.templates import Catalog

    mailer = await Mailer(plain(smtp)).start()
    away = _JournalAway(journal_pool, outages=3)
    notifier = Notifier.from_settings(runtime.settings, catalog=Catalog.load(required=TEMPLATE_KINDS), mailer=mailer,
                                      journal=away)
    acct, co = ids()
    ev = event("MfaEnrolled", {"account_id": acct, "company_id": co, "email": f"{acct}@example.com",
                               "first_name": "Ann", "method": "totp", "enrolled_at": T0})
    try:
        for _ in range(2):  # the second time as the broker's redelivery after a lost commit
            async with journal_pool.acquire() as conn, conn.transaction():
                await notifier.handle(conn, ev)
    finally:
        await mailer.close()
    assert away.failed == 3
    (row,) = await journal(journal_pool, ev["id"])
    assert row["status"] == "sent"
    assert len(smtp.recorder.to(f"{acct}@example.com")) == 1
