"""Replacing the authenticator app from "My login": prove the present app, then confirm the new one.

The present app keeps working until the new one is confirmed, so a person who stops halfway is
not left without a second factor. The backup codes stay as they are.
"""

from __future__ import annotations

from typing import Any

from ...common.errors import Conflict, Gone, Unauthorized
from ...common.events import iso
from ...common.outbox import add_events
from .. import domain, store
from . import events
from .context import SCHEMA, Auth, Caller, check_not_locked, load_account, now


async def start_replacement(auth: Auth, caller: Caller, account_id: str, code: str) -> dict[str, Any]:
    """Check the present app's current code (counted like a login's), then a pending secret for the new app."""
    code = domain.check_code_format(code)
    at = now()
    async with auth.pool.acquire() as conn:
        async with conn.transaction():
            account = await load_account(conn, caller, account_id, lock=True)
            if account.totp_secret is None:
                raise Conflict("MFA is not set up for this account.", code="mfa_not_enabled")
            check_not_locked(account, at)
            present = domain.decode_secret(auth.open_secret(account_id, account.totp_secret))
            step = domain.match_totp(present, code, at)
            if step is not None and await store.claim_step(conn, account_id, step):
                await store.reset_failures(conn, account_id)
                secret = domain.new_secret()
                expires = at + domain.ENROLLMENT_TTL
                await store.save_pending(conn, account_id, auth.seal_secret(account_id, secret), expires)
                return {"secret": secret, "secret_grouped": domain.group_secret(secret), "expires_at": iso(expires)}
            outcome = domain.register_failure(account.consecutive_failures, account.lock_count, at)
            await store.record_failure(conn, account_id, outcome.consecutive_failures, outcome.lock_count,
                                       outcome.locked_until)
            if outcome.newly_locked:
                await add_events(conn, SCHEMA, [events.locked(caller, account, outcome)])
    # The failure was committed above; nothing else changed.
    raise Unauthorized("That code is not the current one of the present app.", code="invalid_code")


async def confirm_replacement(auth: Auth, caller: Caller, account_id: str, code: str) -> dict[str, Any]:
    """Check the new app's current code and make its secret the account's; event `MfaEnrolled`."""
    code = domain.check_code_format(code)
    at = now()
    async with auth.pool.acquire() as conn:
        async with conn.transaction():
            account = await load_account(conn, caller, account_id, lock=True)
            pending = await store.get_pending(conn, account_id, lock=True)
            if account.totp_secret is None:
                raise Conflict("MFA is not set up for this account.", code="mfa_not_enabled")
            if pending is None:
                raise Conflict("There is no pending enrolment; start one first.", code="no_pending_enrollment")
            if pending.expires_at <= at:
                await store.delete_pending(conn, account_id)
                raise Gone("The enrolment expired; start a new one.", code="enrollment_expired")
            secret = auth.open_secret(account_id, pending.totp_secret)
            step = domain.match_totp(domain.decode_secret(secret), code, at)
            if step is not None:
                await store.enable_totp(conn, account_id, auth.seal_secret(account_id, secret), step, at)
                await store.delete_pending(conn, account_id)
                await add_events(conn, SCHEMA, [events.enrolled(caller, account, at, None)])
                return {"enrolled_at": iso(at)}
            if await store.count_pending_failure(conn, account_id) >= domain.MAX_ENROLL_ATTEMPTS:
                await store.delete_pending(conn, account_id)
    raise Unauthorized("That code is not the current one; check the app and the phone's clock.", code="invalid_code")
