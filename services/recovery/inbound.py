"""Mail in: the helpdesk mailbox, an SMTP server (aiosmtpd) on the app's own event loop.

Each message runs the same intake use case as the form. The server never crashes on a message:
250 once a (possibly incomplete) ticket is stored or a mail is dropped on purpose (rate limit,
automatic replies: answering those would loop), 552 above the size limit (aiosmtpd itself),
451 when the database cannot take it, so the sending server tries again later and nothing is lost.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from email import policy
from email.parser import BytesHeaderParser
from typing import Any

import asyncpg
import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from ..common.errors import DATABASE_UNAVAILABLE
from ..common.logs import get_logger
from .domain import MAX_MAIL_BYTES, IntakeRequest, RateLimits, normalize_email
from .handlers import MAILBOX_ACTOR, check_rate_limit, open_ticket
from .mailparse import read_mail
from .workers import JobTimeout, ParsePool

log = get_logger("recovery.smtp")

MAX_RECIPIENTS = 20
# Out-of-office replies that set none of the RFC 3834 headers still announce themselves here.
AUTO_REPLY_SUBJECTS = ("auto:", "automatic reply", "autoreply", "auto-reply", "out of office", "abwesenheitsnotiz",
                       "afwezigheidsmelding", "automatisch antwoord", "réponse automatique", "undeliverable",
                       "delivery status notification", "mail delivery failed")


def is_automatic(raw: bytes, envelope_sender: str) -> bool:
    """True for bounces and auto-replies (RFC 3834): never open tickets for them, never answer them."""
    if not envelope_sender or envelope_sender == "<>":
        return True
    try:
        headers = BytesHeaderParser(policy=policy.compat32).parsebytes(raw[:64 * 1024])
    except Exception:  # unreadable headers: let the intake report the mail as unreadable
        return False
    auto = str(headers.get("Auto-Submitted", "no")).strip().lower()
    precedence = str(headers.get("Precedence", "")).strip().lower()
    subject = " ".join(str(headers.get("Subject", "")).split()).lower()
    return (auto not in ("", "no") or precedence in ("bulk", "junk", "auto_reply")
            or headers.get("X-Autoreply") is not None or headers.get("X-Autorespond") is not None
            or subject.startswith(AUTO_REPLY_SUBJECTS))


class MailboxHandler:
    """aiosmtpd handler: one intake per message, with one summary log line."""

    def __init__(self, pool: asyncpg.Pool, *, rate_key: bytes, limits: RateLimits, mailbox: tuple[str, ...],
                 parsers: ParsePool) -> None:
        self.pool = pool
        self.parsers = parsers
        self.rate_key = rate_key
        self.limits = limits
        self.mailbox = mailbox
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._intake(session, envelope)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _intake(self, session: Session, envelope: Envelope) -> str:
        started = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        correlation_id = str(uuid.uuid4())
        structlog.contextvars.bind_contextvars(service="recovery", channel="smtp", correlation_id=correlation_id)
        raw = envelope.original_content or b""
        sender = normalize_email(envelope.mail_from or "")
        peer = session.peer
        ip = peer[0] if isinstance(peer, tuple) and peer else ""
        summary: dict[str, Any] = {"bytes": len(raw)}
        outcome = "error"
        try:
            if is_automatic(raw, sender):
                outcome = "dropped_automatic"
                return "250 OK"
            probe = IntakeRequest(channel="email", sender=sender, ip=ip)
            if await check_rate_limit(self.pool, self.rate_key, self.limits, probe) is not None:
                # Same answer as an accepted mail: the sender learns nothing, the helpdesk is not flooded.
                outcome = "dropped_rate_limited"
                return "250 OK"
            try:
                # In a worker process: a hostile mail costs a worker, never the loop that answers logins.
                request = await self.parsers.run(read_mail, raw, self.mailbox, sender, ip)
            except JobTimeout:
                outcome = "rejected_parse_timeout"
                return "554 5.6.0 The message could not be read; it was not accepted"
            result = await open_ticket(self.pool, request, actor=MAILBOX_ACTOR, correlation_id=correlation_id)
            outcome = "opened"
            summary.update(ticket_id=result.ticket_id, ticket_status=result.status, missing=result.missing,
                           related_tickets=len(result.related_ticket_ids),
                           problems=list(request.problems))
            return "250 OK"
        except DATABASE_UNAVAILABLE as exc:
            outcome = "database_unavailable"
            summary["error"] = f"{type(exc).__name__}: {exc}"
            return "451 4.3.0 Temporarily unable to accept the message; try again later"
        except Exception:
            # Unknown failure: keep the message with the sender (it retries) rather than lose it.
            outcome = "error"
            log.exception("smtp_message_failed")
            return "451 4.3.0 Temporarily unable to accept the message; try again later"
        finally:
            log.info("smtp_message", outcome=outcome, recipients=len(envelope.rcpt_tos),
                     duration_ms=round((time.perf_counter() - started) * 1000, 2), **summary)

    async def wait_idle(self, grace: float) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            log.warning("smtp_stop_timeout", in_flight=self._in_flight)


class InboundMailbox:
    """The SMTP listener, started and stopped within the app's lifetime."""

    def __init__(self, handler: MailboxHandler, host: str, port: int, hostname: str) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.hostname = hostname
        self._server: asyncio.AbstractServer | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def _protocol(self) -> SMTP:
        session = SMTP(
            self.handler,
            data_size_limit=MAX_MAIL_BYTES,
            hostname=self.hostname,
            ident="MFA recovery mailbox",
            enable_SMTPUTF8=True,
            timeout=120,
            loop=asyncio.get_running_loop(),
        )
        self._sessions.add(session)
        return session

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(self._protocol, self.host, self.port)
        log.info("smtp_listening", host=self.host, port=self.port)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop listening, let messages being stored finish, then close the open sessions."""
        if self._server is None:
            return
        self._server.close()
        await self.handler.wait_idle(grace)
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        await self._server.wait_closed()
        self._server = None
        log.info("smtp_stopped", port=self.port)
