"""Events in: recovery's own read model of the directory and of each account's MFA state.

Tickets are matched against it (email + company name) and the helpdesk sees from it whether
MFA is on and forced and whether a backup email exists. Every update carries its event's time
and loses to a newer one already stored, so duplicates and reordering do no harm.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from ..common.consumer import BatchConsumer, Consumer, Handler, PermanentError
from ..common.events import parse_time
from ..common.web import RUNTIME
from . import store
from .domain import company_key, normalize_email
from .handlers import SCHEMA


def event_time(event: dict[str, Any]) -> datetime:
    """The event's `time` as an aware datetime (naive times are read as UTC)."""
    try:
        return parse_time(event["time"])
    except ValueError as exc:
        raise PermanentError(f"event time {event['time']!r} is not ISO 8601") from exc


async def on_company_upserted(conn: asyncpg.Connection, event: dict[str, Any]) -> None:
    data = event["data"]
    await store.upsert_company(conn, data["company_id"], data["name"].strip(), company_key(data["name"]),
                               data["mfa_required"], event_time(event))
    await store.match_waiting_tickets(conn, company_id=data["company_id"])


async def on_account_upserted(conn: asyncpg.Connection, event: dict[str, Any]) -> None:
    data = event["data"]
    email_key = normalize_email(data["email"])
    company = await store.company_name_key(conn, data["company_id"])
    if company is not None:
        # The same lock as an intake of this person: the intake sees this account, or its ticket is matched here.
        await store.lock_person(conn, email_key, company)
    await store.upsert_account_profile(
        conn,
        account_id=data["account_id"],
        company_id=data["company_id"],
        email=data["email"].strip(),
        email_key=email_key,
        first_name=data["first_name"],
        last_name=data["last_name"],
        role=data["role"],
        mfa_required=data["mfa_required"],
        at=event_time(event),
    )
    await store.match_waiting_tickets(conn, account_id=data["account_id"])


async def on_account_removed(conn: asyncpg.Connection, event: dict[str, Any]) -> None:
    data = event["data"]
    await store.remove_account(conn, data["account_id"], data.get("company_id"), event_time(event))


async def on_policy_changed(conn: asyncpg.Connection, event: dict[str, Any]) -> None:
    data = event["data"]
    if data["scope"] == "company":
        await store.set_company_policy(conn, data["company_id"], data["mfa_required"], event_time(event))
        return
    if not data.get("account_id"):
        raise PermanentError("MfaPolicyChanged with scope account names no account_id")
    await store.set_account_policy(conn, data["account_id"], data["company_id"], data["mfa_required"],
                                   event_time(event))


async def on_mfa_enrolled(conn: asyncpg.Connection, event: dict[str, Any]) -> None:
    data = event["data"]
    await store.set_mfa_enabled(conn, data["account_id"], data["company_id"], True, event_time(event))


async def on_mfa_disabled(conn: asyncpg.Connection, event: dict[str, Any]) -> None:
    data = event["data"]
    await store.set_mfa_enabled(conn, data["account_id"], data["company_id"], False, event_time(event))


async def on_backup_email_confirmed(conn: asyncpg.Connection, event: dict[str, Any]) -> None:
    data = event["data"]
    await store.set_backup_confirmed(conn, data["account_id"], data["company_id"], data["backup_email"].strip(),
                                     event_time(event))


HANDLERS: dict[str, Handler] = {
    "CompanyUpserted": on_company_upserted,
    "AccountUpserted": on_account_upserted,
    "AccountRemoved": on_account_removed,
    "MfaPolicyChanged": on_policy_changed,
    "MfaEnrolled": on_mfa_enrolled,
    "MfaDisabled": on_mfa_disabled,
    "BackupEmailConfirmed": on_backup_email_confirmed,
}


def build_consumers(app: web.Application) -> list[Consumer]:
    """The consumer of the `recovery` queue, bound to the directory and MFA state events."""
    runtime = app[RUNTIME]
    return [BatchConsumer(runtime, party="recovery", schema=SCHEMA, queue=runtime.queue("recovery"),
                          handlers=HANDLERS)]
