"""Turning MFA off: by the person with a backup code, by a company admin, by a helpdesk recovery."""

from __future__ import annotations

from typing import Any

import asyncpg

from ...common.errors import Conflict, Forbidden, Unauthorized
from ...common.events import Actor
from ...common.outbox import add_events
from .. import domain, store
from . import events
from .context import SCHEMA, Auth, Caller, check_not_locked, load_account, now


async def disable_with_backup_code(auth: Auth, caller: Caller, account_id: str, backup_code: str) -> dict[str, Any]:
    """The person turns MFA off with a backup code (seed: 'loss, theft or a broken phone').

    A wrong code counts toward the lock in a transaction that commits before the 401.
    """
    normalized = domain.normalize_backup_code(backup_code)
    async with auth.pool.acquire() as conn, conn.transaction():
        result = await _disable_with_code(conn, auth, caller, account_id, normalized)
    if result is None:
        raise Unauthorized("That backup code is not valid (each code works once).", code="invalid_backup_code")
    return result


async def _disable_with_code(
    conn: asyncpg.Connection, auth: Auth, caller: Caller, account_id: str, normalized: str
) -> dict[str, Any] | None:
    at = now()
    account = await load_account(conn, caller, account_id, lock=True)
    if not account.enrolled:
        raise Conflict("MFA is not set up for this account.", code="mfa_not_enabled")
    check_not_locked(account, at)
    if await store.use_backup_code(conn, account_id, auth.code_hash(account_id, normalized)):
        await store.disable_mfa(conn, account_id)
        await add_events(conn, SCHEMA, [events.disabled(caller, account, "backup_code", at)])
        return {"enabled": False, "forced": account.forced, "next": "enroll" if account.forced else None}
    outcome = domain.register_failure(account.consecutive_failures, account.lock_count, at)
    await store.record_failure(conn, account_id, outcome.consecutive_failures, outcome.lock_count, outcome.locked_until)
    if outcome.newly_locked:
        await add_events(conn, SCHEMA, [events.locked(caller, account, outcome)])
    return None


async def admin_disable(auth: Auth, caller: Caller, account_id: str, actor_account_id: str) -> dict[str, Any]:
    """An administrator of the same company turns an employee's MFA off, only while it is not forced."""
    async with auth.pool.acquire() as conn, conn.transaction():
        account = await load_account(conn, caller, account_id, lock=True)
        actor = await store.get_account(conn, actor_account_id)
        if actor is None or actor.company_id != account.company_id or actor.role != "admin":
            raise Forbidden("Only an administrator of the same company can turn MFA off.", code="not_company_admin")
        if account.forced:
            raise Conflict(
                "MFA is forced for this account; lift the requirement before turning it off.", code="mfa_forced"
            )
        if not account.enrolled:
            raise Conflict("MFA is not set up for this account.", code="mfa_not_enabled")
        await store.disable_mfa(conn, account_id)
        admin = Caller(caller.principal, caller.correlation_id, Actor("user", actor_account_id))
        await add_events(conn, SCHEMA, [events.disabled(admin, account, "admin", now(), actor_account_id=actor_account_id)])
    return {"enabled": False}


async def helpdesk_reset(conn: asyncpg.Connection, caller: Caller, data: dict[str, Any]) -> bool:
    """Recovery approved a ticket: reset MFA, forced or not. False when the account is unknown."""
    account = await store.get_account(conn, data["account_id"], lock=True)
    if account is None:
        return False
    await store.disable_mfa(conn, data["account_id"])  # also drops a pending enrolment and any lock
    await add_events(conn, SCHEMA, [events.disabled(
        caller, account, "helpdesk_recovery", now(), ticket_id=data["ticket_id"], agent=data.get("agent"),
    )])
    return True
