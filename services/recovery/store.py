"""SQL of the recovery schema: directory read model, tickets, photos, rate limits."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

import asyncpg

from ..common.db import delete_expired
from .domain import UNDECIDED, Photo, TicketFields


@dataclass(frozen=True)
class Ticket:
    """A row of recovery.tickets (with `has_photo` where the query asks for it)."""

    ticket_id: str
    status: str
    channel: str
    requester_email: str
    email_key: str | None
    first_name: str
    last_name: str
    company_name: str
    company_key: str | None
    reply_to: str | None
    missing: list[str]
    problems: list[str]
    scope_company_id: str | None
    account_id: str | None
    company_id: str | None
    request_count: int
    claimed_by: str | None
    claimed_at: datetime | None
    decided_by: str | None
    decided_at: datetime | None
    decision_note: str | None
    created_at: datetime
    updated_at: datetime
    has_photo: bool = False


@dataclass(frozen=True)
class AccountRef:
    """An account of the directory read model, by id."""

    account_id: str
    company_id: str | None


@dataclass(frozen=True)
class AccountDetails:
    """A live account with what the helpdesk checks and where a decision is mailed."""

    account_id: str
    company_id: str | None
    email: str | None
    first_name: str | None
    last_name: str | None
    role: str | None
    account_mfa_required: bool
    mfa_enabled: bool
    backup_email_confirmed: bool
    backup_email: str | None
    company_name: str | None
    company_mfa_required: bool

    @property
    def mfa_forced(self) -> bool:
        return self.company_mfa_required or self.account_mfa_required


@dataclass(frozen=True)
class StoredPhoto:
    """A ticket's photo (`data` is None where only the metadata was read)."""

    content_type: str
    size: int
    received_at: datetime
    sha256: bytes | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class PhotoDeletion:
    """A row of recovery.photo_deletions (the photo's metadata, never the photo)."""

    ticket_id: str
    reason: str
    deleted_at: datetime
    content_type: str = ""
    size: int = 0
    sha256: bytes = b""
    received_at: datetime | None = None


def _row(cls, record: asyncpg.Record | None):
    """`record` as a `cls`, taking the columns `cls` has (None stays None)."""
    if record is None:
        return None
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in record.items() if k in names}
    for key in ("missing", "problems"):
        if key in values:
            values[key] = list(values[key])
    if "sha256" in values and values["sha256"] is not None:
        values["sha256"] = bytes(values["sha256"])
    if "data" in values and values["data"] is not None:
        values["data"] = bytes(values["data"])
    return cls(**values)


TICKET_COLUMNS = (
    "ticket_id, status, channel, requester_email, email_key, first_name, last_name, company_name, company_key,"
    " reply_to, missing, problems, scope_company_id, account_id, company_id, request_count, claimed_by,"
    " claimed_at, decided_by, decided_at, decision_note, created_at, updated_at"
)

# ---- directory read model: each update applies only if its event is not older than the stored one


async def upsert_company(conn: asyncpg.Connection, company_id: str, name: str, name_key: str,
                         mfa_required: bool, at: datetime) -> None:
    await conn.execute(
        """INSERT INTO recovery.companies (company_id, name, name_key, name_at, mfa_required, policy_at)
           VALUES ($1, $2, $3, $5, $4, $5)
           ON CONFLICT (company_id) DO UPDATE SET
             name = CASE WHEN companies.name_at IS NULL OR companies.name_at <= $5 THEN $2 ELSE companies.name END,
             name_key = CASE WHEN companies.name_at IS NULL OR companies.name_at <= $5 THEN $3
                             ELSE companies.name_key END,
             name_at = GREATEST(companies.name_at, $5),
             mfa_required = CASE WHEN companies.policy_at IS NULL OR companies.policy_at <= $5 THEN $4
                                 ELSE companies.mfa_required END,
             policy_at = GREATEST(companies.policy_at, $5)""",
        company_id, name, name_key, mfa_required, at,
    )


async def set_company_policy(conn: asyncpg.Connection, company_id: str, mfa_required: bool, at: datetime) -> None:
    await conn.execute(
        """INSERT INTO recovery.companies (company_id, mfa_required, policy_at) VALUES ($1, $2, $3)
           ON CONFLICT (company_id) DO UPDATE SET mfa_required = $2, policy_at = $3
           WHERE companies.policy_at IS NULL OR companies.policy_at <= $3""",
        company_id, mfa_required, at,
    )


async def upsert_account_profile(conn: asyncpg.Connection, *, account_id: str, company_id: str, email: str,
                                 email_key: str, first_name: str, last_name: str, role: str,
                                 mfa_required: bool, at: datetime) -> None:
    await conn.execute(
        """INSERT INTO recovery.accounts (account_id, company_id, email, email_key, first_name, last_name, role,
                                          profile_at, mfa_required, policy_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $8)
           ON CONFLICT (account_id) DO UPDATE SET
             company_id = $2, email = $3, email_key = $4, first_name = $5, last_name = $6, role = $7, profile_at = $8
           WHERE accounts.profile_at IS NULL OR accounts.profile_at <= $8""",
        account_id, company_id, email, email_key, first_name, last_name, role, at, mfa_required,
    )
    await set_account_policy(conn, account_id, company_id, mfa_required, at)


async def set_account_policy(conn: asyncpg.Connection, account_id: str, company_id: str | None,
                             mfa_required: bool, at: datetime) -> None:
    await conn.execute(
        """INSERT INTO recovery.accounts (account_id, company_id, mfa_required, policy_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (account_id) DO UPDATE SET mfa_required = $3, policy_at = $4,
             company_id = COALESCE(accounts.company_id, $2)
           WHERE accounts.policy_at IS NULL OR accounts.policy_at <= $4""",
        account_id, company_id, mfa_required, at,
    )


async def remove_account(conn: asyncpg.Connection, account_id: str, company_id: str | None, at: datetime) -> None:
    await conn.execute(
        """INSERT INTO recovery.accounts (account_id, company_id, removed_at) VALUES ($1, $2, $3)
           ON CONFLICT (account_id) DO UPDATE SET removed_at = GREATEST(accounts.removed_at, $3)""",
        account_id, company_id, at,
    )


async def set_mfa_enabled(conn: asyncpg.Connection, account_id: str, company_id: str, enabled: bool,
                          at: datetime) -> None:
    await conn.execute(
        """INSERT INTO recovery.accounts (account_id, company_id, mfa_enabled, mfa_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (account_id) DO UPDATE SET mfa_enabled = $3, mfa_at = $4,
             company_id = COALESCE(accounts.company_id, $2)
           WHERE accounts.mfa_at IS NULL OR accounts.mfa_at <= $4""",
        account_id, company_id, enabled, at,
    )


async def set_backup_confirmed(conn: asyncpg.Connection, account_id: str, company_id: str, backup_email: str,
                               at: datetime) -> None:
    await conn.execute(
        """INSERT INTO recovery.accounts (account_id, company_id, backup_email_confirmed, backup_email, backup_at)
           VALUES ($1, $2, true, $3, $4)
           ON CONFLICT (account_id) DO UPDATE SET backup_email_confirmed = true, backup_email = $3, backup_at = $4,
             company_id = COALESCE(accounts.company_id, $2)
           WHERE accounts.backup_at IS NULL OR accounts.backup_at <= $4""",
        account_id, company_id, backup_email, at,
    )


_LIVE = "a.profile_at IS NOT NULL AND (a.removed_at IS NULL OR a.profile_at > a.removed_at)"


async def find_accounts(conn: asyncpg.Connection, email_key: str, company_key: str,
                        scope_company_id: str | None) -> list[AccountRef]:
    """Live accounts with this email in a company of this name (normally one)."""
    return [_row(AccountRef, r) for r in await conn.fetch(
        f"""SELECT a.account_id, a.company_id FROM recovery.accounts a
            JOIN recovery.companies c ON c.company_id = a.company_id
            WHERE a.email_key = $1 AND c.name_key = $2 AND {_LIVE}
              AND ($3::text IS NULL OR a.company_id = $3)
            LIMIT 2""",
        email_key, company_key, scope_company_id,
    )]


async def company_name_key(conn: asyncpg.Connection, company_id: str) -> str | None:
    """The matching key of a company's name as the directory copy holds it, or None when not known yet."""
    return await conn.fetchval("SELECT name_key FROM recovery.companies WHERE company_id = $1", company_id)


async def match_waiting_tickets(conn: asyncpg.Connection, *, account_id: str | None = None,
                                company_id: str | None = None) -> int:
    """Match the undecided, unmatched tickets that this account (or this company's accounts) now answer.

    The directory may learn of an account after its person wrote in; the ticket is matched as soon
    as the account or its company arrives, and only when exactly one live account answers it.
    The number of tickets matched.
    """
    status = await conn.execute(
        f"""WITH candidates AS (
              SELECT t.ticket_id, t.email_key, t.company_key, t.scope_company_id FROM recovery.tickets t
              WHERE t.account_id IS NULL AND t.status = ANY($3::text[])
                AND (t.email_key, t.company_key) IN (
                  SELECT a.email_key, c.name_key FROM recovery.accounts a
                  JOIN recovery.companies c ON c.company_id = a.company_id
                  WHERE a.account_id = $1 OR a.company_id = $2)
            ), matches AS (
              SELECT k.ticket_id, min(a.account_id) AS account_id, min(a.company_id) AS company_id,
                     count(*) AS answers
              FROM candidates k
              JOIN recovery.accounts a ON a.email_key = k.email_key
              JOIN recovery.companies c ON c.company_id = a.company_id AND c.name_key = k.company_key
              WHERE {_LIVE} AND (k.scope_company_id IS NULL OR a.company_id = k.scope_company_id)
              GROUP BY k.ticket_id
            )
            UPDATE recovery.tickets t SET account_id = m.account_id, company_id = m.company_id, updated_at = now()
            FROM matches m WHERE t.ticket_id = m.ticket_id AND m.answers = 1 AND t.account_id IS NULL""",
        account_id, company_id, list(UNDECIDED),
    )
    return int(status.rsplit(" ", 1)[-1])


async def account_details(conn: asyncpg.Connection, account_id: str) -> AccountDetails | None:
    """The live account with its company, or None when unknown or removed."""
    return _row(AccountDetails, await conn.fetchrow(
        f"""SELECT a.account_id, a.company_id, a.email, a.first_name, a.last_name, a.role,
                   a.mfa_required AS account_mfa_required, a.mfa_enabled, a.backup_email_confirmed, a.backup_email,
                   c.name AS company_name, COALESCE(c.mfa_required, false) AS company_mfa_required
            FROM recovery.accounts a LEFT JOIN recovery.companies c ON c.company_id = a.company_id
            WHERE a.account_id = $1 AND {_LIVE}""",
        account_id,
    ))


# ---- tickets


async def lock_person(conn: asyncpg.Connection, email_key: str, company_key: str) -> None:
    """Serialise intakes for one person, so each sees the tickets opened before it."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"recovery:{email_key}\n{company_key}")


async def undecided_ticket_ids_for(conn: asyncpg.Connection, email_key: str, company_key: str,
                                   limit: int = 20) -> list[str]:
    """The undecided tickets of one person (email and company), oldest first."""
    rows = await conn.fetch(
        """SELECT ticket_id FROM recovery.tickets
           WHERE email_key = $1 AND company_key = $2 AND status = ANY($3::text[])
           ORDER BY created_at, ticket_id LIMIT $4""",
        email_key, company_key, list(UNDECIDED), limit,
    )
    return [r["ticket_id"] for r in rows]


async def related_ticket_ids(conn: asyncpg.Connection, ticket_id: str, email_key: str | None,
                             company_key: str | None, limit: int = 20) -> list[str]:
    """The other tickets of the same person (email and company), whatever their status, oldest first."""
    if not (email_key and company_key):
        return []
    rows = await conn.fetch(
        """SELECT ticket_id FROM recovery.tickets
           WHERE email_key = $1 AND company_key = $2 AND ticket_id <> $3
           ORDER BY created_at, ticket_id LIMIT $4""",
        email_key, company_key, ticket_id, limit,
    )
    return [r["ticket_id"] for r in rows]


async def insert_ticket(conn: asyncpg.Connection, *, ticket_id: str, channel: str, fields: TicketFields,
                        email_key: str | None, company_key: str | None, scope_company_id: str | None,
                        account_id: str | None, company_id: str | None) -> None:
    await conn.execute(
        """INSERT INTO recovery.tickets (ticket_id, status, channel, requester_email, email_key, first_name, last_name,
                                         company_name, company_key, reply_to, missing, problems, scope_company_id,
                                         account_id, company_id, created_at, updated_at)
           -- clock_timestamp(), not now(): taken after the person's lock, so the queue and
           -- related_ticket_ids follow the order in which the intakes ran, not when they began.
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, clock_timestamp(),
                   clock_timestamp())""",
        ticket_id, fields.status, channel, fields.requester_email, email_key, fields.first_name, fields.last_name,
        fields.company_name, company_key, fields.reply_to, fields.missing, fields.problems, scope_company_id,
        account_id, company_id,
    )


async def get_ticket(conn: asyncpg.Connection, ticket_id: str, *, for_update: bool = False) -> Ticket | None:
    return _row(Ticket, await conn.fetchrow(
        f"SELECT {TICKET_COLUMNS} FROM recovery.tickets WHERE ticket_id = $1" + (" FOR UPDATE" if for_update else ""),
        ticket_id,
    ))


async def list_tickets(conn: asyncpg.Connection, *, statuses: list[str], company_id: str | None,
                       after: tuple[datetime, str] | None, limit: int) -> list[Ticket]:
    """Tickets in queue order (oldest first), keyset-paginated after (created_at, ticket_id)."""
    return [_row(Ticket, r) for r in await conn.fetch(
        f"""SELECT {TICKET_COLUMNS}, EXISTS (SELECT 1 FROM recovery.photos p WHERE p.ticket_id = t.ticket_id)
                   AS has_photo
            FROM recovery.tickets t
            WHERE status = ANY($1::text[])
              AND ($2::text IS NULL OR company_id = $2)
              AND ($3::timestamptz IS NULL OR (created_at, ticket_id) > ($3, $4))
            ORDER BY created_at, ticket_id LIMIT $5""",
        statuses, company_id, after[0] if after else None, after[1] if after else "", limit,
    )]


async def claim_ticket(conn: asyncpg.Connection, ticket_id: str, agent: str) -> Ticket:
    """Record the claim; the updated ticket (the caller holds its row lock)."""
    return _row(Ticket, await conn.fetchrow(
        f"""UPDATE recovery.tickets SET status = 'claimed', claimed_by = $2, claimed_at = now(), updated_at = now()
            WHERE ticket_id = $1 RETURNING {TICKET_COLUMNS}""",
        ticket_id, agent,
    ))


async def decide_ticket(conn: asyncpg.Connection, ticket_id: str, status: str, agent: str,
                        note: str) -> Ticket | None:
    """Record the decision; the decided ticket, or None when another transaction decided first."""
    return _row(Ticket, await conn.fetchrow(
        f"""UPDATE recovery.tickets SET status = $2, decided_by = $3, decided_at = now(), decision_note = $4,
              updated_at = now()
            WHERE ticket_id = $1 AND status = ANY($5::text[]) RETURNING {TICKET_COLUMNS}""",
        ticket_id, status, agent, note, list(UNDECIDED),
    ))


async def mark_photos_expired(conn: asyncpg.Connection, ticket_ids: list[str]) -> None:
    """The photos are gone: the tickets need a new one before they can be approved."""
    await conn.execute(
        """UPDATE recovery.tickets SET
             missing = CASE WHEN 'photo' = ANY(missing) THEN missing ELSE missing || '{photo}'::text[] END,
             problems = CASE WHEN 'photo_expired' = ANY(problems) THEN problems
                             ELSE problems || '{photo_expired}'::text[] END,
             status = CASE WHEN status = 'open' THEN 'incomplete' ELSE status END,
             updated_at = now()
           WHERE ticket_id = ANY($1::text[])""",
        ticket_ids,
    )


# ---- photos


async def put_photo(conn: asyncpg.Connection, ticket_id: str, photo: Photo, sha256: bytes) -> None:
    await conn.execute(
        """INSERT INTO recovery.photos (ticket_id, content_type, size, sha256, data) VALUES ($1, $2, $3, $4, $5)""",
        ticket_id, photo.content_type, len(photo.data), sha256, photo.data,
    )


async def get_photo(conn: asyncpg.Connection, ticket_id: str) -> StoredPhoto | None:
    return _row(StoredPhoto, await conn.fetchrow(
        "SELECT content_type, size, sha256, data, received_at FROM recovery.photos WHERE ticket_id = $1", ticket_id
    ))


async def photo_meta(conn: asyncpg.Connection, ticket_id: str) -> StoredPhoto | None:
    return _row(StoredPhoto, await conn.fetchrow(
        "SELECT content_type, size, received_at FROM recovery.photos WHERE ticket_id = $1", ticket_id
    ))


async def delete_photo(conn: asyncpg.Connection, ticket_id: str, reason: str) -> PhotoDeletion | None:
    """Delete the ticket's photo and record the deletion in the same statement; None when there was none."""
    deleted = await delete_photos(conn, [ticket_id], reason)
    return deleted[0] if deleted else None


async def delete_photos(conn: asyncpg.Connection, ticket_ids: list[str], reason: str) -> list[PhotoDeletion]:
    """Delete these tickets' photos and record each deletion, in one statement; the deletions made."""
    return [_row(PhotoDeletion, r) for r in await conn.fetch(
        """WITH gone AS (DELETE FROM recovery.photos WHERE ticket_id = ANY($1::text[])
                         RETURNING ticket_id, content_type, size, sha256, received_at)
           INSERT INTO recovery.photo_deletions (ticket_id, reason, content_type, size, sha256, received_at)
           SELECT ticket_id, $2, content_type, size, sha256, received_at FROM gone
           RETURNING id, ticket_id, reason, content_type, size, sha256, received_at, deleted_at""",
        ticket_ids, reason,
    )]


async def last_photo_deletion(conn: asyncpg.Connection, ticket_id: str) -> PhotoDeletion | None:
    return _row(PhotoDeletion, await conn.fetchrow(
        """SELECT ticket_id, reason, deleted_at FROM recovery.photo_deletions
           WHERE ticket_id = $1 AND reason <> 'replaced' ORDER BY id DESC LIMIT 1""",
        ticket_id,
    ))


async def expired_photo_tickets(conn: asyncpg.Connection, cutoff: datetime, limit: int) -> list[Ticket]:
    """Tickets whose photo was received before `cutoff`, locked for the purge."""
    return [_row(Ticket, r) for r in await conn.fetch(
        f"""SELECT {', '.join('t.' + c.strip() for c in TICKET_COLUMNS.split(','))}
            FROM recovery.photos p JOIN recovery.tickets t ON t.ticket_id = p.ticket_id
            WHERE p.received_at < $1 ORDER BY p.received_at LIMIT $2 FOR UPDATE OF t SKIP LOCKED""",
        cutoff, limit,
    )]


# ---- rate limits


async def hits(conn: asyncpg.Connection | asyncpg.Pool, keys: list[bytes], window_start: datetime) -> list[int]:
    """Count one hit for each key in its window, in one statement; the hits so far of each, this one included."""
    rows = await conn.fetch(
        """INSERT INTO recovery.rate_limits (key, window_start, hits)
           SELECT key, $2, 1 FROM unnest($1::bytea[]) WITH ORDINALITY AS k(key, n) ORDER BY n
           ON CONFLICT (key, window_start) DO UPDATE SET hits = rate_limits.hits + 1 RETURNING key, hits""",
        keys, window_start,
    )
    counted = {r["key"]: r["hits"] for r in rows}
    return [counted[key] for key in keys]


async def prune_rate_limits(conn: asyncpg.Connection | asyncpg.Pool, before: datetime) -> int:
    result = await conn.execute("DELETE FROM recovery.rate_limits WHERE window_start < $1", before)
    return int(result.split()[-1])


async def purge_expired_sign_ins(pool: asyncpg.Pool, before: datetime) -> int:
    """Delete console sign-in links and sessions that expired before `before`; how many rows."""
    return (await delete_expired(pool, "recovery.helpdesk_links", "expires_at", before)
            + await delete_expired(pool, "recovery.helpdesk_sessions", "expires_at", before))


# ---- helpdesk console: sign-in links and sessions (keyed hashes only)


@dataclass(frozen=True)
class HelpdeskSession:
    """A signed-in agent: the name decisions carry and the key (and company binding) behind it."""

    agent: str
    key_id: str | None
    company_id: str | None
    expires_at: datetime


async def insert_helpdesk_link(conn: asyncpg.Connection, token_hash: bytes, agent: str, key_id: str | None,
                               company_id: str | None, expires_at: datetime) -> None:
    await conn.execute(
        """INSERT INTO recovery.helpdesk_links (token_hash, agent, key_id, company_id, expires_at)
           VALUES ($1, $2, $3, $4, $5)""",
        token_hash, agent, key_id, company_id, expires_at,
    )


async def use_helpdesk_link(conn: asyncpg.Connection, token_hash: bytes,
                            at: datetime) -> tuple[str, HelpdeskSession | None]:
    """Mark a link used, once: ("ok", its agent), ("used" | "expired", ...), or ("unknown", None).

    The UPDATE's WHERE makes the single use hold in the database, whoever races.
    """
    row = await conn.fetchrow(
        """UPDATE recovery.helpdesk_links SET used_at = $2
           WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2
           RETURNING agent, key_id, company_id, expires_at""",
        token_hash, at,
    )
    if row is not None:
        return "ok", _row(HelpdeskSession, row)
    row = await conn.fetchrow(
        "SELECT agent, key_id, company_id, expires_at, used_at FROM recovery.helpdesk_links WHERE token_hash = $1",
        token_hash,
    )
    if row is None:
        return "unknown", None
    return ("used" if row["used_at"] is not None else "expired"), _row(HelpdeskSession, row)


async def insert_helpdesk_session(conn: asyncpg.Connection, session_hash: bytes, link: HelpdeskSession,
                                  expires_at: datetime) -> None:
    await conn.execute(
        """INSERT INTO recovery.helpdesk_sessions (session_hash, agent, key_id, company_id, expires_at)
           VALUES ($1, $2, $3, $4, $5)""",
        session_hash, link.agent, link.key_id, link.company_id, expires_at,
    )


async def get_helpdesk_session(conn: asyncpg.Connection, session_hash: bytes, at: datetime) -> HelpdeskSession | None:
    """The live session: not ended, not expired, and its API key (if any) not revoked."""
    return _row(HelpdeskSession, await conn.fetchrow(
        """SELECT s.agent, s.key_id, s.company_id, s.expires_at FROM recovery.helpdesk_sessions s
           WHERE s.session_hash = $1 AND s.ended_at IS NULL AND s.expires_at > $2
             AND (s.key_id IS NULL OR EXISTS (SELECT 1 FROM iam.api_keys k
                                              WHERE k.id = s.key_id::uuid AND k.revoked_at IS NULL))""",
        session_hash, at,
    ))


async def end_helpdesk_session(conn: asyncpg.Connection, session_hash: bytes, at: datetime) -> None:
    await conn.execute(
        "UPDATE recovery.helpdesk_sessions SET ended_at = $2 WHERE session_hash = $1 AND ended_at IS NULL",
        session_hash, at,
    )


@dataclass(frozen=True)
class DirectoryHit:
    """An account of the directory copy found by the console's search."""

    account_id: str
    company_id: str | None
    company_name: str | None
    email: str | None
    first_name: str | None
    last_name: str | None


async def search_accounts(conn: asyncpg.Connection, email: str, company_id: str | None,
                          limit: int = 20) -> list[DirectoryHit]:
    """Live accounts whose email starts with `email` (case-insensitive), within `company_id` when given."""
    pattern = email.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return [_row(DirectoryHit, r) for r in await conn.fetch(
        f"""SELECT a.account_id, a.company_id, c.name AS company_name, a.email, a.first_name, a.last_name
            FROM recovery.accounts a LEFT JOIN recovery.companies c ON c.company_id = a.company_id
            WHERE lower(a.email) LIKE $1 AND {_LIVE} AND ($2::text IS NULL OR a.company_id = $2)
            ORDER BY lower(a.email), a.account_id LIMIT $3""",
        pattern, company_id, limit,
    )]
