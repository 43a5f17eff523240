"""SQL of the notifier's journal (`notifier.mails`): what each event's mails became."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

SCHEMA = "notifier"

Conn = asyncpg.Connection | asyncpg.Pool


@dataclass(frozen=True)
class MailRecord:
    """One row of the journal: the fate of mail `seq` of event `event_id`."""

    event_id: str
    seq: int
    event_type: str
    kind: str
    recipient: str
    subject: str
    message_id: str
    account_id: str | None
    company_id: str | None
    status: str  # sent | failed | deferred
    reason_code: str | None = None
    reason: str | None = None


async def mail_states(conn: Conn, event_id: str) -> dict[int, asyncpg.Record]:
    """The journal rows of an event by seq (empty the first time the event is seen)."""
    rows = await conn.fetch(
        "SELECT seq, status, reason_code, reason, attempts FROM notifier.mails WHERE event_id = $1", event_id
    )
    return {row["seq"]: row for row in rows}


async def record(conn: Conn, mail: MailRecord) -> None:
    """Write or update a mail's fate; a repeated attempt bumps `attempts`."""
    await conn.execute(
        """INSERT INTO notifier.mails (event_id, seq, event_type, kind, recipient, subject, message_id,
                                      account_id, company_id, status, reason_code, reason, sent_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                   CASE WHEN $10 = 'sent' THEN now() END)
           ON CONFLICT (event_id, seq) DO UPDATE SET
               kind = EXCLUDED.kind, recipient = EXCLUDED.recipient, subject = EXCLUDED.subject,
               message_id = EXCLUDED.message_id, status = EXCLUDED.status,
               reason_code = EXCLUDED.reason_code, reason = EXCLUDED.reason,
               attempts = notifier.mails.attempts + 1, updated_at = now(), sent_at = EXCLUDED.sent_at""",
        mail.event_id,
        mail.seq,
        mail.event_type,
        mail.kind,
        mail.recipient[:320],
        mail.subject[:500],
        mail.message_id,
        mail.account_id,
        mail.company_id,
        mail.status,
        mail.reason_code,
        (mail.reason or None) and mail.reason[:1000],
    )


async def mails_of_event(conn: Conn, event_id: str) -> list[asyncpg.Record]:
    """Every journal row of an event, in order (for operators and tests)."""
    return await conn.fetch("SELECT * FROM notifier.mails WHERE event_id = $1 ORDER BY seq", event_id)
