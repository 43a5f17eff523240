"""SMTP over TLS: STARTTLS and implicit TLS with a self-signed certificate, login, and a refused certificate."""

from __future__ import annotations

import dataclasses

import pytest

from services.notifier.domain import build_message, parse_sender
from services.notifier.mailer import Mailer, SendResult, SmtpConfig

from ..conftest import wait_for
from .conftest import EVENT_TIME, event, ids, journal, processed, publish, with_settings
from .smtp_server import TestSmtpServer, self_signed_certificate, server_tls_context


@pytest.fixture
def certificate(tmp_path):
    return self_signed_certificate(tmp_path)


def a_mail(to: str) -> bytes:
    return (build_message(sender=parse_sender("MFA <no-reply@mfa.localhost>"), recipient=to, recipient_name="",
                         subject="TLS check", text="hello", html="<p>hello</p>", msg_id="<tls.1@mfa.localhost>",
                         date=EVENT_TIME))


async def send_to_ann(server: TestSmtpServer, **config) -> SendResult:
    """One mail to ann@example.com through a new Mailer with `config`; the server is stopped afterwards."""
    try:
        mailer = await Mailer(SmtpConfig(host="127.0.0.1", port=server.port, **config)).start()
        try:
            return await mailer.send(a_mail("ann@example.com"), sender="no-reply@mfa.localhost",
                                     recipient="ann@example.com")
        finally:
            await mailer.close()
    finally:
        await server.stop()


async def test_starttls_with_a_self_signed_certificate_and_login_through_the_bus(runtime, start_notifier, certificate):
    cert, key = certificate
    server = await TestSmtpServer(starttls=server_tls_context(cert, key), credentials=("mailer", "s3cret")).start()
    try:
        settings = with_settings(runtime.settings, smtp_host="127.0.0.1", smtp_port=server.port, smtp_tls="starttls",
                                 smtp_user="mailer", smtp_password="s3cret")
        # The CA file comes from MFA_SMTP_CA_FILE, read by the notifier until Settings carries it.
        config = SmtpConfig.from_settings(dataclasses.replace(settings, smtp_ca_file=str(cert)))
        assert (config.tls, config.ca_file, config.user) == ("starttls", str(cert), "mailer")
        running = await start_notifier(config)
        acct, co = ids()
        ev = event("MfaEnrolled", {"account_id": acct, "company_id": co, "email": f"{acct}@example.com",
                                   "first_name": "Ann", "method": "totp", "enrolled_at": "2030-01-02T03:04:05Z"})
        await publish(runtime, ev)
        await wait_for(lambda: server.recorder.mails, message="mail over STARTTLS")
        await wait_for(lambda: processed(runtime.pool, running.queue, ev["id"]), message="event done")
    finally:
        await server.stop()
    (mail,) = server.recorder.mails
    assert mail.tls and mail.authenticated and mail.rcpt_tos == [f"{acct}@example.com"]
    (row,) = await journal(running.notifier.journal, ev["id"])
    assert row["status"] == "sent"


async def test_implicit_tls(certificate):
    cert, key = certificate
    server = await TestSmtpServer(implicit_tls=server_tls_context(cert, key)).start()
    result = await send_to_ann(server, tls="tls", ca_file=str(cert))
    assert result.status == "sent"
    assert server.recorder.mails[0].tls


async def test_an_untrusted_certificate_is_refused_and_the_mail_deferred(certificate):
    cert, key = certificate
    server = await TestSmtpServer(starttls=server_tls_context(cert, key)).start()
    result = await send_to_ann(server, tls="starttls")  # no CA file
    assert (result.status, result.reason_code) == ("deferred", "smtp_unavailable")
    assert "CERTIFICATE_VERIFY_FAILED" in result.reason
    assert server.recorder.mails == []


async def test_a_server_that_requires_starttls_refuses_plain_mail_and_the_mail_waits(certificate):
    cert, key = certificate
    server = await TestSmtpServer(starttls=server_tls_context(cert, key)).start()
    result = await send_to_ann(server, tls="none")
    # 530 "Must issue a STARTTLS command first" is the server's policy, not the recipient's: retried, not failed.
    assert result.status == "deferred" and result.smtp_code == 530
    assert server.recorder.mails == []


async def test_wrong_login_is_deferred_not_failed(certificate):
    cert, key = certificate
    server = await TestSmtpServer(starttls=server_tls_context(cert, key), credentials=("mailer", "s3cret")).start()
    result = await send_to_ann(server, tls="starttls", ca_file=str(cert), user="mailer", password="wrong")
    assert (result.status, result.reason_code) == ("deferred", "smtp_login")
    assert "s3cret" not in result.reason and "wrong" not in result.reason
