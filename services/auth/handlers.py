"""Auth use cases: load state, apply the domain rules, write state and events in one transaction."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from ..common.apikeys import Principal
from ..common.crypto import Keyring, keyed_hash
from ..common.errors import BadRequest, Conflict, Forbidden, Gone, NotFound, TooManyRequests, Unauthorized
from ..common.events import Actor, iso, new_event
from ..common.outbox import add_events
from . import domain, store
from .tokens import Signer

SCHEMA = "auth"
SOURCE = "/mfa/auth"


@dataclass
class Auth:
    """Everything the auth use cases need: the pool, the keyring and the assertion signer."""

    pool: asyncpg.Pool
    keyring: Keyring
    signer: Signer

    def __post_init__(self) -> None:
        self._code_key = self.keyring.derive("backup-codes")
        self._token_key = self.keyring.derive("tokens")

    def code_hash(self, account_id: str, normalized: str) -> bytes:
        return keyed_hash(self._code_key, f"{account_id}:{normalized}")

    def token_hash(self, token: str) -> bytes:
        return keyed_hash(self._token_key, token)

    def seal_secret(self, account_id: str, secret: str) -> str:
        return self.keyring.seal(secret.encode(), aad=f"totp:{account_id}".encode())

    def open_secret(self, account_id: str, sealed: str) -> str:
        return self.keyring.open(sealed, aad=f"totp:{account_id}".encode()).decode()


@dataclass(frozen=True)
class Caller:
    """Who is calling: the API key's principal, or a consumed event's actor."""

    principal: Principal | None
    correlation_id: str | None = None
    actor: Actor = Actor("system")

    def sees(self, company_id: str) -> bool:
        return self.principal is None or self.principal.sees(company_id)


def now() -> datetime:
    return datetime.now(UTC)


def _event(caller: Caller, event_type: str, data: dict[str, Any], *, subject: str, company_id: str) -> dict[str, Any]:
    return new_event(
        event_type,
        data,
        source=SOURCE,
        subject=subject,
        company_id=company_id,
        correlation_id=caller.correlation_id,
        actor=caller.actor,
    )


def _person(account: asyncpg.Record) -> dict[str, Any]:
    data = {"email": account["email"], "first_name": account["first_name"]}
    if account["locale"]:
        data["locale"] = account["locale"]
    return data


async def _account(conn: asyncpg.Connection, caller: Caller, account_id: str, *, lock: bool = False) -> asyncpg.Record:
    """The account, or 404 also when it belongs to a company the caller may not see."""
    account = await store.get_account(conn, account_id, lock=lock)
    if account is None or not caller.sees(account["company_id"]):
        raise NotFound(f"No account {account_id!r}.", code="account_not_found")
    return account


def mfa_status(account: asyncpg.Record) -> dict[str, Any]:
    locked = account["locked_until"] if account["locked_until"] and account["locked_until"] > now() else None
    return {
        "account_id": account["account_id"],
        "enabled": account["totp_secret"] is not None,
        "forced": account["forced"],
        "enrolled_at": iso(account["enrolled_at"]),
        "backup_email": (
            {"address": account["backup_address"], "verified": account["backup_verified_at"] is not None}
            if account["backup_address"]
            else None
        ),
        "backup_codes_left": account["backup_codes_left"],
        "locked_until": iso(locked),
    }


# ---- directory -------------------------------------------------------------------------------

def _policy_events(caller: Caller, scope: str, data: dict[str, Any], previous: asyncpg.Record | None) -> list[dict]:
    """MfaPolicyChanged when `mfa_required` changed (or a new row starts out required)."""
    before = previous["mfa_required"] if previous else None
    if before == data["mfa_required"] or (previous is None and not data["mfa_required"]):
        return []
    subject = data["company_id"] if scope == "company" else data["account_id"]
    return [_event(
        caller, "MfaPolicyChanged",
        {"scope": scope, "company_id": data["company_id"],
         "account_id": data["account_id"] if scope == "account" else None,
         "mfa_required": data["mfa_required"], "previous": before},
        subject=subject, company_id=data["company_id"],
    )]


async def apply_company(conn: asyncpg.Connection, caller: Caller, data: dict[str, Any], *, publish: bool) -> bool:
    """Upsert a company in the caller's transaction; True when it is new.

    `publish` re-announces an HTTP change as CompanyUpserted for the other services' directories.
    """
    previous = await store.upsert_company(conn, data["company_id"], data["name"], data["mfa_required"])
    events = _policy_events(caller, "company", data, previous)
    if publish:
        events.insert(0, _event(caller, "CompanyUpserted", data, subject=data["company_id"], company_id=data["company_id"]))
    await add_events(conn, SCHEMA, events)
    return previous is None


async def apply_account(conn: asyncpg.Connection, caller: Caller, data: dict[str, Any], *, publish: bool) -> bool:
    """Upsert an account; an unknown company is 404 on HTTP (`publish`), a placeholder for upstream events."""
    data = {**data, "email": domain.check_email(data["email"])}
    if await store.get_company(conn, data["company_id"]) is None:
        if publish:
            raise NotFound(f"No company {data['company_id']!r}; PUT /v1/companies/{{id}} first.", code="company_not_found")
        await store.ensure_company(conn, data["company_id"])
    previous = await store.upsert_account(conn, data)
    if previous is not None and not caller.sees(previous["company_id"]):
        raise NotFound(f"No account {data['account_id']!r}.", code="account_not_found")
    events = _policy_events(caller, "account", data, previous)
    if publish:
        events.insert(0, _event(caller, "AccountUpserted", data, subject=data["account_id"], company_id=data["company_id"]))
    await add_events(conn, SCHEMA, events)
    return previous is None


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
        return mfa_status(await _account(conn, caller, account_id))


# ---- enrolment -------------------------------------------------------------------------------

async def start_enrollment(auth: Auth, caller: Caller, account_id: str) -> dict[str, Any]:
    """A new pending secret (replacing any pending one), its otpauth URI and where its QR codes are."""
    async with auth.pool.acquire() as conn, conn.transaction():
        account = await _account(conn, caller, account_id, lock=True)
        if account["totp_secret"] is not None:
            raise Conflict("MFA is already set up for this account; turn it off first.", code="already_enrolled")
        secret = domain.new_secret()
        expires = now() + domain.ENROLLMENT_TTL
        await store.save_pending(conn, account_id, auth.seal_secret(account_id, secret), expires)
    base = f"/v1/accounts/{account_id}/mfa/enrollment"
    return {
        "secret": secret,
        "secret_grouped": domain.group_secret(secret),
        "otpauth_uri": domain.otpauth_uri(secret, account["email"], account["company_name"]),
        "qr_svg_url": f"{base}/qr.svg",
        "qr_png_url": f"{base}/qr.png",
        "expires_at": iso(expires),
    }


async def pending_uri(auth: Auth, caller: Caller, account_id: str) -> str:
    """The otpauth URI of the pending enrolment, for its QR code."""
    async with auth.pool.acquire() as conn:
        account = await _account(conn, caller, account_id)
        pending = await store.get_pending(conn, account_id)
    if pending is None or pending["expires_at"] <= now():
        raise NotFound("There is no pending enrolment; start one first.", code="no_pending_enrollment")
    secret = auth.open_secret(account_id, pending["totp_secret"])
    return domain.otpauth_uri(secret, account["email"], account["company_name"])


async def confirm_enrollment(auth: Auth, caller: Caller, account_id: str, code: str, login_id: str | None) -> dict[str, Any]:
    """Check the current code against the pending secret and save it; returns backup codes once."""
    code = domain.check_code_format(code)
    at = now()
    async with auth.pool.acquire() as conn:
        async with conn.transaction():
            account = await _account(conn, caller, account_id, lock=True)
            pending = await store.get_pending(conn, account_id, lock=True)
            if account["totp_secret"] is not None:
                raise Conflict("MFA is already set up for this account.", code="already_enrolled")
            if pending is None:
                raise Conflict("There is no pending enrolment; start one first.", code="no_pending_enrollment")
            if pending["expires_at"] <= at:
                await store.delete_pending(conn, account_id)
                raise Gone("The enrolment expired; start a new one.", code="enrollment_expired")
            login = None
            if login_id is not None:
                login = await store.get_login(conn, login_id, lock=True)
                if login is None or login["account_id"] != account_id:
                    raise NotFound(f"No login {login_id!r} for this account.", code="login_not_found")
                if login["decision"] != "enroll" or login["status"] != "pending":
                    raise Conflict("This login is not waiting for an enrolment.", code="wrong_login_state")
                if login["expires_at"] <= at:
                    raise Gone("The login expired; log in again.", code="login_expired")
            secret = auth.open_secret(account_id, pending["totp_secret"])
            step = domain.match_totp(domain.decode_secret(secret), code, at)
            if step is None:
                failures = await store.count_pending_failure(conn, account_id)
                if failures >= domain.MAX_ENROLL_ATTEMPTS:
                    await store.delete_pending(conn, account_id)
            else:
                codes = domain.new_backup_codes()
                await store.enable_totp(conn, account_id, auth.seal_secret(account_id, secret), step, at)
                await store.replace_backup_codes(
                    conn, account_id, [auth.code_hash(account_id, domain.normalize_backup_code(c)) for c in codes]
                )
                await store.delete_pending(conn, account_id)
                events = [
                    _event(
                        caller,
                        "MfaEnrolled",
                        {"account_id": account_id, "company_id": account["company_id"], **_person(account),
                         "method": "totp", "enrolled_at": iso(at), "login_id": login_id},
                        subject=account_id,
                        company_id=account["company_id"],
                    )
                ]
                result: dict[str, Any] = {"backup_codes": codes, "enrolled_at": iso(at)}
                if login is not None:
                    await store.update_login(conn, login_id, status="succeeded", method="enrollment", completed_at=at)
                    events.append(_login_succeeded(caller, login, "enrollment"))
                    result["assertion"] = auth.signer.sign(
                        account_id=account_id, company_id=account["company_id"], login_id=login_id,
                        amr=domain.amr_for("enrollment"),
                    )
                await add_events(conn, SCHEMA, events)
                return result
    # The failure counter was committed above; the error leaves nothing else behind.
    raise Unauthorized("That code is not the current one; check the app and the phone's clock.", code="invalid_code")


async def regenerate_backup_codes(auth: Auth, caller: Caller, account_id: str) -> dict[str, Any]:
    async with auth.pool.acquire() as conn, conn.transaction():
        account = await _account(conn, caller, account_id, lock=True)
        if account["totp_secret"] is None:
            raise Conflict("MFA is not set up for this account.", code="mfa_not_enabled")
        codes = domain.new_backup_codes()
        await store.replace_backup_codes(
            conn, account_id, [auth.code_hash(account_id, domain.normalize_backup_code(c)) for c in codes]
        )
        await add_events(conn, SCHEMA, [_event(
            caller, "BackupCodesRegenerated",
            {"account_id": account_id, "company_id": account["company_id"], **_person(account), "count": len(codes)},
            subject=account_id, company_id=account["company_id"],
        )])
    return {"backup_codes": codes}


# ---- backup e-mail ------------------------------------------------------------------------

async def set_backup_email(auth: Auth, caller: Caller, account_id: str, address: str) -> dict[str, Any]:
    address = domain.check_email(address)
    token = secrets.token_urlsafe(32)
    expires = now() + domain.CONFIRM_TTL
    async with auth.pool.acquire() as conn, conn.transaction():
        account = await _account(conn, caller, account_id, lock=True)
        if domain.same_email(address, account["email"]):
            raise BadRequest("The backup e-mail must differ from the login e-mail.", code="same_as_login_email")
        await store.set_backup_email(conn, account_id, address, auth.token_hash(token), expires)
        sealed = auth.keyring.seal(token.encode(), aad=f"BackupEmailChanged:{account_id}".encode())
        await add_events(conn, SCHEMA, [_event(
            caller, "BackupEmailChanged",
            {"account_id": account_id, "company_id": account["company_id"], **_person(account),
             "backup_email": address, "confirm_token": sealed, "expires_at": iso(expires)},
            subject=account_id, company_id=account["company_id"],
        )])
    return {"address": address, "verified": False, "confirmation_expires_at": iso(expires)}


async def confirm_backup_email(auth: Auth, caller: Caller, token: str) -> dict[str, Any]:
    async with auth.pool.acquire() as conn, conn.transaction():
        row = await store.find_backup_email_by_token(conn, auth.token_hash(token))
        if row is None or not caller.sees(row["company_id"]):
            raise Gone("This confirmation link is unknown.", code="invalid_token")
        if row["verified_at"] is not None:
            raise Gone("This confirmation link was already used.", code="token_used")
        if row["confirm_expires_at"] <= now():
            raise Gone("This confirmation link expired; set the backup e-mail again.", code="token_expired")
        await store.confirm_backup_email(conn, row["account_id"])
        await add_events(conn, SCHEMA, [_event(
            caller, "BackupEmailConfirmed",
            {"account_id": row["account_id"], "company_id": row["company_id"], "backup_email": row["address"]},
            subject=row["account_id"], company_id=row["company_id"],
        )])
    return {"account_id": row["account_id"], "address": row["address"], "verified": True}


# ---- turning MFA off ----------------------------------------------------------------------

def _disabled_event(caller: Caller, account: asyncpg.Record, reason: str, **extra: Any) -> dict[str, Any]:
    data = {
        "account_id": account["account_id"],
        "company_id": account["company_id"],
        **_person(account),
        "backup_email": account["backup_address"] if account["backup_verified_at"] else None,
        "reason": reason,
        "forced": account["forced"],
        "disabled_at": iso(now()),
        **extra,
    }
    return _event(caller, "MfaDisabled", data, subject=account["account_id"], company_id=account["company_id"])


async def disable_with_backup_code(auth: Auth, caller: Caller, account_id: str, backup_code: str) -> dict[str, Any]:
    """The person turns MFA off with a backup code (seed: 'loss, theft or a broken phone')."""
    normalized = domain.normalize_backup_code(backup_code)
    async with auth.pool.acquire() as conn:
        async with conn.transaction():
            account = await _account(conn, caller, account_id, lock=True)
            if account["totp_secret"] is None:
                raise Conflict("MFA is not set up for this account.", code="mfa_not_enabled")
            _check_not_locked(account)
            if await store.use_backup_code(conn, account_id, auth.code_hash(account_id, normalized)):
                await store.disable_mfa(conn, account_id)
                await add_events(conn, SCHEMA, [_disabled_event(caller, account, "backup_code")])
                return {"enabled": False, "forced": account["forced"], "next": "enroll" if account["forced"] else None}
            outcome = domain.register_failure(account["consecutive_failures"], account["lock_count"], now())
            await store.record_failure(conn, account_id, outcome.consecutive_failures, outcome.lock_count, outcome.locked_until)
            if outcome.newly_locked:
                await add_events(conn, SCHEMA, [_locked_event(caller, account, outcome)])
    raise Unauthorized("That backup code is not valid (each code works once).", code="invalid_backup_code")


async def admin_disable(auth: Auth, caller: Caller, account_id: str, actor_account_id: str) -> dict[str, Any]:
    """An administrator of the same company turns an employee's MFA off, only while it is not forced."""
    async with auth.pool.acquire() as conn, conn.transaction():
        account = await _account(conn, caller, account_id, lock=True)
        actor = await store.get_account(conn, actor_account_id)
        if actor is None or actor["company_id"] != account["company_id"] or actor["role"] != "admin":
            raise Forbidden("Only an administrator of the same company can turn MFA off.", code="not_company_admin")
        if account["forced"]:
            raise Conflict(
                "MFA is forced for this account; lift the requirement before turning it off.", code="mfa_forced"
            )
        if account["totp_secret"] is None:
            raise Conflict("MFA is not set up for this account.", code="mfa_not_enabled")
        await store.disable_mfa(conn, account_id)
        admin_caller = Caller(caller.principal, caller.correlation_id, Actor("user", actor_account_id))
        await add_events(conn, SCHEMA, [_disabled_event(admin_caller, account, "admin", actor_account_id=actor_account_id)])
    return {"enabled": False}


async def helpdesk_reset(conn: asyncpg.Connection, caller: Caller, data: dict[str, Any]) -> bool:
    """Recovery approved a ticket: reset MFA, forced or not. False when the account is unknown."""
    account = await store.get_account(conn, data["account_id"], lock=True)
    if account is None:
        return False
    await store.disable_mfa(conn, data["account_id"])  # also drops a pending enrolment and any lock
    await add_events(conn, SCHEMA, [_disabled_event(
        caller, account, "helpdesk_recovery", ticket_id=data["ticket_id"], agent=data.get("agent"),
    )])
    return True


# ---- logins ----------------------------------------------------------------------------------

def _check_not_locked(account: asyncpg.Record) -> None:
    if account["locked_until"] and account["locked_until"] > now():
        seconds = int((account["locked_until"] - now()).total_seconds()) + 1
        raise TooManyRequests(
            "Too many wrong codes: MFA is locked for a while.",
            code="mfa_locked",
            locked_until=iso(account["locked_until"]),
            retry_after=seconds,
        )


def _locked_event(caller: Caller, account: asyncpg.Record, outcome: domain.FailureOutcome) -> dict[str, Any]:
    return _event(
        caller, "MfaLocked",
        {"account_id": account["account_id"], "company_id": account["company_id"], **_person(account),
         "locked_until": iso(outcome.locked_until), "consecutive_failures": outcome.consecutive_failures},
        subject=account["account_id"], company_id=account["company_id"],
    )


def _login_succeeded(caller: Caller, login: asyncpg.Record, method: str) -> dict[str, Any]:
    return _event(
        caller, "LoginSucceeded",
        {"login_id": login["login_id"], "account_id": login["account_id"], "company_id": login["company_id"],
         "method": method},
        subject=login["account_id"], company_id=login["company_id"],
    )


def _login_view(login: asyncpg.Record, methods: list[str] | None = None) -> dict[str, Any]:
    return {
        "login_id": login["login_id"],
        "account_id": login["account_id"],
        "decision": login["decision"],
        "status": login["status"],
        "methods": methods if methods is not None else [],
        "expires_at": iso(login["expires_at"]),
    }


async def start_login(auth: Auth, caller: Caller, data: dict[str, Any], conn: asyncpg.Connection | None = None) -> dict[str, Any]:
    """Decide the second step of a login; idempotent by `login_id`."""
    if conn is None:
        async with auth.pool.acquire() as conn, conn.transaction():
            return await start_login(auth, caller, data, conn)
    login_id = data.get("login_id") or secrets.token_urlsafe(16)
    account = await _account(conn, caller, data["account_id"])
    existing = await store.get_login(conn, login_id)
    state = domain.MfaState(
        enrolled=account["totp_secret"] is not None,
        forced=account["forced"],
        locked_until=account["locked_until"],
        backup_email_verified=account["backup_verified_at"] is not None,
    )
    at = now()
    decision, methods = domain.decide(state, at)
    if existing is not None:
        # A retry of the same login gets the same answer, but only while that answer still
        # holds: an old `allow` must not yield a fresh assertion once MFA is set up or forced.
        if existing["account_id"] != account["account_id"]:
            raise Conflict("This login id belongs to another account.", code="login_id_conflict")
        if existing["expires_at"] <= at:
            raise Gone("This login id was used and has expired; start a new login with a new id.", code="login_expired")
        if existing["decision"] != decision:
            raise Conflict("The account's MFA state changed since this login was decided; start a new login.",
                           code="login_state_changed")
        return _with_assertion(auth, existing, methods)
    row = {
        "login_id": login_id,
        "account_id": account["account_id"],
        "company_id": account["company_id"],
        "decision": decision,
        "status": "succeeded" if decision == "allow" else "failed" if decision == "deny" else "pending",
        "method": "none" if decision == "allow" else None,
        "completed_at": at if decision in ("allow", "deny") else None,
        "ip": data.get("ip"),
        "user_agent": data.get("user_agent"),
        "expires_at": at + domain.LOGIN_TTL,
    }
    if not await store.insert_login(conn, row):  # a concurrent request with the same id won
        existing = await store.get_login(conn, login_id)
        return _with_assertion(auth, existing, methods)
    events = [_event(
        caller, "LoginChallengeIssued",
        {"login_id": login_id, "account_id": account["account_id"], "company_id": account["company_id"],
         "decision": decision, "methods": methods, "expires_at": iso(row["expires_at"]),
         "locked_until": iso(account["locked_until"]) if decision == "deny" else None},
        subject=account["account_id"], company_id=account["company_id"],
    )]
    if decision == "allow":
        events.append(_login_succeeded(caller, row, "none"))
    await add_events(conn, SCHEMA, events)
    login = await store.get_login(conn, login_id)
    result = _with_assertion(auth, login, methods)
    if decision == "deny":
        result["locked_until"] = iso(account["locked_until"])
    return result


def _with_assertion(auth: Auth, login: asyncpg.Record, methods: list[str]) -> dict[str, Any]:
    view = _login_view(login, methods)
    if login["decision"] == "allow" and login["status"] == "succeeded":
        view["assertion"] = auth.signer.sign(
            account_id=login["account_id"], company_id=login["company_id"], login_id=login["login_id"],
            amr=domain.amr_for("none"),
        )
    return view


async def _lock_pending_login(
    conn: asyncpg.Connection, caller: Caller, login_id: str
) -> tuple[asyncpg.Record, asyncpg.Record]:
    """A pending `verify` login and its account, both locked: the account first.

    Every statement that writes both takes the account before the login (the one-statement
    fast path of verify, enrolment, account removal's cascade), so two requests on one login
    wait for each other instead of deadlocking.
    """
    account_id = await store.lock_account_of_login(conn, login_id)
    login = await _pending_login(conn, caller, login_id)  # not found, not visible, wrong state: raises
    # Locked already, unless the login was committed between the two statements.
    account = await store.get_account(conn, login["account_id"], lock=account_id is None)
    assert account is not None  # logins cascade with their account
    return login, account


async def _pending_login(conn: asyncpg.Connection, caller: Caller, login_id: str, decision: str = "verify") -> asyncpg.Record:
    login = await store.get_login(conn, login_id, lock=True)
    if login is None or not caller.sees(login["company_id"]):
        raise NotFound(f"No login {login_id!r}.", code="login_not_found")
    if login["decision"] != decision:
        raise Conflict(f"This login's decision is {login['decision']!r}; there is nothing to verify.", code="wrong_login_state")
    if login["status"] != "pending":
        raise Conflict(f"This login is already {login['status']}.", code="login_completed")
    if login["expires_at"] <= now():
        raise Gone("The login expired; log in again.", code="login_expired")
    return login


async def verify_login(auth: Auth, caller: Caller, login_id: str, method: str, code: str) -> dict[str, Any]:
    """Check a TOTP or backup code for a login; counts failures per login and per account."""
    if method == "totp":
        code = domain.check_code_format(code)
    else:
        code = domain.normalize_backup_code(code)
    at = now()
    async with auth.pool.acquire() as conn:
        if method == "totp":
            fast = await _verify_totp_fast(auth, caller, conn, login_id, code, at)
            if fast is not None:
                return fast
        async with conn.transaction():
            login, account = await _lock_pending_login(conn, caller, login_id)
            _check_not_locked(account)
            if account["totp_secret"] is None:
                raise Conflict("MFA is no longer set up for this account; start a new login.", code="mfa_not_enabled")
            reason = "wrong_code"
            if method == "totp":
                secret = auth.open_secret(account["account_id"], account["totp_secret"])
                step = domain.match_totp(domain.decode_secret(secret), code, at)
                if step is not None:
                    if await store.claim_step(conn, account["account_id"], step):
                        await store.reset_failures(conn, account["account_id"])
                        await store.update_login(conn, login_id, status="succeeded", method="totp", completed_at=at)
                        await add_events(conn, SCHEMA, [_login_succeeded(caller, login, "totp")])
                        return _success(auth, login, "totp")
                    reason = "replayed_code"
            elif await store.use_backup_code(conn, account["account_id"], auth.code_hash(account["account_id"], code)):
                await store.disable_mfa(conn, account["account_id"])
                events = [_disabled_event(caller, account, "backup_code")]
                if account["forced"]:
                    # Seed: the backup code turns MFA off; a forced account must set it up again now.
                    await store.update_login(conn, login_id, decision="enroll", attempts=0)
                    events.append(_event(
                        caller, "LoginChallengeIssued",
                        {"login_id": login_id, "account_id": login["account_id"], "company_id": login["company_id"],
                         "decision": "enroll", "methods": ["totp"], "expires_at": iso(login["expires_at"])},
                        subject=login["account_id"], company_id=login["company_id"],
                    ))
                    await add_events(conn, SCHEMA, events)
                    return {"result": "enroll", "login_id": login_id, "decision": "enroll", "methods": ["totp"],
                            "expires_at": iso(login["expires_at"]), "mfa_disabled": True}
                await store.update_login(conn, login_id, status="succeeded", method="backup_code", completed_at=at)
                events.append(_login_succeeded(caller, login, "backup_code"))
                await add_events(conn, SCHEMA, events)
                return {**_success(auth, login, "backup_code"), "mfa_disabled": True}
            attempts = login["attempts"] + 1
            outcome = domain.register_failure(account["consecutive_failures"], account["lock_count"], at)
            await store.record_failure(
                conn, account["account_id"], outcome.consecutive_failures, outcome.lock_count, outcome.locked_until
            )
            exhausted = attempts >= domain.MAX_LOGIN_ATTEMPTS or outcome.newly_locked
            await store.update_login(
                conn, login_id, attempts=attempts,
                **({"status": "failed", "completed_at": at} if exhausted else {}),
            )
            attempts_left = 0 if exhausted else domain.MAX_LOGIN_ATTEMPTS - attempts
            events = [_event(
                caller, "LoginFailed",
                {"login_id": login_id, "account_id": login["account_id"], "company_id": login["company_id"],
                 "method": method,
                 "reason": "too_many_attempts" if attempts >= domain.MAX_LOGIN_ATTEMPTS else reason,
                 "attempts_left": attempts_left, "consecutive_failures": outcome.consecutive_failures},
                subject=login["account_id"], company_id=login["company_id"],
            )]
            if outcome.newly_locked:
                events.append(_locked_event(caller, account, outcome))
            await add_events(conn, SCHEMA, events)
    detail = "That code was already used; wait for the next one." if reason == "replayed_code" else "That code is not valid."
    extra: dict[str, Any] = {"attempts_left": attempts_left}
    if outcome.locked_until:
        extra["locked_until"] = iso(outcome.locked_until)
    raise Unauthorized(detail, code=reason if attempts_left else "login_failed", **extra)


async def _verify_totp_fast(
    auth: Auth, caller: Caller, conn: asyncpg.Connection, login_id: str, code: str, at: datetime
) -> dict[str, Any] | None:
    """The common case in two round trips: a right code for a pending login.

    Reads without locks, and if the code matches, completes the login in ONE statement
    whose conditions re-check everything under the row locks (`last_step < step` keeps a
    step single use). Anything else (wrong code, replay, lock, wrong state) returns None
    and takes the locked path, which gives the exact error and counts failures.
    """
    row = await store.get_login_for_verify(conn, login_id)
    if (
        row is None
        or not caller.sees(row["company_id"])
        or row["decision"] != "verify"
        or row["status"] != "pending"
        or row["expires_at"] <= at
        or row["totp_secret"] is None
        or (row["locked_until"] and row["locked_until"] > at)
    ):
        return None
    secret = auth.open_secret(row["account_id"], row["totp_secret"])
    step = domain.match_totp(domain.decode_secret(secret), code, at)
    if step is None or step <= row["last_step"]:
        return None
    event = _login_succeeded(caller, row, "totp")
    if not await store.complete_totp_login(conn, login_id, row["account_id"], step, event, SCHEMA):
        return None
    return _success(auth, row, "totp")


def _success(auth: Auth, login: asyncpg.Record, method: str) -> dict[str, Any]:
    return {
        "result": "success",
        "login_id": login["login_id"],
        "assertion": auth.signer.sign(
            account_id=login["account_id"], company_id=login["company_id"], login_id=login["login_id"],
            amr=domain.amr_for(method),
        ),
    }


async def send_login_link(auth: Auth, caller: Caller, login_id: str) -> dict[str, Any]:
    """Issue a single-use login link to the verified backup e-mail (sent by the notifier)."""
    token = secrets.token_urlsafe(32)  # 256 bits
    expires = now() + domain.LINK_TTL
    async with auth.pool.acquire() as conn, conn.transaction():
        login, account = await _lock_pending_login(conn, caller, login_id)
        _check_not_locked(account)
        if not account["backup_verified_at"]:
            raise Conflict("This account has no confirmed backup e-mail.", code="no_backup_email")
        if login["links_sent"] >= domain.MAX_LINKS_PER_LOGIN:
            raise TooManyRequests("Enough links were sent for this login; use one of them.", code="too_many_links")
        expires = min(expires, login["expires_at"] + domain.LINK_TTL)
        await store.insert_link(conn, auth.token_hash(token), login_id, account["account_id"], expires)
        await store.update_login(conn, login_id, links_sent=login["links_sent"] + 1)
        sealed = auth.keyring.seal(token.encode(), aad=f"BackupEmailRequested:{account['account_id']}".encode())
        await add_events(conn, SCHEMA, [_event(
            caller, "BackupEmailRequested",
            {"login_id": login_id, "account_id": account["account_id"], "company_id": account["company_id"],
             "backup_email": account["backup_address"], "first_name": account["first_name"],
             "link_token": sealed, "expires_at": iso(expires),
             **({"locale": account["locale"]} if account["locale"] else {})},
            subject=account["account_id"], company_id=account["company_id"],
        )])
    return {"sent_to": domain.mask_email(account["backup_address"]), "expires_at": iso(expires)}


async def redeem_login_link(auth: Auth, caller: Caller, token: str) -> dict[str, Any]:
    at = now()
    async with auth.pool.acquire() as conn, conn.transaction():
        link = await store.take_link(conn, auth.token_hash(token))
        if link is None:
            raise Gone("This login link is unknown.", code="invalid_token")
        if link["used_at"] is not None:
            raise Gone("This login link was already used.", code="token_used")
        if link["expires_at"] <= at:
            raise Gone("This login link expired; ask for a new one.", code="token_expired")
        account = await store.get_account(conn, link["account_id"], lock=True)  # account before login, as everywhere
        login = await store.get_login(conn, link["login_id"], lock=True)
        if login is None or account is None or not caller.sees(login["company_id"]):
            raise Gone("This login link is unknown.", code="invalid_token")
        if login["status"] != "pending":
            raise Conflict(f"This login is already {login['status']}.", code="login_completed")
        _check_not_locked(account)  # a lock from wrong codes holds for every way in
        await store.mark_link_used(conn, link["token_hash"], at)
        await store.update_login(conn, login["login_id"], status="succeeded", method="backup_email", completed_at=at)
        await add_events(conn, SCHEMA, [_login_succeeded(caller, login, "backup_email")])
    return _success(auth, login, "backup_email")


async def rotate_secrets(pool: asyncpg.Pool, keyring: Keyring) -> int:
    """Re-seal every stored secret under the newest key; returns how many changed.

    Runs beside live traffic: each value is replaced in its own statement and only if it is
    still the value that was read, so a secret disabled or re-enrolled meanwhile is left as
    the user left it (and no lock is held on all accounts at once).
    """
    changed = 0
    async with pool.acquire() as conn:
        for row in await store.sealed_secrets(conn):
            if not keyring.needs_rotation(row["sealed"]):
                continue
            aad = (f"signing:{row['account_id']}" if row["kind"] == "signing" else f"totp:{row['account_id']}").encode()
            plain = keyring.open(row["sealed"], aad=aad)
            if await store.reseal(conn, row["kind"], row["account_id"], row["sealed"], keyring.seal(plain, aad=aad)):
                changed += 1
    return changed
