"""The administrator's use cases: the admin-session link, the Employees tab, one employee's summary.

An administrator (an account with role `admin`) gets a single-use link from
`POST /v1/companies/{id}/admin-sessions`; the first GET exchanges it for a session cookie bound
to the admin's account (the same page-link tables as the prompt and "My login"). Every request
of that session checks again that the account is still an admin, and every employee it names
must be in the admin's own company (else 404, so ids cannot be probed). Changing a policy or
turning MFA off reuses the `directory` and `disable` use cases, with the admin as actor.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ...common.apikeys import Principal
from ...common.errors import Forbidden, NotFound
from ...common.events import Actor, iso
from ...common.pages import new_token
from .. import domain, store
from .context import Auth, Caller, now

ADMIN = "admin"
ADMIN_LINK_TTL = timedelta(minutes=5)
PAGE_SIZE = 50
MAX_QUERY = 100


async def issue_session(auth: Auth, caller: Caller, public_url: str, company_id: str, actor_account_id: str,
                        return_to: str) -> dict[str, Any]:
    """A single-use link to the administrator's pages for `actor_account_id`, an admin of `company_id`.

    404 `company_not_found` for a company the key may not see, 404 `account_not_found` for an
    account of another company, 403 `not_company_admin` for an account that is not an admin.
    """
    if not caller.sees(company_id):
        raise NotFound(f"No company {company_id!r}.", code="company_not_found")
    token = new_token()
    expires = now() + ADMIN_LINK_TTL
    async with auth.pool.acquire() as conn, conn.transaction():
        if await store.get_company(conn, company_id) is None:
            raise NotFound(f"No company {company_id!r}.", code="company_not_found")
        actor = await store.get_account(conn, actor_account_id)
        if actor is None or actor.company_id != company_id:
            raise NotFound(f"No account {actor_account_id!r} in this company.", code="account_not_found")
        _check_admin(actor)
        await store.insert_page_link(conn, auth.token_hash(token), ADMIN, actor_account_id, company_id, None,
                                     return_to, None, expires)
    return {"url": f"{public_url}/mfa/admin?token={token}", "expires_at": iso(expires)}


def _check_admin(account: store.Account) -> None:
    if account.role != "admin":
        raise Forbidden("Only an administrator of the company can use these pages.", code="not_company_admin")


def admin_of(view: store.PageView) -> store.Account:
    """The administrator of an admin session (read with it), still an admin now (a demoted account is refused: 403).

    An account removed meanwhile took its sessions with it (`prompt.view_of` answers 410 then).
    """
    account = view.account
    if account.role != "admin":
        # The page says so in the account's language, with its company's name.
        raise Forbidden("Only an administrator of the company can use these pages.", code="not_company_admin",
                        company_name=account.company_name, locale=account.locale)
    return account


def as_admin(admin: store.Account, correlation_id: str | None = None) -> Caller:
    """The administrator as the caller of the other families' use cases: events name them as actor.

    Bound to the admin's company, like a person of the pages (`prompt.person_of`), so a use case
    refuses whatever lies outside it.
    """
    return Caller(Principal(f"admin:{admin.account_id}", "service", admin.company_id), correlation_id,
                  Actor("user", admin.account_id))


# ---- what the pages show ---------------------------------------------------------------------

def mfa_state(enrolled: bool, pending_until: datetime | None, locked_until: datetime | None, at: datetime) -> str:
    """`locked`, `on`, `pending` (an enrolment started, not confirmed yet) or `off`."""
    if enrolled:
        return "locked" if domain.lock_in_force(locked_until, at) else "on"
    return "pending" if pending_until is not None and pending_until > at else "off"


def forced_by(company_required: bool, personal: bool) -> str | None:
    """Why MFA is forced: `company`, `personal`, `both`, or None when it is not."""
    if company_required and personal:
        return "both"
    return "company" if company_required else "personal" if personal else None


def search_pattern(query: str) -> str | None:
    """An ILIKE pattern matching `query` anywhere, its wildcards taken literally; None for no search."""
    query = " ".join(query.split())[:MAX_QUERY]
    if not query:
        return None
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def encode_cursor(row: store.EmployeeRow) -> str:
    raw = json.dumps([row.email, row.account_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str | None) -> tuple[str, str] | None:
    """The (email, account_id) of a page cursor; None for none or one that was tampered with (first page)."""
    if not value or len(value) > 800:
        return None
    try:
        email, account_id = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (ValueError, TypeError):
        return None
    return (email, account_id) if isinstance(email, str) and isinstance(account_id, str) else None


@dataclass(frozen=True)
class EmployeeLine:
    """A row of the Employees tab with its state worked out."""

    row: store.EmployeeRow
    state: str  # see mfa_state
    forced_by: str | None

    @property
    def name(self) -> str:
        return " ".join(part for part in (self.row.first_name, self.row.last_name) if part) or self.row.email


@dataclass(frozen=True)
class EmployeePage:
    """One page of the Employees tab: its lines, how many match, and the cursors to the neighbours."""

    lines: list[EmployeeLine]
    total: int
    next_cursor: str | None
    previous_cursor: str | None


async def list_employees(auth: Auth, admin: store.Account, query: str = "", after: str | None = None,
                         before: str | None = None, limit: int = PAGE_SIZE) -> EmployeePage:
    """The admin's company's employees, searched by name or email, a page at a time (keyset)."""
    pattern = search_pattern(query)
    backwards = decode_cursor(before) is not None
    cursor = decode_cursor(before) if backwards else decode_cursor(after)
    async with auth.pool.acquire() as conn:
        rows = await store.list_employees(conn, admin.company_id, pattern, cursor, backwards=backwards,
                                          limit=limit + 1)
        total = await store.count_employees(conn, admin.company_id, pattern)
    more = len(rows) > limit
    if more:
        rows = rows[1:] if backwards else rows[:limit]
    at = now()
    lines = [EmployeeLine(row, mfa_state(row.enrolled, row.pending_until, row.locked_until, at),
                          forced_by(row.company_required, row.mfa_required)) for row in rows]
    # Forward: a next page when more rows followed; a previous one whenever we came from somewhere.
    has_next = more if not backwards else cursor is not None
    has_previous = (cursor is not None) if not backwards else more
    return EmployeePage(
        lines, total,
        next_cursor=encode_cursor(rows[-1]) if rows and has_next else None,
        previous_cursor=encode_cursor(rows[0]) if rows and has_previous else None,
    )


@dataclass(frozen=True)
class EmployeeSummary:
    """An employee's Summary: personal information and the MFA state, with why it is forced."""

    account: store.Account
    company_required: bool
    state: str
    forced_by: str | None
    locked_until: datetime | None
    backup_email: str | None  # `domain.backup_email_state`

    @property
    def can_disable(self) -> bool:
        """What the page offers; the `disable` use case decides again on the POST."""
        return self.account.enrolled and not self.account.forced


async def employee(auth: Auth, admin: store.Account, account_id: str) -> EmployeeSummary:
    """One employee of the admin's company; 404 `account_not_found` for anyone else."""
    async with auth.pool.acquire() as conn:
        account = await store.get_account(conn, account_id)
        if account is None or account.company_id != admin.company_id:
            raise NotFound(f"No account {account_id!r}.", code="account_not_found")
        company = await store.get_company(conn, account.company_id)
        pending = await store.get_pending(conn, account_id)
    assert company is not None  # accounts reference their company
    at = now()
    return EmployeeSummary(
        account, company.mfa_required,
        mfa_state(account.enrolled, pending.expires_at if pending else None, account.locked_until, at),
        forced_by(company.mfa_required, account.mfa_required), domain.lock_in_force(account.locked_until, at),
        domain.backup_email_state(account.backup_address, account.backup_verified_at, account.backup_confirm_expires_at,
                                  at),
    )


async def company_of(auth: Auth, admin: store.Account) -> store.Company:
    """The admin's company as it is now (name and policy)."""
    async with auth.pool.acquire() as conn:
        company = await store.get_company(conn, admin.company_id)
    assert company is not None  # accounts reference their company
    return company
