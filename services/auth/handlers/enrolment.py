"""Enrolment use cases: a pending TOTP secret, its QR code, confirming it, and fresh backup codes."""

from __future__ import annotations

from typing import Any

import asyncpg

from ...common.errors import Conflict, Gone, NotFound, Unauthorized
from ...common.events import iso
from ...common.outbox import add_events
from .. import domain, store
from . import events
from .context import SCHEMA, Auth, Caller, check_same_company, load_account, now


async def start_enrollment(auth: Auth, caller: Caller, account_id: str) -> dict[str, Any]:
    """A new pending secret (replacing any pending one), its otpauth URI and where its QR codes are."""
    secret = domain.new_secret()
    expires = now() + domain.ENROLLMENT_TTL
    async with auth.pool.acquire() as conn, conn.transaction():
        account = await load_account(conn, caller, account_id, lock=True)
        if account.enrolled:
            raise Conflict("MFA is already set up for this account; turn it off first.", code="already_enrolled")
        await store.save_pending(conn, account_id, auth.seal_secret(account_id, secret), expires)
    base = f"/v1/accounts/{account_id}/mfa/enrollment"
    return {
        "secret": secret,
        "secret_grouped": domain.group_secret(secret),
        "otpauth_uri": domain.otpauth_uri(secret, account.email, account.company_name),
        "qr_svg_url": f"{base}/qr.svg",
        "qr_png_url": f"{base}/qr.png",
        "expires_at": iso(expires),
    }


async def pending_uri(auth: Auth, caller: Caller, account_id: str) -> str:
    """The otpauth URI of the pending enrolment, for its QR code."""
    async with auth.pool.acquire() as conn:
        account = await load_account(conn, caller, account_id)
        pending = await store.get_pending(conn, account_id)
    if pending is None or pending.expires_at <= now():
        raise NotFound("There is no pending enrolment; start one first.", code="no_pending_enrollment")
    secret = auth.open_secret(account_id, pending.totp_secret)
    return domain.otpauth_uri(secret, account.email, account.company_name)


async def confirm_enrollment(auth: Auth, caller: Caller, account_id: str, code: str, login_id: str | None) -> dict[str, Any]:
    """Check the current code against the pending secret and save it; returns backup codes once.

    A wrong code is counted (and the pending secret dropped after too many) in a transaction
    that commits before the 401 is raised.
    """
    code = domain.check_code_format(code)
    async with auth.pool.acquire() as conn, conn.transaction():
        result = await _confirm(conn, auth, caller, account_id, code, login_id)
    if result is None:
        raise Unauthorized("That code is not the current one; check the app and the phone's clock.", code="invalid_code")
    return result


async def _confirm(
    conn: asyncpg.Connection, auth: Auth, caller: Caller, account_id: str, code: str, login_id: str | None
) -> dict[str, Any] | None:
    """The body of confirm_enrollment in its transaction: the answer, or None for a counted wrong code."""
    at = now()
    account = await load_account(conn, caller, account_id, lock=True)
    pending = await store.get_pending(conn, account_id, lock=True)
    if account.enrolled:
        raise Conflict("MFA is already set up for this account.", code="already_enrolled")
    if pending is None:
        raise Conflict("There is no pending enrolment; start one first.", code="no_pending_enrollment")
    if pending.expires_at <= at:
        await store.delete_pending(conn, account_id)
        raise Gone("The enrolment expired; start a new one.", code="enrollment_expired")
    login = None
    if login_id is not None:
        login = await store.find_account_login(conn, account_id, login_id, lock=True)
        if login is None:
            raise NotFound(f"No login {login_id!r} for this account.", code="login_not_found")
        if login.decision != "enroll" or login.status != "pending":
            raise Conflict("This login is not waiting for an enrolment.", code="wrong_login_state")
        if login.expires_at <= at:
            raise Gone("The login expired; log in again.", code="login_expired")
        check_same_company(login, account)
    secret = auth.open_secret(account_id, pending.totp_secret)
    step = domain.match_totp(domain.decode_secret(secret), code, at)
    if step is None:
        if await store.count_pending_failure(conn, account_id) >= domain.MAX_ENROLL_ATTEMPTS:
            await store.delete_pending(conn, account_id)
        return None
    codes = domain.new_backup_codes()
    await store.enable_totp(conn, account_id, auth.seal_secret(account_id, secret), step, at)
    await store.replace_backup_codes(conn, account_id, backup_code_hashes(auth, account_id, codes))
    await store.delete_pending(conn, account_id)
    out = [events.enrolled(caller, account, at, login_id)]
    result: dict[str, Any] = {"backup_codes": codes, "enrolled_at": iso(at)}
    if login is not None:
        await store.update_login(conn, login, status="succeeded", method="enrollment", completed_at=at)
        out.append(events.login_succeeded(caller, login, "enrollment"))
        result["assertion"] = auth.assertion(caller, account_id, account.company_id, login.login_id, "enrollment")
    await add_events(conn, SCHEMA, out)
    return result


async def regenerate_backup_codes(auth: Auth, caller: Caller, account_id: str) -> dict[str, Any]:
    """Replace every backup code; the new ones are shown this once."""
    codes = domain.new_backup_codes()
    async with auth.pool.acquire() as conn, conn.transaction():
        account = await load_account(conn, caller, account_id, lock=True)
        if not account.enrolled:
            raise Conflict("MFA is not set up for this account.", code="mfa_not_enabled")
        await store.replace_backup_codes(conn, account_id, backup_code_hashes(auth, account_id, codes))
        await add_events(conn, SCHEMA, [events.codes_regenerated(caller, account, len(codes))])
    return {"backup_codes": codes}


def backup_code_hashes(auth: Auth, account_id: str, codes: list[str]) -> list[bytes]:
    """How `codes` are stored: keyed hashes of their normal form, bound to the account."""
    return [auth.code_hash(account_id, domain.normalize_backup_code(c)) for c in codes]
