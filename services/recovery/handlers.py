"""Use cases of the recovery service: intake, the helpdesk queue, decisions, the photo purge.

Each use case loads what it needs, asks domain.py, and writes state and events in one
transaction (events through the outbox), so nothing is ever half-stored.

Transactions: every use case here is called by an edge that holds no connection (the HTTP api,
the SMTP intake, the purge loop) and always opens its own, from the pool it is given. The
directory's use cases (consumers.py) are the other kind: the consumer edge hands them a connection
already inside the transaction that records the event as processed. No use case is both. Rows
come from store.py as dataclasses (`store.Ticket`, `store.AccountDetails`, ...), and a statement
that changes a ticket returns it, so nothing is read twice.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from ..common.apikeys import Principal
from ..common.crypto import Keyring, keyed_hash
from ..common.errors import BadRequest, Conflict, Gone, NotFound
from ..common.events import Actor, iso, new_event, parse_time
from ..common.logs import get_logger
from ..common.outbox import add_events
from ..common.pages import EXPIRED_KEPT, new_token
from ..common.web import CONTROL_CHARACTERS
from . import domain, store
from .domain import IntakeRequest, RateLimits, TicketFields
from .store import Ticket

log = get_logger("recovery")

SCHEMA = "recovery"
SOURCE = "/mfa/recovery"
MAILBOX_ACTOR = Actor("system", "recovery-mailbox")
FORM_ACTOR = Actor("system", "recovery-form")  # the public page /recover, filled in by anyone
CLI_ACTOR = Actor("system", "mfa-cli")  # decisions in a console signed in with `mfa helpdesk-link`
HELPDESK_LINK_TTL = timedelta(minutes=10)
HELPDESK_SESSION_TTL = timedelta(hours=8)  # a working day


@dataclass(frozen=True)
class IntakeResult:
    """What an intake did: the ticket it opened, and the undecided tickets of the same person before it."""

    ticket_id: str
    status: str
    missing: list[str]
    related_ticket_ids: list[str]


def photo_path(ticket_id: str) -> str:
    """Where the helpdesk fetches a ticket's photo (the reference events carry instead of bytes)."""
    return f"/v1/recovery-tickets/{ticket_id}/photo"


# ---- intake


async def check_rate_limit(pool: asyncpg.Pool, rate_key: bytes, limits: RateLimits, req: IntakeRequest,
                           now: datetime | None = None) -> int | None:
    """Count this request against its sender and IP; the seconds to wait when over a limit, else None.

    Counters live in PostgreSQL so every process shares them; keys are keyed hashes, so the table
    holds no addresses. Matching and non-matching accounts count alike.
    """
    now = now or datetime.now(UTC)
    start = limits.window_start(now)
    checks = []
    if req.sender:
        checks.append((keyed_hash(rate_key, f"sender:{domain.normalize_email(req.sender)}"), limits.per_sender))
    if req.ip:
        checks.append((keyed_hash(rate_key, f"ip:{req.ip}"), limits.per_ip))
    if not checks:
        return None
    counts = await store.hits(pool, [key for key, _ in checks], start)
    over = any(count > limit for count, (_, limit) in zip(counts, checks, strict=True))
    return limits.retry_after(now) if over else None


async def open_ticket(pool: asyncpg.Pool, req: IntakeRequest, *, actor: Actor, correlation_id: str | None,
                      scope_company_id: str | None = None) -> IntakeResult:
    """Open a ticket of its own for `req`, linked to the undecided tickets of the same email and company.

    No request changes another request's ticket: a second request, from another key or a spoofed
    mail, can neither replace the names, photo or reply address an agent is checking nor unfreeze
    a claimed ticket. The caller's answer never depends on whether an account matched.
    """
    email_key, company_key = req.email_key, req.company_key
    account_id = company_id = None
    related: list[str] = []
    ticket_id = str(uuid.uuid4())
    fields = domain.new_ticket_fields(req)
    async with pool.acquire() as conn, conn.transaction():
        if email_key and company_key:
            # One person's intakes one after the other, so each sees the tickets opened before it.
            await store.lock_person(conn, email_key, company_key)
            matches = await store.find_accounts(conn, email_key, company_key, scope_company_id)
            if len(matches) == 1:
                account_id, company_id = matches[0].account_id, matches[0].company_id
            related = await store.undecided_ticket_ids_for(conn, email_key, company_key)
        await store.insert_ticket(
            conn, ticket_id=ticket_id, channel=req.channel, fields=fields, email_key=email_key,
            company_key=company_key, scope_company_id=scope_company_id, account_id=account_id,
            company_id=company_id,
        )
        if req.photo is not None:
            await store.put_photo(conn, ticket_id, req.photo, hashlib.sha256(req.photo.data).digest())
        event = new_event(
            "RecoveryTicketOpened",
            _opened_data(ticket_id, req.channel, fields, account_id, company_id, req.photo is not None, related),
            source=SOURCE,
            subject=account_id or ticket_id,
            company_id=company_id,
            correlation_id=correlation_id,
            actor=actor,
        )
        await add_events(conn, SCHEMA, [event])
    structlog.contextvars.bind_contextvars(ticket_id=ticket_id, ticket_status=fields.status,
                                           related_tickets=len(related))
    return IntakeResult(ticket_id, fields.status, fields.missing, related)


def _photo_deleted(deleted: store.PhotoDeletion, account_id: str | None, company_id: str | None,
                   correlation_id: str | None = None, actor: Actor | None = None) -> dict[str, Any]:
    """The event of a photo's deletion (what `store.delete_photo` returned): what, why, when; never the photo."""
    return new_event(
        "RecoveryPhotoDeleted",
        {"ticket_id": deleted.ticket_id, "account_id": account_id, "company_id": company_id,
         "reason": deleted.reason, "content_type": deleted.content_type, "size": deleted.size,
         "sha256": deleted.sha256.hex(), "received_at": iso(deleted.received_at),
         "deleted_at": iso(deleted.deleted_at)},
        source=SOURCE, subject=account_id or deleted.ticket_id, company_id=company_id, correlation_id=correlation_id,
        **({"actor": actor} if actor is not None else {}),
    )


def _opened_data(ticket_id: str, channel: str, fields: TicketFields, account_id: str | None,
                 company_id: str | None, has_photo: bool, related: list[str]) -> dict[str, Any]:
    return {
        "ticket_id": ticket_id,
        "requester_email": fields.requester_email,
        "first_name": fields.first_name,
        "last_name": fields.last_name,
        "company_name": fields.company_name,
        "account_id": account_id,
        "company_id": company_id,
        "status": domain.event_status(fields.missing),
        "channel": channel,
        "missing": fields.missing,
        "problems": fields.problems,
        "photo_ref": photo_path(ticket_id) if has_photo else None,
        "joined": False,  # kept for consumers of v1: requests no longer join tickets
        "related_ticket_ids": related,
        "reply_to": fields.reply_to,
    }


# ---- helpdesk


async def _visible_ticket(conn: asyncpg.Connection, ticket_id: str, principal: Principal,
                          *, for_update: bool = False) -> Ticket:
    ticket = await store.get_ticket(conn, ticket_id, for_update=for_update)
    if ticket is None:
        raise NotFound("No such recovery ticket.", code="ticket_not_found")
    # A key bound to a company sees only tickets matched to it: anything else is "not found".
    if not principal.sees(ticket.company_id):
        raise NotFound("No such recovery ticket.", code="ticket_not_found")
    return ticket


async def _view(conn: asyncpg.Connection, ticket: Ticket) -> dict[str, Any]:
    """The helpdesk's view of `ticket` as just read or written (it is not read again)."""
    meta = await store.photo_meta(conn, ticket.ticket_id)
    deletion = None if meta else await store.last_photo_deletion(conn, ticket.ticket_id)
    details = await store.account_details(conn, ticket.account_id) if ticket.account_id else None
    match = None
    if details is not None:
        match = {
            "account_id": details.account_id,
            "company_id": details.company_id,
            "company_name": details.company_name,
            "email": details.email,
            "first_name": details.first_name,
            "last_name": details.last_name,
            "role": details.role,
            "mfa_enabled": details.mfa_enabled,
            "mfa_forced": details.mfa_forced,
            "company_mfa_required": details.company_mfa_required,
            "account_mfa_required": details.account_mfa_required,
            "backup_email_confirmed": details.backup_email_confirmed,
            "names_match": domain.names_match(ticket.first_name, ticket.last_name, details.first_name,
                                              details.last_name),
        }
    related = await store.related_ticket_ids(conn, ticket.ticket_id, ticket.email_key, ticket.company_key)
    return {
        **_summary(ticket, meta is not None),
        "related_ticket_ids": related,
        "reply_to": ticket.reply_to,
        "problems": ticket.problems,
        "claimed_at": iso(ticket.claimed_at),
        "decided_by": ticket.decided_by,
        "decided_at": iso(ticket.decided_at),
        "decision_note": ticket.decision_note,
        "photo": {
            "available": meta is not None,
            "url": photo_path(ticket.ticket_id) if meta else None,
            "content_type": meta.content_type if meta else None,
            "size": meta.size if meta else None,
            "received_at": iso(meta.received_at) if meta else None,
            "deleted_at": iso(deletion.deleted_at) if deletion else None,
            "deletion_reason": deletion.reason if deletion else None,
        },
        "match": match,
    }


def _summary(ticket: Ticket, has_photo: bool) -> dict[str, Any]:
    return {
        "ticket_id": ticket.ticket_id,
        "status": ticket.status,
        "channel": ticket.channel,
        "requester_email": ticket.requester_email,
        "first_name": ticket.first_name,
        "last_name": ticket.last_name,
        "company_name": ticket.company_name,
        "missing": ticket.missing,
        "matched": ticket.account_id is not None,
        "account_id": ticket.account_id,
        "company_id": ticket.company_id,
        "has_photo": has_photo,
        "request_count": ticket.request_count,
        "claimed_by": ticket.claimed_by,
        "created_at": iso(ticket.created_at),
        "updated_at": iso(ticket.updated_at),
    }


async def get_ticket(pool: asyncpg.Pool, ticket_id: str, principal: Principal) -> dict[str, Any]:
    """One ticket with its photo's state and the matched account, as the helpdesk sees it."""
    async with pool.acquire() as conn, conn.transaction():
        return await _view(conn, await _visible_ticket(conn, ticket_id, principal))


def encode_cursor(created_at: datetime, ticket_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{ticket_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, ticket_id) a cursor of `encode_cursor` holds; 400 `invalid_cursor` for anything else.

    A cursor comes back from outside: its text may hold anything the database refuses (U+0000, an
    out-of-range time), so it is checked as strictly as it was made.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, ticket_id = raw.partition("|")
        if not 1 <= len(ticket_id) <= 128 or CONTROL_CHARACTERS.search(ticket_id):
            raise ValueError("not a ticket id")
        return parse_time(stamp), ticket_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadRequest("The cursor is not one this API returned.", code="invalid_cursor") from exc


async def list_tickets(pool: asyncpg.Pool, principal: Principal, *, statuses: list[str], after: str | None,
                       limit: int) -> dict[str, Any]:
    """The queue, oldest first, limited to the caller's company when its key is bound to one."""
    cursor = decode_cursor(after) if after else None
    async with pool.acquire() as conn:
        rows = await store.list_tickets(conn, statuses=statuses, company_id=principal.company_id, after=cursor,
                                        limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "tickets": [_summary(t, t.has_photo) for t in rows],
        "next": encode_cursor(rows[-1].created_at, rows[-1].ticket_id) if more and rows else None,
    }


async def get_photo(pool: asyncpg.Pool, ticket_id: str, principal: Principal) -> tuple[bytes, str]:
    """The photo's bytes and media type; 410 once it was deleted."""
    async with pool.acquire() as conn, conn.transaction():
        await _visible_ticket(conn, ticket_id, principal)
        photo = await store.get_photo(conn, ticket_id)
        if photo is None:
            if await store.last_photo_deletion(conn, ticket_id):
                raise Gone("The photo was deleted (the ticket was decided or it expired).", code="photo_deleted")
            raise NotFound("This ticket has no photo.", code="no_photo")
    structlog.contextvars.bind_contextvars(ticket_id=ticket_id, photo_bytes=photo.size)
    assert photo.data is not None  # get_photo reads the bytes
    return photo.data, photo.content_type


async def claim(pool: asyncpg.Pool, ticket_id: str, principal: Principal, *, agent: str,
                force: bool = False) -> dict[str, Any]:
    """An agent takes the ticket; nobody else decides it while they hold it."""
    async with pool.acquire() as conn, conn.transaction():
        ticket = await _visible_ticket(conn, ticket_id, principal, for_update=True)
        domain.check_claim(ticket.status, ticket.claimed_by, agent, force)
        view = await _view(conn, await store.claim_ticket(conn, ticket_id, agent))
    structlog.contextvars.bind_contextvars(ticket_id=ticket_id, agent=agent)
    log.info("recovery_ticket_claimed", previous=ticket.claimed_by)
    return view


async def decide(pool: asyncpg.Pool, ticket_id: str, principal: Principal, *, action: str, agent: str,
                 text: str, actor: Actor, correlation_id: str | None) -> dict[str, Any]:
    """Approve or reject a ticket, once: the decision, the photo's deletion and the event in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        ticket = await _visible_ticket(conn, ticket_id, principal, for_update=True)
        account_id, company_id = ticket.account_id, ticket.company_id
        live = await store.account_details(conn, account_id) if account_id else None
        domain.check_decision(action, ticket.status, ticket.claimed_by, agent, ticket.missing,
                              live.account_id if live else None)
        status = "approved" if action == "approve" else "rejected"
        decided = await store.decide_ticket(conn, ticket_id, status, agent, text)
        if decided is None:  # cannot happen under the row lock; kept so a change elsewhere fails loudly
            raise Conflict("This ticket has already been decided.", code="already_decided")
        deleted = await store.delete_photo(conn, ticket_id, "decided")
        data: dict[str, Any] = {
            "ticket_id": ticket_id,
            "requester_email": ticket.requester_email,
            "first_name": ticket.first_name,
            "last_name": ticket.last_name,
            "company_name": ticket.company_name,
            "account_id": account_id if live else None,
            "company_id": company_id,
            "agent": agent,
            "reply_to": ticket.reply_to,
            # The outcome goes to the account's own addresses, never only to one the request gave.
            "account_email": live.email if live else None,
            "backup_email": live.backup_email if live and live.backup_email_confirmed else None,
        }
        if action == "approve":
            data["note"] = text
            event_type = "RecoveryTicketApproved"
        else:
            data["reason"] = text
            event_type = "RecoveryTicketRejected"
        event = new_event(event_type, data, source=SOURCE, subject=account_id or ticket_id, company_id=company_id,
                          correlation_id=correlation_id, actor=actor)
        events = [event]
        if deleted is not None:
            events.append(_photo_deleted(deleted, data["account_id"], company_id, correlation_id, actor))
        await add_events(conn, SCHEMA, events)
        view = await _view(conn, decided)
    structlog.contextvars.bind_contextvars(ticket_id=ticket_id, agent=agent, decision=status)
    log.info("recovery_ticket_decided", photo_deleted=deleted is not None)
    return view


# ---- retention


async def purge_expired_photos(pool: asyncpg.Pool, *, now: datetime | None = None,
                               retention: timedelta = domain.PHOTO_RETENTION, batch: int = 100) -> int:
    """Delete photos older than `retention` (tickets left open 30 days), recording each deletion."""
    cutoff = (now or datetime.now(UTC)) - retention
    total = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            tickets = await store.expired_photo_tickets(conn, cutoff, batch)
            by_id = {ticket.ticket_id: ticket for ticket in tickets}
            deletions = await store.delete_photos(conn, list(by_id), "expired")
            await store.mark_photos_expired(conn, list(by_id))
            await add_events(conn, SCHEMA, [
                _photo_deleted(d, by_id[d.ticket_id].account_id, by_id[d.ticket_id].company_id) for d in deletions])
        total += len(tickets)
        if len(tickets) < batch:
            break
    if total:
        log.info("recovery_photos_expired", count=total)
    return total


async def prune_rate_limits(pool: asyncpg.Pool, limits: RateLimits, now: datetime | None = None) -> int:
    """Forget counters of windows that are over."""
    now = now or datetime.now(UTC)
    return await store.prune_rate_limits(pool, limits.window_start(now) - limits.window)


async def purge_expired_console_sign_ins(pool: asyncpg.Pool, now: datetime | None = None) -> int:
    """Delete console sign-in links and sessions that expired more than `EXPIRED_KEPT` ago."""
    deleted = await store.purge_expired_sign_ins(pool, (now or datetime.now(UTC)) - EXPIRED_KEPT)
    if deleted:
        log.info("recovery_sign_ins_purged", count=deleted)
    return deleted


# ---- helpdesk console: sign-in links and sessions


@dataclass(frozen=True)
class HelpdeskLink:
    """A single-use sign-in link to the console and when it stops working."""

    url: str
    expires_at: datetime


def console_token_key(keyring: Keyring) -> bytes:
    """The key of the console's link and session hashes: the app and `mfa helpdesk-link` must agree on it."""
    return keyring.derive("recovery-helpdesk-session")


def agent_of(session: store.HelpdeskSession) -> tuple[Principal, Actor]:
    """The caller of the ticket use cases for a signed-in agent: the key's scope and the events' actor."""
    if session.key_id is None:
        return Principal("mfa-cli", "helpdesk", session.company_id), CLI_ACTOR
    return Principal(session.key_id, "helpdesk", session.company_id), Actor("api_key", session.key_id)


async def issue_helpdesk_link(pool: asyncpg.Pool, token_key: bytes, base_url: str, agent: str,
                              principal: Principal | None, *, now: datetime | None = None) -> HelpdeskLink:
    """A single-use link that signs `agent` in to the console (valid 10 minutes), as `principal` or the CLI.

    The agent's name is fixed here, by whoever holds a helpdesk key (or the database): the console
    never takes it from a form, so nobody decides under another agent's name.
    """
    token = new_token()
    expires = (now or datetime.now(UTC)) + HELPDESK_LINK_TTL
    async with pool.acquire() as conn:
        await store.insert_helpdesk_link(conn, keyed_hash(token_key, token), agent,
                                         principal.key_id if principal else None,
                                         principal.company_id if principal else None, expires)
    structlog.contextvars.bind_contextvars(agent=agent)
    log.info("helpdesk_link_issued", by_key=principal.key_id if principal else None)
    return HelpdeskLink(f"{base_url}/mfa/helpdesk?token={token}", expires)


async def open_helpdesk_link(pool: asyncpg.Pool, token_key: bytes, token: str) -> tuple[str, datetime]:
    """Exchange a link's token (once, enforced by the database) for a session token of 8 hours."""
    at = datetime.now(UTC)
    session = new_token()
    async with pool.acquire() as conn, conn.transaction():
        outcome, link = await store.use_helpdesk_link(conn, keyed_hash(token_key, token[:200]), at)
        if outcome != "ok" or link is None:
            raise Gone(f"This sign-in link is {outcome}.", code=f"helpdesk_link_{outcome}")
        expires = at + HELPDESK_SESSION_TTL
        await store.insert_helpdesk_session(conn, keyed_hash(token_key, session), link, expires)
    structlog.contextvars.bind_contextvars(agent=link.agent)
    log.info("helpdesk_signed_in")
    return session, expires


async def helpdesk_session(pool: asyncpg.Pool, token_key: bytes, cookie: str | None) -> store.HelpdeskSession:
    """The live session of a console cookie, or 410 `session_missing` (signed out, expired, key revoked)."""
    if not cookie or len(cookie) > 100:
        raise Gone("There is no helpdesk session.", code="helpdesk_session_missing")
    async with pool.acquire() as conn:
        session = await store.get_helpdesk_session(conn, keyed_hash(token_key, cookie), datetime.now(UTC))
    if session is None:
        raise Gone("There is no helpdesk session.", code="helpdesk_session_missing")
    return session


async def sign_out(pool: asyncpg.Pool, token_key: bytes, cookie: str) -> None:
    """End a console session; its cookie opens nothing any more."""
    async with pool.acquire() as conn:
        await store.end_helpdesk_session(conn, keyed_hash(token_key, cookie), datetime.now(UTC))
    log.info("helpdesk_signed_out")


async def search_directory(pool: asyncpg.Pool, principal: Principal, email: str) -> list[store.DirectoryHit]:
    """Accounts of the directory copy whose email starts with `email`, for a ticket that matched none."""
    email = email.strip()[:254]
    if len(email) < 3 or CONTROL_CHARACTERS.search(email):
        return []
    async with pool.acquire() as conn:
        return await store.search_accounts(conn, email, principal.company_id)
