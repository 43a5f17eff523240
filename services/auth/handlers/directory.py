"""Directory use cases: companies and accounts (from HTTP or upstream events) and the MFA status view."""

from __future__ import annotations

from typing import Any

import asyncpg

from ...common import i18n
from ...common.errors import BadRequest, NotFound
from ...common.events import iso
from ...common.outbox import add_events
from .. import domain, store
from . import events
from .context import SCHEMA, Auth, Caller, load_account, now


def mfa_status(account: store.Account) -> dict[str, Any]:
    """The `GET /v1/accounts/{id}/mfa` view of an account."""
    return {
        "account_id": account.account_id,
        "enabled": account.enrolled,
        "forced": account.forced,
        "enrolled_at": iso(account.enrolled_at),
        "backup_email": (
            {"address": account.backup_address, "verified": account.backup_verified_at is not None}
            if account.backup_address
            else None
        ),
        "backup_codes_left": account.backup_codes_left,
        "locked_until": iso(domain.lock_in_force(account.locked_until, now())),
    }


async def apply_company(conn: asyncpg.Connection, caller: Caller, data: dict[str, Any], *, publish: bool) -> bool:
    """Upsert a company in the caller's transaction; True when it is new.

    `publish` re-announces an HTTP change as CompanyUpserted for the other services' directories.
    """
    previous = await store.upsert_company(conn, data["company_id"], data["name"], data["mfa_required"])
    out = events.policy_changed(caller, "company", data, previous.mfa_required if previous else None,
                                previous is None)
    if publish:
        out.insert(0, events.upserted(caller, "CompanyUpserted", data, data["company_id"]))
    await add_events(conn, SCHEMA, out)
    return previous is None


async def apply_account(conn: asyncpg.Connection, caller: Caller, data: dict[str, Any], *, publish: bool) -> bool:
    """Upsert an account; an unknown company is 404 on HTTP (`publish`), a placeholder for upstream events."""
    data = {**data, "email": domain.check_email(data["email"])}
    if data.get("time_zone") is not None and i18n.zone(data["time_zone"]) is None:
        if not publish:  # an upstream event: the account still counts, its mails say UTC
            data["time_zone"] = None
        else:
            raise BadRequest(f"Unknown time zone {data['time_zone'][:64]!r}; use an IANA name like Europe/Amsterdam.",
                             code="invalid_time_zone", field="time_zone")
    if await store.get_company(conn, data["company_id"]) is None:
        if publish:
            raise NotFound(f"No company {data['company_id']!r}; PUT /v1/companies/{{id}} first.", code="company_not_found")
        await store.ensure_company(conn, data["company_id"])
    previous = await store.upsert_account(conn, data)
    if previous is not None and not caller.sees(previous.company_id):
        raise NotFound(f"No account {data['account_id']!r}.", code="account_not_found")
    out = events.policy_changed(caller, "account", data, previous.mfa_required if previous else None,
                                previous is None)
    if publish:
        out.insert(0, events.upserted(caller, "AccountUpserted", data, data["account_id"]))
    await add_events(conn, SCHEMA, out)
    return previous is None


async def remove_account(conn: asyncpg.Connection, data: dict[str, Any]) -> None:
    """Upstream removed an account: forget it with its MFA state and logins (the rows cascade)."""
    await store.delete_account(conn, data["account_id"])


async def upsert_company(auth: Auth, caller: Caller, data: dict[str, Any]) -> dict[str, Any]:
    if not caller.sees(data["company_id"]):
        raise NotFound(f"No company {data['company_id']!r}.", code="company_not_found")
    async with auth.pool.acquire() as conn, conn.transaction():
        created = await apply_company(conn, caller, data, publish=True)
    return {**data, "created": created}


async def upsert_account(auth: Auth, caller: Caller, data: dict[str, Any]) -> dict[str, Any]:
    if not caller.sees(data["company_id"]):
        raise NotFound(f"No company {data['company_id']!r}.", code="company_not_found")
    async with auth.pool.acquire() as conn, conn.transaction():
        created = await apply_account(conn, caller, data, publish=True)
    return {**data, "email": data["email"].strip(), "created": created}


async def get_status(auth: Auth, caller: Caller, account_id: str) -> dict[str, Any]:
    async with auth.pool.acquire() as conn:
        account = await load_account(conn, caller, account_id)
    return mfa_status(account)
