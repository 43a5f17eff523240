"""Login use cases: decide the second step, check codes (counting failures toward the lock), login links."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ...common import sealing
from ...common.errors import Conflict, Gone, TooManyRequests, Unauthorized
from ...common.events import iso
from ...common.outbox import add_events
from .. import domain, store
from . import events
from .context import (
    SCHEMA,
    Auth,
    Caller,
    check_not_locked,
    check_pending,
    check_same_company,
    load_account,
    lock_pending_login,
    now,
)

# ---- deciding -----------------------------------------------------------------------------


async def start_login(auth: Auth, caller: Caller, data: dict[str, Any]) -> dict[str, Any]:
    """`POST /v1/logins`: decide the second step in a transaction of its own."""
    async with auth.pool.acquire() as conn, conn.transaction():
        result = await decide_login(conn, auth, caller, data)
    return result


async def decide_login(conn: asyncpg.Connection, auth: Auth, caller: Caller, data: dict[str, Any]) -> dict[str, Any]:
    """Decide the second step of a login in the caller's transaction; idempotent by `login_id`.

    Serves `POST /v1/logins` (through `start_login`) and the upstream `LoginAttempted` event.
    """
    login_id = data.get("login_id") or secrets.token_urlsafe(16)
    account = await load_account(conn, caller, data["account_id"])
    # A key bound to no company sees every company's ids (see `store.find_login`), so the id it
    # names is new only if no company has it; a bound key's ids are its company's alone.
    existing = await store.find_login(conn, login_id, caller.scope)
    state = domain.MfaState(
        enrolled=account.enrolled,
        forced=account.forced,
        locked_until=account.locked_until,
        backup_email_verified=account.backup_verified_at is not None,
    )
    at = now()
    decision, methods = domain.decide(state, at)
    if existing is not None:
        # A retry of the same login gets the same answer, but only while that answer still
        # holds: an old `allow` must not yield a fresh assertion once MFA is set up or forced.
        if existing.account_id != account.account_id:
            raise Conflict("This login id belongs to another account.", code="login_id_conflict")
        if existing.expires_at <= at:
            raise Gone("This login id was used and has expired; start a new login with a new id.", code="login_expired")
        check_same_company(existing, account)
        if existing.decision != decision:
            raise Conflict("The account's MFA state changed since this login was decided; start a new login.",
                           code="login_state_changed")
        return _view(auth, caller, existing, methods)
    row = {
        "login_id": login_id,
        "account_id": account.account_id,
        "company_id": account.company_id,
        "decision": decision,
        "status": "succeeded" if decision == "allow" else "failed" if decision == "deny" else "pending",
        "method": "none" if decision == "allow" else None,
        "completed_at": at if decision in ("allow", "deny") else None,
        "ip": data.get("ip"),
        "user_agent": data.get("user_agent"),
        "expires_at": at + domain.LOGIN_TTL,
    }
    inserted = await store.insert_login(conn, row)
    login = await store.get_login(conn, account.company_id, login_id)
    assert login is not None
    if not inserted:  # a concurrent request with the same id won
        return _view(auth, caller, login, methods)
    locked_until = account.locked_until if decision == "deny" else None
    out = [events.challenge_issued(caller, login, decision, methods, login.expires_at, locked_until)]
    if decision == "allow":
        out.append(events.login_succeeded(caller, login, "none"))
    await add_events(conn, SCHEMA, out)
    result = _view(auth, caller, login, methods)
    if decision == "deny":
        result["locked_until"] = iso(locked_until)
    return result


def _view(auth: Auth, caller: Caller, login: store.Login, methods: list[str]) -> dict[str, Any]:
    """A login as `POST /v1/logins` answers it; with its assertion when it was allowed outright."""
    view = {
        "login_id": login.login_id,
        "account_id": login.account_id,
        "decision": login.decision,
        "status": login.status,
        "methods": methods,
        "expires_at": iso(login.expires_at),
    }
    if login.decision == "allow" and login.status == "succeeded":
        view["assertion"] = auth.assertion(caller, login.account_id, login.company_id, login.login_id, "none")
    return view


@dataclass(frozen=True)
class Passed:
    """A code that passed: the login it completed and how; the answer (and its assertion) is made once, at the end."""

    login: events.LoginRef
    method: str
    mfa_disabled: bool = False


def _success(auth: Auth, caller: Caller, login: events.LoginRef, method: str) -> dict[str, Any]:
    return {
        "result": "success",
        "login_id": login.login_id,
        "assertion": auth.assertion(caller, login.account_id, login.company_id, login.login_id, method),
    }


# ---- verifying codes --------------------------------------------------------------------------

@dataclass(frozen=True)
class Refused:
    """A code that did not pass: what it counted (if anything) commits first, then this is raised."""

    reason: str  # wrong_code or replayed_code
    attempts_left: int
    locked_until: datetime | None

    def error(self) -> Unauthorized:
        detail = ("That code was already used; wait for the next one." if self.reason == "replayed_code"
                  else "That code is not valid.")
        extra: dict[str, Any] = {"attempts_left": self.attempts_left}
        if self.locked_until:
            extra["locked_until"] = iso(self.locked_until)
        return Unauthorized(detail, code=self.reason if self.attempts_left else "login_failed", **extra)


async def verify_login(auth: Auth, caller: Caller, login_id: str, method: str, code: str, *,
                       known: store.VerifyView | None = None, assertion: bool = True) -> dict[str, Any]:
    """Check a TOTP or backup code for a login; counts failures per login and per account.

    `known`: the login as the caller read it already (the prompt's session read), so a right
    TOTP code costs one statement; the statement re-checks all of it under the row locks.
    `assertion`: sign one into the answer (the prompt sends the browser on without it).
    """
    code = domain.check_code_format(code) if method == "totp" else domain.normalize_backup_code(code)
    at = now()
    async with auth.pool.acquire() as conn:
        result = await _verify_totp_fast(auth, caller, conn, login_id, code, at, known) if method == "totp" else None
        if result is None:
            async with conn.transaction():
                result = await _verify_locked(conn, auth, caller, login_id, method, code, at)
    if isinstance(result, Refused):
        raise result.error()
    if isinstance(result, Passed):
        answer = _success(auth, caller, result.login, result.method) if assertion else {
            "result": "success", "login_id": result.login.login_id}
        return {**answer, "mfa_disabled": True} if result.mfa_disabled else answer
    return result


async def _verify_totp_fast(
    auth: Auth, caller: Caller, conn: asyncpg.Connection, login_id: str, code: str, at: datetime,
    known: store.VerifyView | None,
) -> Passed | None:
    """The common case in two round trips: a right code for a pending login.

    Reads without locks, and if the code matches, completes the login in ONE statement
    whose conditions re-check everything under the row locks (`last_step < step` keeps a
    step single use). Anything else (wrong code, replay, lock, wrong state) returns None
    and takes the locked path, which gives the exact error and counts failures.
    """
    row = known if known is not None else await store.get_login_for_verify(conn, login_id, caller.scope)
    if (
        row is None
        or row.account_company_id != row.company_id
        or row.decision != "verify"
        or row.status != "pending"
        or row.expires_at <= at
        or row.totp_secret is None
        or domain.lock_in_force(row.locked_until, at)
    ):
        return None
    secret = auth.open_secret(row.account_id, row.totp_secret)
    step = domain.match_totp(domain.decode_secret(secret), code, at)
    if step is None or step <= row.last_step:
        return None
    event = events.login_succeeded(caller, row, "totp")
    if not await store.complete_totp_login(conn, row, step, event, SCHEMA):
        return None
    return Passed(row, "totp")


async def _verify_locked(
    conn: asyncpg.Connection, auth: Auth, caller: Caller, login_id: str, method: str, code: str, at: datetime
) -> Passed | dict[str, Any] | Refused:
    """The slow path, under the account's and the login's row locks: the answer, or a counted refusal."""
    login, account = await lock_pending_login(conn, caller, login_id, at)
    check_not_locked(account, at)
    if not account.enrolled:
        raise Conflict("MFA is no longer set up for this account; start a new login.", code="mfa_not_enabled")
    if method == "backup_code":
        if await store.use_backup_code(conn, account.account_id, auth.code_hash(account.account_id, code)):
            return await _backup_code_used(conn, auth, caller, login, account, at)
        return await _count_failure(conn, caller, login, account, method, "wrong_code", at)
    secret = auth.open_secret(account.account_id, account.totp_secret)
    step = domain.match_totp(domain.decode_secret(secret), code, at)
    if step is None:
        return await _count_failure(conn, caller, login, account, method, "wrong_code", at)
    if not await store.claim_step(conn, account.account_id, step):
        if step == account.last_step:
            # The very code accepted last, sent again (a double click, a retried request): no
            # guess, so it counts toward nothing; it still never completes a second login.
            return await _refuse_resubmission(conn, caller, login, account, method)
        return await _count_failure(conn, caller, login, account, method, "replayed_code", at)
    await store.reset_failures(conn, account.account_id)
    await store.update_login(conn, login, status="succeeded", method="totp", completed_at=at)
    await add_events(conn, SCHEMA, [events.login_succeeded(caller, login, "totp")])
    return Passed(login, "totp")


async def _backup_code_used(
    conn: asyncpg.Connection, auth: Auth, caller: Caller, login: store.Login, account: store.Account, at: datetime
) -> Passed | dict[str, Any]:
    """A backup code turns MFA off (seed); a forced account is sent on to enrol, others are in."""
    await store.disable_mfa(conn, account.account_id)
    out = [events.disabled(caller, account, "backup_code", at)]
    if account.forced:
        # Seed: the backup code turns MFA off; a forced account must set it up again now.
        await store.update_login(conn, login, decision="enroll", attempts=0)
        out.append(events.challenge_issued(caller, login, "enroll", ["totp"], login.expires_at))
        await add_events(conn, SCHEMA, out)
        return {"result": "enroll", "login_id": login.login_id, "decision": "enroll", "methods": ["totp"],
                "expires_at": iso(login.expires_at), "mfa_disabled": True}
    await store.update_login(conn, login, status="succeeded", method="backup_code", completed_at=at)
    out.append(events.login_succeeded(caller, login, "backup_code"))
    await add_events(conn, SCHEMA, out)
    return Passed(login, "backup_code", mfa_disabled=True)


async def _count_failure(
    conn: asyncpg.Connection, caller: Caller, login: store.Login, account: store.Account,
    method: str, reason: str, at: datetime,
) -> Refused:
    """One more failure for the login (5 end it) and the account (10 in a row lock it)."""
    attempts = login.attempts + 1
    outcome = domain.register_failure(account.consecutive_failures, account.lock_count, at)
    await store.record_failure(
        conn, account.account_id, outcome.consecutive_failures, outcome.lock_count, outcome.locked_until
    )
    exhausted = attempts >= domain.MAX_LOGIN_ATTEMPTS or outcome.newly_locked
    await store.update_login(
        conn, login, attempts=attempts, **({"status": "failed", "completed_at": at} if exhausted else {}),
    )
    attempts_left = 0 if exhausted else domain.MAX_LOGIN_ATTEMPTS - attempts
    out = [events.login_failed(
        caller, login, method, "too_many_attempts" if attempts >= domain.MAX_LOGIN_ATTEMPTS else reason,
        attempts_left, outcome.consecutive_failures,
    )]
    if outcome.newly_locked:
        out.append(events.locked(caller, account, outcome))
    await add_events(conn, SCHEMA, out)
    return Refused(reason, attempts_left, outcome.locked_until)


async def _refuse_resubmission(
    conn: asyncpg.Connection, caller: Caller, login: store.Login, account: store.Account, method: str
) -> Refused:
    """`replayed_code` for the last accepted code, leaving the login's and the account's counts as they are."""
    attempts_left = domain.MAX_LOGIN_ATTEMPTS - login.attempts
    await add_events(conn, SCHEMA, [events.login_failed(
        caller, login, method, "replayed_code", attempts_left, account.consecutive_failures,
    )])
    return Refused("replayed_code", attempts_left, None)


# ---- login links --------------------------------------------------------------------------

async def send_login_link(auth: Auth, caller: Caller, login_id: str) -> dict[str, Any]:
    """Issue a single-use login link to the verified backup e-mail (sent by the notifier).

    The link is valid for `LINK_TTL`; a pending login is kept open that long too, so the link
    never outlives the login it completes (mail can be slow).
    """
    token = secrets.token_urlsafe(32)  # 256 bits
    at = now()
    expires = at + domain.LINK_TTL
    async with auth.pool.acquire() as conn, conn.transaction():
        login, account = await lock_pending_login(conn, caller, login_id, at)
        check_not_locked(account, at)
        if account.backup_email is None:
            raise Conflict("This account has no confirmed backup e-mail.", code="no_backup_email")
        if login.links_sent >= domain.MAX_LINKS_PER_LOGIN:
            raise TooManyRequests("Enough links were sent for this login; use one of them.", code="too_many_links")
        await store.insert_link(conn, auth.token_hash(token), login, account, expires)
        await store.update_login(conn, login, links_sent=login.links_sent + 1,
                                 expires_at=max(login.expires_at, expires))
        sealed = auth.keyring.seal(token.encode(), aad=sealing.login_link_token(account.account_id))
        await add_events(conn, SCHEMA, [events.link_requested(caller, login, account, sealed, expires)])
    return {"sent_to": domain.mask_email(account.backup_email), "expires_at": iso(expires)}


async def redeem_login_link(auth: Auth, caller: Caller, token: str) -> dict[str, Any]:
    """Complete the login a link was sent for, if everything the link stood for still holds.

    As verify does: the login waits for its second step and has not expired, the account is in
    the login's company, MFA is not locked; and as the link was sent: MFA is the same enrolment
    (not reset or set up again meanwhile), the address it went to is still the confirmed backup.
    """
    at = now()
    async with auth.pool.acquire() as conn, conn.transaction():
        link = await store.take_link(conn, auth.token_hash(token))
        if link is None:
            raise Gone("This login link is unknown.", code="invalid_token")
        if link.used_at is not None:
            raise Gone("This login link was already used.", code="token_used")
        if link.expires_at <= at:
            raise Gone("This login link expired; ask for a new one.", code="token_expired")
        account = await store.get_account(conn, link.account_id, lock=True)  # account before login, as everywhere
        login = await store.get_login(conn, link.company_id, link.login_id, lock=True)
        if login is None or account is None or not caller.sees(login.company_id):
            raise Gone("This login link is unknown.", code="invalid_token")
        check_pending(login, "verify", at)
        check_same_company(login, account)
        check_not_locked(account, at)  # a lock from wrong codes holds for every way in
        if not account.enrolled:
            raise Conflict("MFA is no longer set up for this account; start a new login.", code="mfa_not_enabled")
        if account.enrolled_at != link.enrolled_at or account.backup_email != link.sent_to:
            raise Conflict("MFA or the backup e-mail changed since this link was sent; start a new login.",
                           code="login_state_changed")
        await store.mark_link_used(conn, link.token_hash, at)
        await store.update_login(conn, login, status="succeeded", method="backup_email", completed_at=at)
        await add_events(conn, SCHEMA, [events.login_succeeded(caller, login, "backup_email")])
    return _success(auth, caller, login, "backup_email")
