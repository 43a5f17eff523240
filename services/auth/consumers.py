"""Events auth consumes: the upstream directory and logins, and helpdesk resets from recovery."""

from __future__ import annotations

from typing import Any

import asyncpg

from ..common.consumer import Consumer, PermanentError
from ..common.errors import MfaError
from ..common.events import Actor
from ..common.runtime import Runtime
from .handlers import directory, disable, logins
from .handlers.context import SCHEMA, SOURCE, Auth, Caller


def _caller(event: dict[str, Any]) -> Caller:
    actor = Actor(event.get("authtype") or "system", event.get("authid"))
    return Caller(None, event.get("correlationid"), actor)


def build_handlers(auth: Auth):
    """Handlers keyed by event type; each runs inside the consumer's transaction."""

    async def company_upserted(conn: asyncpg.Connection, event: dict[str, Any]) -> None:
        if event["source"] != SOURCE:  # skip our own re-announcement of an HTTP change
            await directory.apply_company(conn, _caller(event), event["data"], publish=False)

    async def account_upserted(conn: asyncpg.Connection, event: dict[str, Any]) -> None:
        if event["source"] != SOURCE:
            try:
                await directory.apply_account(conn, _caller(event), event["data"], publish=False)
            except MfaError as exc:
                raise PermanentError(f"{exc.code}: {exc.detail}") from exc

    async def account_removed(conn: asyncpg.Connection, event: dict[str, Any]) -> None:
        if event["source"] != SOURCE:
            await directory.remove_account(conn, event["data"])

    async def login_attempted(conn: asyncpg.Connection, event: dict[str, Any]) -> None:
        try:
            await logins.decide_login(conn, auth, _caller(event), event["data"])
        except MfaError as exc:
            if exc.code in ("login_expired", "login_state_changed"):
                return  # a late copy of a login that was decided already: nothing left to do
            # unknown account, login id of another account: never right on retry
            raise PermanentError(f"{exc.code}: {exc.detail}") from exc

    async def ticket_approved(conn: asyncpg.Connection, event: dict[str, Any]) -> None:
        if not await disable.helpdesk_reset(conn, _caller(event), event["data"]):
            raise PermanentError(f"unknown account {event['data']['account_id']!r}")

    return {
        "CompanyUpserted": company_upserted,
        "AccountUpserted": account_upserted,
        "AccountRemoved": account_removed,
        "LoginAttempted": login_attempted,
        "RecoveryTicketApproved": ticket_approved,
    }


def consumers(runtime: Runtime, auth: Auth) -> list[Consumer]:
    """The auth queue's consumer: database-only handlers, so batched (one transaction per batch)."""
    assert runtime.pool is not None and runtime.broker is not None
    return [Consumer(broker=runtime.broker, pool=runtime.pool, schema=SCHEMA,
                     queue=runtime.queue("auth"), handlers=build_handlers(auth), batched=True)]
