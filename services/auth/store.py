"""SQL of the auth schema, and the typed rows it returns.

Every function takes the connection of the caller's transaction. Rows come back as frozen
dataclasses whose fields are the columns read, named once here (`_columns`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from ..common.db import delete_expired
from ..common.metrics import observe_written
from ..common.outbox import outbox_insert, wake_relays

Conn = asyncpg.Connection
Row = TypeVar("Row")


def _columns(cls: type, prefix: str = "") -> str:
    return ", ".join(prefix + f.name for f in fields(cls))


def _row(cls: type[Row], record: asyncpg.Record | None) -> Row | None:
    return None if record is None else cls(**record)


# ---- rows --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Company:
    company_id: str
    name: str
    mfa_required: bool


@dataclass(frozen=True, slots=True)
class AccountPolicy:
    """What an account upsert replaces: the company it was in and its own requirement."""

    account_id: str
    company_id: str
    mfa_required: bool


@dataclass(frozen=True, slots=True)
class Account:
    """An account with its company's name and policy, its backup e-mail and backup code count."""

    account_id: str
    company_id: str
    email: str
    first_name: str
    last_name: str
    role: str
    mfa_required: bool
    locale: str | None
    time_zone: str | None  # IANA name (`Europe/Amsterdam`); the mails give times in it
    totp_secret: str | None  # sealed; None while MFA is off
    enrolled_at: datetime | None
    last_step: int
    consecutive_failures: int
    lock_count: int
    locked_until: datetime | None
    company_name: str
    forced: bool  # the account or its company requires MFA
    backup_address: str | None
    backup_verified_at: datetime | None
    backup_confirm_expires_at: datetime | None
    backup_codes_left: int

    @property
    def enrolled(self) -> bool:
        return self.totp_secret is not None

    @property
    def backup_email(self) -> str | None:
        """The backup e-mail, only once it is confirmed."""
        return self.backup_address if self.backup_verified_at is not None else None


@dataclass(frozen=True, slots=True)
class Pending:
    """A pending enrolment: the sealed secret waiting for its first code."""

    account_id: str
    totp_secret: str
    failed_attempts: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class BackupEmailToken:
    """The backup e-mail a confirmation token belongs to."""

    account_id: str
    company_id: str
    address: str
    verified_at: datetime | None
    confirm_expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class Login:
    login_id: str
    account_id: str
    company_id: str  # the account's company when the login started
    decision: str  # allow, verify, enroll, deny
    status: str  # pending, succeeded, failed
    attempts: int
    links_sent: int
    method: str | None
    expires_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class VerifyView:
    """A login with what checking a TOTP code needs of its account, in one read."""

    login_id: str
    account_id: str
    company_id: str
    decision: str
    status: str
    expires_at: datetime
    account_company_id: str
    totp_secret: str | None
    last_step: int
    locked_until: datetime | None


# `VerifyView`'s columns over a login `l` and its account `a`.
_VERIFY_COLUMNS = """l.login_id, l.account_id, l.company_id, l.decision, l.status, l.expires_at,
                  a.company_id AS account_company_id, a.totp_secret, a.last_step, a.locked_until"""


@dataclass(frozen=True, slots=True)
class Link:
    """A login link, by the hash of its token, with what it stood for when it was sent."""

    token_hash: bytes
    company_id: str
    login_id: str
    account_id: str
    expires_at: datetime
    used_at: datetime | None
    sent_to: str | None  # the confirmed backup address it was mailed to
    enrolled_at: datetime | None  # the enrolment it is a second factor for


@dataclass(frozen=True, slots=True)
class Sealed:
    """A stored sealed value, for key rotation: `kind` names its table, `owner` its row."""

    kind: str  # account, pending, signing
    owner: str
    sealed: str


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A stored signing key: it is in the JWKS until `published_until` (None: no end), signs from `activates_at`."""

    kid: str
    private_key: str  # sealed PEM
    public_jwk: dict
    activates_at: datetime
    published_until: datetime | None


# ---- directory --------------------------------------------------------------------------

async def get_company(conn: Conn, company_id: str) -> Company | None:
    return _row(Company, await conn.fetchrow(
        f"SELECT {_columns(Company)} FROM auth.companies WHERE company_id = $1", company_id))


async def upsert_company(conn: Conn, company_id: str, name: str, mfa_required: bool) -> Company | None:
    """Insert or update; returns the previous row (None when new)."""
    previous = await conn.fetchrow(
        f"SELECT {_columns(Company)} FROM auth.companies WHERE company_id = $1 FOR UPDATE", company_id)
    await conn.execute(
        """INSERT INTO auth.companies (company_id, name, mfa_required) VALUES ($1, $2, $3)
           ON CONFLICT (company_id) DO UPDATE SET name = $2, mfa_required = $3, updated_at = now()""",
        company_id,
        name,
        mfa_required,
    )
    return _row(Company, previous)


async def ensure_company(conn: Conn, company_id: str) -> None:
    """A placeholder row for a company an account event named before the company's own event."""
    await conn.execute(
        "INSERT INTO auth.companies (company_id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", company_id
    )


async def upsert_account(conn: Conn, data: dict[str, Any]) -> AccountPolicy | None:
    """Insert or update; returns what the account was (None when new)."""
    previous = await conn.fetchrow(
        f"SELECT {_columns(AccountPolicy)} FROM auth.accounts WHERE account_id = $1 FOR UPDATE", data["account_id"])
    await conn.execute(
        """INSERT INTO auth.accounts (account_id, company_id, email, first_name, last_name, role, mfa_required, locale,
                                     time_zone)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (account_id) DO UPDATE SET company_id = $2, email = $3, first_name = $4, last_name = $5,
               role = $6, mfa_required = $7, locale = $8, time_zone = $9, updated_at = now()""",
        data["account_id"],
        data["company_id"],
        data["email"],
        data.get("first_name", ""),
        data.get("last_name", ""),
        data["role"],
        data.get("mfa_required", False),
        data.get("locale"),
        data.get("time_zone"),
    )
    return _row(AccountPolicy, previous)


async def delete_account(conn: Conn, account_id: str) -> bool:
    """Forget an account and, by cascade, its MFA state and logins; False when it was unknown."""
    return bool(await conn.fetchval("DELETE FROM auth.accounts WHERE account_id = $1 RETURNING true", account_id))


_ACCOUNT_COLUMNS = """a.account_id, a.company_id, a.email, a.first_name, a.last_name, a.role, a.mfa_required, a.locale,
           a.time_zone, a.totp_secret, a.enrolled_at, a.last_step, a.consecutive_failures, a.lock_count, a.locked_until,
           c.name AS company_name, (a.mfa_required OR c.mfa_required) AS forced,
           b.address AS backup_address, b.verified_at AS backup_verified_at, b.confirm_expires_at AS backup_confirm_expires_at,
           (SELECT count(*) FROM auth.backup_codes bc WHERE bc.account_id = a.account_id) AS backup_codes_left"""
# The `Account` view's joins: every read of an `Account` (alone or beside a page session) uses them.
_ACCOUNT_JOINS = """JOIN auth.companies c ON c.company_id = a.company_id
    LEFT JOIN auth.backup_emails b ON b.account_id = a.account_id"""
_ACCOUNT_VIEW = f"SELECT {_ACCOUNT_COLUMNS} FROM auth.accounts a {_ACCOUNT_JOINS} WHERE a.account_id = $1"

# Login ids are unique per company. A key bound to a company looks in that company only; a
# key bound to none (and an upstream event) sees every company and takes the oldest login of
# that id, which is the one it made: it cannot make an id that exists already (`decide_login`).
_LOGIN_BY_ID = "login_id = $1 AND ($2::text IS NULL OR company_id = $2) ORDER BY created_at, company_id LIMIT 1"


async def lock_account_of_login(conn: Conn, login_id: str, scope: str | None) -> str | None:
    """Lock the account a login belongs to, by the login's id; None when there is no such login."""
    return await conn.fetchval(
        "SELECT account_id FROM auth.accounts"
        f" WHERE account_id = (SELECT account_id FROM auth.logins WHERE {_LOGIN_BY_ID}) FOR UPDATE",
        login_id,
        scope,
    )


async def get_account(conn: Conn, account_id: str, *, lock: bool = False) -> Account | None:
    """The account with its company policy, backup email and backup code count."""
    if lock:
        # Lock the account row first: every MFA change of one account is serialised on it.
        found = await conn.fetchval("SELECT 1 FROM auth.accounts WHERE account_id = $1 FOR UPDATE", account_id)
        if not found:
            return None
    return _row(Account, await conn.fetchrow(_ACCOUNT_VIEW, account_id))


# ---- enrolment ---------------------------------------------------------------------------

async def save_pending(conn: Conn, account_id: str, sealed_secret: str, expires_at: datetime) -> None:
    await conn.execute(
        """INSERT INTO auth.pending_enrollments (account_id, totp_secret, expires_at) VALUES ($1, $2, $3)
           ON CONFLICT (account_id) DO UPDATE SET totp_secret = $2, expires_at = $3, failed_attempts = 0,
               created_at = now()""",
        account_id,
        sealed_secret,
        expires_at,
    )


async def get_pending(conn: Conn, account_id: str, *, lock: bool = False) -> Pending | None:
    sql = f"SELECT {_columns(Pending)} FROM auth.pending_enrollments WHERE account_id = $1"
    return _row(Pending, await conn.fetchrow(sql + (" FOR UPDATE" if lock else ""), account_id))


async def delete_pending(conn: Conn, account_id: str) -> None:
    await conn.execute("DELETE FROM auth.pending_enrollments WHERE account_id = $1", account_id)


async def count_pending_failure(conn: Conn, account_id: str) -> int:
    return await conn.fetchval(
        "UPDATE auth.pending_enrollments SET failed_attempts = failed_attempts + 1 WHERE account_id = $1"
        " RETURNING failed_attempts",
        account_id,
    )


async def enable_totp(conn: Conn, account_id: str, sealed_secret: str, step: int, at: datetime) -> None:
    await conn.execute(
        """UPDATE auth.accounts SET totp_secret = $2, enrolled_at = $3, last_step = $4,
               consecutive_failures = 0, lock_count = 0, locked_until = NULL, updated_at = now()
           WHERE account_id = $1""",
        account_id,
        sealed_secret,
        at,
        step,
    )


async def disable_mfa(conn: Conn, account_id: str) -> None:
    """Turn MFA off: forget the secret, the pending enrolment and every backup code."""
    await conn.execute(
        """UPDATE auth.accounts SET totp_secret = NULL, enrolled_at = NULL, consecutive_failures = 0,
               lock_count = 0, locked_until = NULL, updated_at = now() WHERE account_id = $1""",
        account_id,
    )
    await conn.execute("DELETE FROM auth.backup_codes WHERE account_id = $1", account_id)
    await conn.execute("DELETE FROM auth.pending_enrollments WHERE account_id = $1", account_id)


async def claim_step(conn: Conn, account_id: str, step: int) -> bool:
    """Record `step` as used; False when it (or a later one) was accepted before."""
    return bool(
        await conn.fetchval(
            "UPDATE auth.accounts SET last_step = $2 WHERE account_id = $1 AND last_step < $2 RETURNING true",
            account_id,
            step,
        )
    )


async def record_failure(conn: Conn, account_id: str, failures: int, lock_count: int, locked_until: datetime | None) -> None:
    await conn.execute(
        """UPDATE auth.accounts SET consecutive_failures = $2, lock_count = $3,
               locked_until = COALESCE($4, locked_until) WHERE account_id = $1""",
        account_id,
        failures,
        lock_count,
        locked_until,
    )


async def reset_failures(conn: Conn, account_id: str) -> None:
    await conn.execute(
        "UPDATE auth.accounts SET consecutive_failures = 0, lock_count = 0, locked_until = NULL"
        " WHERE account_id = $1 AND (consecutive_failures <> 0 OR lock_count <> 0)",
        account_id,
    )


# ---- backup codes ------------------------------------------------------------------------

async def replace_backup_codes(conn: Conn, account_id: str, hashes: list[bytes]) -> None:
    await conn.execute("DELETE FROM auth.backup_codes WHERE account_id = $1", account_id)
    await conn.executemany(
        "INSERT INTO auth.backup_codes (code_hash, account_id) VALUES ($1, $2)", [(h, account_id) for h in hashes]
    )


async def use_backup_code(conn: Conn, account_id: str, code_hash: bytes) -> bool:
    """Delete the code if it exists for this account: single use in the database."""
    return bool(
        await conn.fetchval(
            "DELETE FROM auth.backup_codes WHERE code_hash = $1 AND account_id = $2 RETURNING true",
            code_hash,
            account_id,
        )
    )


# ---- backup e-mail -----------------------------------------------------------------------

async def set_backup_email(conn: Conn, account_id: str, address: str, confirm_hash: bytes, expires_at: datetime) -> None:
    await conn.execute(
        """INSERT INTO auth.backup_emails (account_id, address, verified_at, confirm_hash, confirm_expires_at)
           VALUES ($1, $2, NULL, $3, $4)
           ON CONFLICT (account_id) DO UPDATE SET address = $2, verified_at = NULL, confirm_hash = $3,
               confirm_expires_at = $4, updated_at = now()""",
        account_id,
        address,
        confirm_hash,
        expires_at,
    )


async def find_backup_email_by_token(conn: Conn, confirm_hash: bytes) -> BackupEmailToken | None:
    return _row(BackupEmailToken, await conn.fetchrow(
        """SELECT b.account_id, a.company_id, b.address, b.verified_at, b.confirm_expires_at
           FROM auth.backup_emails b JOIN auth.accounts a USING (account_id)
           WHERE b.confirm_hash = $1 FOR UPDATE OF b""",
        confirm_hash,
    ))


async def confirm_backup_email(conn: Conn, account_id: str) -> None:
    await conn.execute(
        # The hash stays (until the address changes) so that a second use is told apart from
        # an unknown token; `verified_at` makes it spent.
        "UPDATE auth.backup_emails SET verified_at = now(), updated_at = now() WHERE account_id = $1",
        account_id,
    )


# ---- logins ------------------------------------------------------------------------------

async def insert_login(conn: Conn, row: dict[str, Any]) -> bool:
    """Insert a login; False when the login id exists already (idempotent retries)."""
    return bool(
        await conn.fetchval(
            """INSERT INTO auth.logins (login_id, account_id, company_id, decision, status, ip, user_agent, expires_at,
                   method, completed_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (login_id, company_id) DO NOTHING RETURNING true""",
            row["login_id"],
            row["account_id"],
            row["company_id"],
            row["decision"],
            row["status"],
            row.get("ip"),
            row.get("user_agent"),
            row["expires_at"],
            row.get("method"),
            row.get("completed_at"),
        )
    )


async def find_login(conn: Conn, login_id: str, scope: str | None, *, lock: bool = False) -> Login | None:
    """The login `login_id` as a caller bound to company `scope` (None: to no company) finds it."""
    sql = f"SELECT {_columns(Login)} FROM auth.logins WHERE {_LOGIN_BY_ID}"
    return _row(Login, await conn.fetchrow(sql + (" FOR UPDATE" if lock else ""), login_id, scope))


async def find_account_login(conn: Conn, account_id: str, login_id: str, *, lock: bool = False) -> Login | None:
    """The login `login_id` of one account (the newest, whichever company it started in)."""
    sql = (f"SELECT {_columns(Login)} FROM auth.logins WHERE login_id = $1 AND account_id = $2"
           " ORDER BY created_at DESC LIMIT 1")
    return _row(Login, await conn.fetchrow(sql + (" FOR UPDATE" if lock else ""), login_id, account_id))


async def get_login(conn: Conn, company_id: str, login_id: str, *, lock: bool = False) -> Login | None:
    """A login by its key."""
    sql = f"SELECT {_columns(Login)} FROM auth.logins WHERE company_id = $1 AND login_id = $2"
    return _row(Login, await conn.fetchrow(sql + (" FOR UPDATE" if lock else ""), company_id, login_id))


async def update_login(conn: Conn, login: Login, **fields: Any) -> None:
    allowed = {"decision", "status", "attempts", "links_sent", "method", "completed_at", "expires_at"}
    assert set(fields) <= allowed, fields
    names = list(fields)
    sets = ", ".join(f"{name} = ${i + 3}" for i, name in enumerate(names))
    await conn.execute(f"UPDATE auth.logins SET {sets} WHERE company_id = $1 AND login_id = $2",
                       login.company_id, login.login_id, *(fields[n] for n in names))


async def get_login_for_verify(conn: Conn, login_id: str, scope: str | None) -> VerifyView | None:
    """A login with what verifying a TOTP code needs of its account, in one read."""
    return _row(VerifyView, await conn.fetchrow(
        f"""SELECT {_VERIFY_COLUMNS}
           FROM (SELECT * FROM auth.logins WHERE {_LOGIN_BY_ID}) l JOIN auth.accounts a USING (account_id)""",
        login_id,
        scope,
    ))


async def complete_totp_login(conn: Conn, login: VerifyView, step: int, event: dict, schema: str) -> bool:
    """Claim `step` and complete the login with its event, atomically in one statement.

    The account update only matches while `step` is newer than every accepted one, the
    account is not locked, is still in the login's company and still has the secret the code
    was checked against (`login` may be an older read); the login and the outbox row are
    written only if it matched.
    """
    insert, args = outbox_insert(schema, event, first_param=6)
    done = bool(
        await conn.fetchval(
            f"""WITH claimed AS (
                    UPDATE auth.accounts SET last_step = $3, consecutive_failures = 0, lock_count = 0, locked_until = NULL
                    WHERE account_id = $2 AND company_id = $4 AND last_step < $3 AND totp_secret = $5
                      AND (locked_until IS NULL OR locked_until <= now())
                    RETURNING account_id),
                completed AS (
                    UPDATE auth.logins SET status = 'succeeded', method = 'totp', completed_at = now()
                    WHERE company_id = $4 AND login_id = $1 AND status = 'pending' AND decision = 'verify'
                      AND expires_at > now() AND EXISTS (SELECT 1 FROM claimed)
                    RETURNING login_id),
                queued AS ({insert} WHERE EXISTS (SELECT 1 FROM completed) RETURNING id)
                SELECT EXISTS (SELECT 1 FROM queued)""",
            login.login_id,
            login.account_id,
            step,
            login.company_id,
            login.totp_secret,
            *args,
        )
    )
    if done:
        observe_written([event])
        await wake_relays(conn, schema)
    return done


async def insert_link(conn: Conn, token_hash: bytes, login: Login, account: Account, expires_at: datetime) -> None:
    """A link for `login`, noting the backup address it goes to and the enrolment it stands beside."""
    await conn.execute(
        """INSERT INTO auth.login_links (token_hash, company_id, login_id, account_id, expires_at, sent_to, enrolled_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        token_hash,
        login.company_id,
        login.login_id,
        account.account_id,
        expires_at,
        account.backup_email,
        account.enrolled_at,
    )


async def take_link(conn: Conn, token_hash: bytes) -> Link | None:
    return _row(Link, await conn.fetchrow(
        f"SELECT {_columns(Link)} FROM auth.login_links WHERE token_hash = $1 FOR UPDATE", token_hash))


async def mark_link_used(conn: Conn, token_hash: bytes, at: datetime) -> None:
    await conn.execute("UPDATE auth.login_links SET used_at = $2 WHERE token_hash = $1", token_hash, at)


# ---- signing keys and rotation ---------------------------------------------------------

async def signing_keys(conn: Conn | asyncpg.Pool) -> list[SigningKey]:
    """The keys the JWKS publishes now, newest activation first."""
    rows = await conn.fetch(
        f"""SELECT {_columns(SigningKey)} FROM auth.signing_keys
            WHERE published_until IS NULL OR published_until > now() ORDER BY activates_at DESC, created_at DESC"""
    )
    return [SigningKey(**row) for row in rows]


async def insert_signing_key(conn: Conn, kid: str, private_key: str, public_jwk: dict,
                             activates_at: datetime | None = None) -> None:
    """Store a new key; it signs from `activates_at` (now when None)."""
    await conn.execute(
        """INSERT INTO auth.signing_keys (kid, private_key, public_jwk, activates_at)
           VALUES ($1, $2, $3, coalesce($4, now()))""",
        kid, private_key, public_jwk, activates_at,
    )


async def supersede_signing_keys(conn: Conn, new_kid: str, activates_at: datetime,
                                 published_until: datetime) -> list[tuple[str, datetime]]:
    """Keys `new_kid` replaces stop signing at `activates_at` and leave the JWKS at `published_until`."""
    rows = await conn.fetch(
        """UPDATE auth.signing_keys SET retired_at = $2, published_until = $3
           WHERE kid <> $1 AND published_until IS NULL RETURNING kid, published_until""",
        new_kid, activates_at, published_until,
    )
    return [(row["kid"], row["published_until"]) for row in rows]


async def sealed_secrets(conn: Conn) -> list[Sealed]:
    rows = await conn.fetch(
        """SELECT 'account' AS kind, account_id AS owner, totp_secret AS sealed FROM auth.accounts
               WHERE totp_secret IS NOT NULL
           UNION ALL SELECT 'pending', account_id, totp_secret FROM auth.pending_enrollments
           UNION ALL SELECT 'signing', kid, private_key FROM auth.signing_keys"""
    )
    return [Sealed(**row) for row in rows]


async def reseal(conn: Conn, kind: str, key: str, old: str, sealed: str) -> bool:
    """Replace a sealed value by `sealed` if it still is `old`; False when it changed meanwhile."""
    table, column, id_col = {
        "account": ("accounts", "totp_secret", "account_id"),
        "pending": ("pending_enrollments", "totp_secret", "account_id"),
        "signing": ("signing_keys", "private_key", "kid"),
    }[kind]
    status = await conn.execute(f"UPDATE auth.{table} SET {column} = $3 WHERE {id_col} = $1 AND {column} = $2", key, old, sealed)
    return status == "UPDATE 1"


# ---- hosted pages ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PageLink:
    """A single-use URL token of a page (a prompt_url, a "My login" link), by its hash."""

    kind: str  # prompt, portal or admin
    account_id: str
    company_id: str  # the login's company (prompt), the account's (portal)
    login_id: str | None
    return_to: str
    state: str | None
    expires_at: datetime
    used_at: datetime | None


@dataclass(frozen=True, slots=True)
class PageSession:
    """What a page's session cookie stands for: one login's prompt or one account's "My login"."""

    kind: str
    account_id: str
    company_id: str
    login_id: str | None
    return_to: str
    state: str | None
    expires_at: datetime


async def insert_page_link(conn: Conn, token_hash: bytes, kind: str, account_id: str, company_id: str,
                           login_id: str | None, return_to: str, state: str | None, expires_at: datetime) -> None:
    """A single-use URL token; a prompt replaces the unused one of the same login (a retried POST /v1/logins)."""
    if login_id is not None:
        await conn.execute(
            "DELETE FROM auth.page_links WHERE login_id = $1 AND company_id = $2 AND kind = $3 AND used_at IS NULL",
            login_id, company_id, kind,
        )
    await conn.execute(
        """INSERT INTO auth.page_links (token_hash, kind, account_id, company_id, login_id, return_to, state,
                                        expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        token_hash, kind, account_id, company_id, login_id, return_to, state, expires_at,
    )


async def open_page_link(conn: Conn, token_hash: bytes, kind: str, at: datetime, session_hash: bytes,
                         session_ttl: timedelta | None) -> PageView | None:
    """Use a URL token once and open its session, in one statement: the new session's view, None if not usable.

    The session lives as long as its link's login (`session_ttl` None: a prompt), else `session_ttl`.
    The view is what `get_page_view` reads for the session, so the page the exchange redirects to
    can be shown from it (`handlers.prompt.open_link`).
    """
    return _page_view(await conn.fetchrow(_OPEN_PAGE_LINK, token_hash, kind, at, session_hash, session_ttl))


async def find_page_link(conn: Conn, token_hash: bytes, kind: str) -> PageLink | None:
    """A URL token's link, used or not: why `open_page_link` refused it."""
    return _row(PageLink, await conn.fetchrow(
        f"SELECT {_columns(PageLink)} FROM auth.page_links WHERE token_hash = $1 AND kind = $2", token_hash, kind))


@dataclass(frozen=True, slots=True)
class PageView:
    """A live page session with its account and (for a prompt) its login, as one read gives them."""

    session: PageSession
    account: Account
    login: Login | None


def _prefixed(cls: type, prefix: str) -> str:
    return ", ".join(f"{prefix}.{f.name} AS {prefix}_{f.name}" for f in fields(cls))


def _page_view_select(sessions: str) -> str:
    """The page view's SELECT over `sessions` (the table or a CTE of `PageSession` rows), aliased `s`."""
    return f"""
    SELECT {_prefixed(PageSession, "s")}, {_prefixed(Login, "l")}, l.login_id IS NOT NULL AS has_login,
           {_ACCOUNT_COLUMNS}
    FROM {sessions} s
    JOIN auth.accounts a ON a.account_id = s.account_id {_ACCOUNT_JOINS}
    LEFT JOIN auth.logins l ON l.company_id = s.company_id AND l.login_id = s.login_id"""


_PAGE_VIEW = f"""{_page_view_select("auth.page_sessions")}
    WHERE s.session_hash = $1 AND s.kind = $2 AND s.expires_at > $3
"""
_OPEN_PAGE_LINK = f"""
    WITH used AS (
        UPDATE auth.page_links SET used_at = $3 WHERE token_hash = $1 AND kind = $2 AND used_at IS NULL
            AND expires_at > $3
        RETURNING token_hash, kind, account_id, company_id, login_id, return_to, state, expires_at),
    s AS (
        INSERT INTO auth.page_sessions (session_hash, link_hash, kind, account_id, company_id, login_id, return_to,
                                        state, expires_at)
        SELECT $4, token_hash, kind, account_id, company_id, login_id, return_to, state,
               coalesce($3 + $5::interval, expires_at)
        FROM used RETURNING {_columns(PageSession)})
    {_page_view_select("s")}
"""
_PROMPT_VERIFY = f"""
    SELECT {_columns(PageSession, "s.")}, {_VERIFY_COLUMNS}
    FROM auth.page_sessions s
    JOIN auth.logins l ON l.company_id = s.company_id AND l.login_id = s.login_id
    JOIN auth.accounts a ON a.account_id = l.account_id
    WHERE s.session_hash = $1 AND s.kind = 'prompt' AND s.expires_at > $2
"""
# Where each row's columns stand in a page view's record: the session's, the login's, has_login, the account's.
_SESSION_END = len(fields(PageSession))
_LOGIN_END = _SESSION_END + len(fields(Login))


def _page_view(record: asyncpg.Record | None) -> PageView | None:
    if record is None:
        return None
    values = tuple(record.values())
    login = Login(*values[_SESSION_END:_LOGIN_END]) if values[_LOGIN_END] else None
    return PageView(PageSession(*values[:_SESSION_END]), Account(*values[_LOGIN_END + 1:]), login)


async def get_page_view(conn: Conn, session_hash: bytes, kind: str, at: datetime) -> PageView | None:
    """The live session of a cookie's hash with its account and login, in one round trip."""
    return _page_view(await conn.fetchrow(_PAGE_VIEW, session_hash, kind, at))


async def get_prompt_verify(conn: Conn, session_hash: bytes, at: datetime) -> tuple[PageSession, VerifyView] | None:
    """A live prompt session with what checking a TOTP code needs (`get_login_for_verify`'s columns), in one read.

    Leaner than the page view: a right code needs nothing else, and a page shown after a refusal reads that.
    """
    record = await conn.fetchrow(_PROMPT_VERIFY, session_hash, at)
    if record is None:
        return None
    values = tuple(record.values())
    return PageSession(*values[:_SESSION_END]), VerifyView(*values[_SESSION_END:])


async def get_page_session(conn: Conn, session_hash: bytes, kind: str, at: datetime) -> PageSession | None:
    return _row(PageSession, await conn.fetchrow(
        f"SELECT {_columns(PageSession)} FROM auth.page_sessions"
        " WHERE session_hash = $1 AND kind = $2 AND expires_at > $3",
        session_hash, kind, at,
    ))


async def prompt_of_login(conn: Conn, company_id: str, login_id: str) -> PageLink | None:
    """The newest prompt link of a login: where its pages send the browser back to."""
    return _row(PageLink, await conn.fetchrow(
        f"SELECT {_columns(PageLink)} FROM auth.page_links WHERE login_id = $1 AND company_id = $2"
        " AND kind = 'prompt' ORDER BY created_at DESC LIMIT 1",
        login_id, company_id,
    ))


async def find_link(conn: Conn, token_hash: bytes) -> Link | None:
    """A login link without taking it (the page before the button)."""
    return _row(Link, await conn.fetchrow(
        f"SELECT {_columns(Link)} FROM auth.login_links WHERE token_hash = $1", token_hash))


async def find_backup_email(conn: Conn, confirm_hash: bytes) -> BackupEmailToken | None:
    """The backup e-mail of a confirmation token without locking it (the page before the button)."""
    return _row(BackupEmailToken, await conn.fetchrow(
        """SELECT b.account_id, a.company_id, b.address, b.verified_at, b.confirm_expires_at
           FROM auth.backup_emails b JOIN auth.accounts a USING (account_id) WHERE b.confirm_hash = $1""",
        confirm_hash,
    ))


# ---- the administrator's pages ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EmployeeRow:
    """One line of the Employees tab: who, and the MFA state the administrator needs to see."""

    account_id: str
    email: str
    first_name: str
    last_name: str
    role: str
    mfa_required: bool  # the account's own requirement
    company_required: bool
    enrolled: bool
    enrolled_at: datetime | None
    pending_until: datetime | None  # a pending enrolment's expiry
    locked_until: datetime | None


_EMPLOYEES = """
    SELECT a.account_id, a.email, a.first_name, a.last_name, a.role, a.mfa_required,
           c.mfa_required AS company_required, a.totp_secret IS NOT NULL AS enrolled, a.enrolled_at,
           p.expires_at AS pending_until, a.locked_until
    FROM auth.accounts a
    JOIN auth.companies c USING (company_id)
    LEFT JOIN auth.pending_enrollments p USING (account_id)
    WHERE a.company_id = $1
"""
# Search is a filter over the company's index range (5,000 rows cost a few milliseconds); `$2` is
# an escaped ILIKE pattern or NULL. One ILIKE over "email first last" rather than one per column:
# a quarter of the work, and "Ada Lovelace" matches the full name.
_SEARCH = """
      AND ($2::text IS NULL OR (a.email || ' ' || a.first_name || ' ' || a.last_name) ILIKE $2)
"""


async def list_employees(conn: Conn, company_id: str, pattern: str | None, cursor: tuple[str, str] | None,
                         *, backwards: bool, limit: int) -> list[EmployeeRow]:
    """A page of a company's accounts by (email, account_id), after `cursor` (before it when `backwards`).

    Keyset paging over the index `accounts_company_email`: every page costs the same, the last as
    the first. A backward page comes back in list order too.
    """
    order = "DESC" if backwards else "ASC"
    keyset = f" AND (a.email, a.account_id) {'<' if backwards else '>'} ($3, $4)" if cursor else ""
    args: list[Any] = [company_id, pattern, *(cursor or ())]
    rows = await conn.fetch(
        f"{_EMPLOYEES}{_SEARCH}{keyset} ORDER BY a.email {order}, a.account_id {order} LIMIT ${len(args) + 1}",
        *args, limit,
    )
    found = [EmployeeRow(**row) for row in rows]
    return found[::-1] if backwards else found


async def count_employees(conn: Conn, company_id: str, pattern: str | None) -> int:
    """How many of a company's accounts match the search (all of them without one)."""
    return await conn.fetchval(f"SELECT count(*) FROM auth.accounts a WHERE a.company_id = $1{_SEARCH}",
                               company_id, pattern)


async def lock_company(conn: Conn, company_id: str) -> Company | None:
    """The company, its row locked for the rest of the transaction (a change of one field keeps the others)."""
    return _row(Company, await conn.fetchrow(
        f"SELECT {_columns(Company)} FROM auth.companies WHERE company_id = $1 FOR UPDATE", company_id))


# ---- retention

# Each but `logins` holds keyed hashes of tokens (or a pending secret) that stopped working at
# `expires_at`; a login is its second step's record, which its upstream may still read for a while.
_EXPIRING = ("page_sessions", "page_links", "login_links", "pending_enrollments", "logins")


async def purge_expired(pool: asyncpg.Pool, tokens_before: datetime, links_before: datetime,
                        logins_before: datetime) -> dict[str, int]:
    """Delete the rows that expired before their cutoff; how many per table.

    Sessions, login links and pending enrolments go at `tokens_before`; page links at `links_before`
    (a session can outlive its link, and deleting a link deletes its sessions); logins at
    `logins_before`, with whatever of theirs is still there (the rows cascade).
    """
    cutoffs = {"page_links": links_before, "logins": logins_before}
    return {table: await delete_expired(pool, f"auth.{table}", "expires_at", cutoffs.get(table, tokens_before))
            for table in _EXPIRING}
