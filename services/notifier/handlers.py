"""The notifier's use case: turn one event into the mails it asks for, each delivered once.

Each mail's fate is written to the journal (`notifier.mails`) on its own connection as soon as
it is known, outside the consumer's transaction: when one mail of an event waits for a retry,
or the transaction fails after a send, the next attempt sends only what is still missing.
Every attempt at the same mail carries the same Message-ID, derived from the event id.

- sent, or refused for good by the server (5xx): final, never sent again;
- the event itself is unusable for that mail (bad address, missing data, CR/LF in a header
  value, a token that does not open): recorded `failed`, the other mails still go, and the
  event is parked (PermanentError) so a human sees it; a replay re-checks only those mails;
- anything that may pass later (4xx, server down, timeout): recorded `deferred`, and the event
  goes back through the backbone's retry queues (1 s, 5 s, 30 s, 120 s by default).

A journal write that meets a database outage waits for the database to come back (up to
`journal_patience`): dropped after a mail went out, the next attempt would send it again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, replace
from email.headerregistry import Address
from typing import Any, Protocol

import asyncpg
import structlog

from ..common.config import ConfigError, Settings
from ..common.consumer import PermanentError
from ..common.crypto import Keyring
from ..common.errors import DATABASE_UNAVAILABLE
from ..common.logs import get_logger
from . import store
from .domain import (
    BAD_INPUT_CODES,
    BadMail,
    Context,
    MailPlan,
    build_message,
    check_address,
    locale_chain,
    message_id,
    parse_sender,
    parse_time,
    plan_mails,
)
from .mailer import SendResult
from .metrics import MAILS, SEND_SECONDS
from .templates import Catalog

log = get_logger("notifier")


class MailDeferred(Exception):
    """Some mail of an event could not be delivered yet: the consumer retries the event later."""


class Sender(Protocol):
    """What the notifier needs from a mailer: the SMTP Mailer, or anything with the same send."""

    async def send(self, message: bytes, *, sender: str, recipient: str) -> SendResult: ...


@dataclass
class Notifier:
    """Delivers the mails of events: templates, SMTP, the journal, and the keys that open link tokens."""

    catalog: Catalog
    mailer: Sender
    journal: asyncpg.Pool
    keyring: Keyring
    sender: Address
    helpdesk_email: str
    public_url: str
    journal_patience: float = 300.0  # seconds a journal write waits out a database outage

    @classmethod
    def from_settings(cls, settings: Settings, *, catalog: Catalog, mailer: Sender, journal: asyncpg.Pool) -> Notifier:
        """Check the mail settings once at start-up; ConfigError names the one that cannot work."""
        try:
            sender = parse_sender(settings.mail_from)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        try:
            check_address(settings.helpdesk_email, "helpdesk")
        except BadMail as exc:
            raise ConfigError(f"MFA_HELPDESK_EMAIL: {exc.detail}") from exc
        if not settings.public_url.startswith(("http://", "https://")):
            raise ConfigError("MFA_PUBLIC_URL must start with http:// or https://")
        return cls(catalog, mailer, journal, Keyring(settings.secret_keys), sender,
                   settings.helpdesk_email, settings.public_url)

    def _unseal(self, sealed: str, aad: str) -> str:
        try:
            return self.keyring.open(sealed, aad=aad).decode()
        except ValueError as exc:  # CryptoError and UnicodeDecodeError are both ValueErrors
            raise BadMail("bad_token", "the link token does not open with MFA_SECRET_KEYS for this account") from exc

    def plan(self, event: dict[str, Any]) -> list[MailPlan]:
        """The mails `event` asks for."""
        return plan_mails(event, Context(self.helpdesk_email, self.public_url, self._unseal))

    def compose(self, event: dict[str, Any], plan: MailPlan, msg_id: str) -> tuple[str, bytes]:
        """(subject, raw mail) of a plan; BadMail when it cannot be made whole and safe."""
        if plan.problem is not None:
            raise plan.problem
        rendered = self.catalog.render(plan.kind, locale_chain(plan.locale), plan.values)
        return rendered.subject, build_message(
            sender=self.sender,
            recipient=plan.recipient,
            recipient_name=plan.recipient_name,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            msg_id=msg_id,
            date=parse_time(event.get("time"), "event time"),
            reply_to=plan.reply_to,
        )

    async def _journal(self, record: store.MailRecord) -> None:
        """Write a mail's fate, waiting for the database if it is away (PostgreSQL restarting)."""
        deadline = time.monotonic() + self.journal_patience
        pause = 0.2
        while True:
            try:
                await store.record(self.journal, record)
                return
            except DATABASE_UNAVAILABLE as exc:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("journal_write_waiting", seq=record.seq, status=record.status,
                            error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def handle(self, conn: asyncpg.Connection, event: dict[str, Any]) -> None:
        """Consumer handler: deliver what `event` asks for and has not been delivered yet.

        `conn` is the consumer's transaction (it records the event id and reads the journal);
        each mail's fate is written through `self.journal` at once, never in that transaction.
        """
        data = event.get("data") or {}
        account_id = data.get("account_id") if isinstance(data.get("account_id"), str) else None
        company_id = event.get("companyid") or (data.get("company_id") if isinstance(data.get("company_id"), str) else None)
        states = await store.mail_states(conn, event["id"])
        outcomes: Counter[str] = Counter()
        deferred: list[str] = []
        unusable: list[str] = []
        for plan in self.plan(event):
            state = states.get(plan.seq)
            if state is not None and (
                state["status"] == "sent" or (state["status"] == "failed" and state["reason_code"] not in BAD_INPUT_CODES)
            ):
                outcomes["skipped"] += 1
                MAILS.labels(plan.kind, "skipped").inc()
                continue
            msg_id = message_id(event["id"], plan.seq, self.sender.domain)
            record = store.MailRecord(
                event_id=event["id"], seq=plan.seq, event_type=event["type"], kind=plan.kind,
                recipient=plan.recipient, subject="", message_id=msg_id, account_id=account_id,
                company_id=company_id, status="failed",
            )
            try:
                subject, message = self.compose(event, plan, msg_id)
            except BadMail as exc:
                await self._journal(replace(record, reason_code=exc.code, reason=exc.detail))
                outcomes["failed"] += 1
                MAILS.labels(plan.kind, "failed").inc()
                unusable.append(f"mail {plan.seq} ({plan.kind}): {exc.detail}")
                log.warning("mail_failed", kind=plan.kind, seq=plan.seq, failure=exc.code, reason=exc.detail)
                continue
            record = replace(record, subject=subject)
            started = time.perf_counter()
            result = await self.mailer.send(message, sender=self.sender.addr_spec,
                                            recipient=check_address(plan.recipient))
            SEND_SECONDS.observe(time.perf_counter() - started)
            await self._journal(replace(record, status=result.status, reason_code=result.reason_code, reason=result.reason))
            outcomes[result.status] += 1
            MAILS.labels(plan.kind, result.status).inc()
            if result.status == "deferred":
                deferred.append(f"mail {plan.seq} ({plan.kind}): {result.reason}")
                log.warning("mail_deferred", kind=plan.kind, seq=plan.seq, to=plan.recipient,
                            failure=result.reason_code, reason=result.reason)
            elif result.status == "failed":
                log.warning("mail_failed", kind=plan.kind, seq=plan.seq, to=plan.recipient,
                            failure=result.reason_code, reason=result.reason)
        # The consumer's summary line for this event carries these.
        structlog.contextvars.bind_contextvars(
            account_id=account_id, **{f"mails_{k}": v for k, v in sorted(outcomes.items())}
        )
        if deferred:
            raise MailDeferred("; ".join(deferred))
        if unusable:
            raise PermanentError("; ".join(unusable))
