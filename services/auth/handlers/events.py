"""The events auth publishes: one builder per type, so each payload is shaped in one place."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from ...common.events import iso, new_event
from .. import domain, store
from .context import SOURCE, Caller


class LoginRef(Protocol):
    """What a login event needs of a login row (a `store.Login` or a `store.VerifyView`)."""

    login_id: str
    account_id: str
    company_id: str


def event(caller: Caller, event_type: str, data: dict[str, Any], *, subject: str, company_id: str) -> dict[str, Any]:
    """An envelope from auth, carrying the caller's correlation id and actor."""
    return new_event(
        event_type,
        data,
        source=SOURCE,
        subject=subject,
        company_id=company_id,
        correlation_id=caller.correlation_id,
        actor=caller.actor,
    )


def _about(caller: Caller, event_type: str, account: store.Account, data: dict[str, Any]) -> dict[str, Any]:
    """An event about `account`, with the person's name, address, locale and company name for the notifier."""
    person = {"email": account.email, "first_name": account.first_name, "company_name": account.company_name}
    if account.locale:
        person["locale"] = account.locale
    if account.time_zone:
        person["time_zone"] = account.time_zone
    return event(
        caller, event_type,
        {"account_id": account.account_id, "company_id": account.company_id, **person, **data},
        subject=account.account_id, company_id=account.company_id,
    )


# ---- directory ---------------------------------------------------------------------------

def upserted(caller: Caller, event_type: str, data: dict[str, Any], subject: str) -> dict[str, Any]:
    """CompanyUpserted or AccountUpserted: an HTTP change re-announced for the other services."""
    return event(caller, event_type, data, subject=subject, company_id=data["company_id"])


def policy_changed(caller: Caller, scope: str, data: dict[str, Any], before: bool | None, is_new: bool) -> list[dict]:
    """MfaPolicyChanged when `mfa_required` changed (or a new row starts out required)."""
    if before == data["mfa_required"] or (is_new and not data["mfa_required"]):
        return []
    subject = data["company_id"] if scope == "company" else data["account_id"]
    return [event(
        caller, "MfaPolicyChanged",
        {"scope": scope, "company_id": data["company_id"],
         "account_id": data["account_id"] if scope == "account" else None,
         "mfa_required": data["mfa_required"], "previous": before},
        subject=subject, company_id=data["company_id"],
    )]


# ---- MFA state ---------------------------------------------------------------------------

def enrolled(caller: Caller, account: store.Account, at: datetime, login_id: str | None) -> dict[str, Any]:
    return _about(caller, "MfaEnrolled", account,
                  {"method": "totp", "enrolled_at": iso(at), "login_id": login_id})


def codes_regenerated(caller: Caller, account: store.Account, count: int) -> dict[str, Any]:
    return _about(caller, "BackupCodesRegenerated", account, {"count": count})


def disabled(caller: Caller, account: store.Account, reason: str, at: datetime, **extra: Any) -> dict[str, Any]:
    return _about(caller, "MfaDisabled", account, {
        "backup_email": account.backup_email,
        "reason": reason,
        "forced": account.forced,
        "disabled_at": iso(at),
        **extra,
    })


def locked(caller: Caller, account: store.Account, outcome: domain.FailureOutcome) -> dict[str, Any]:
    return _about(caller, "MfaLocked", account, {
        "locked_until": iso(outcome.locked_until), "consecutive_failures": outcome.consecutive_failures,
    })


def backup_email_changed(
    caller: Caller, account: store.Account, address: str, sealed_token: str, expires: datetime
) -> dict[str, Any]:
    return _about(caller, "BackupEmailChanged", account,
                  {"backup_email": address, "confirm_token": sealed_token, "expires_at": iso(expires)})


def backup_email_confirmed(caller: Caller, row: store.BackupEmailToken) -> dict[str, Any]:
    return event(
        caller, "BackupEmailConfirmed",
        {"account_id": row.account_id, "company_id": row.company_id, "backup_email": row.address},
        subject=row.account_id, company_id=row.company_id,
    )


# ---- logins ------------------------------------------------------------------------------

def challenge_issued(
    caller: Caller, login: LoginRef, decision: str, methods: list[str], expires_at: datetime,
    locked_until: datetime | None = None,
) -> dict[str, Any]:
    return event(
        caller, "LoginChallengeIssued",
        {"login_id": login.login_id, "account_id": login.account_id, "company_id": login.company_id,
         "decision": decision, "methods": methods, "expires_at": iso(expires_at),
         "locked_until": iso(locked_until)},
        subject=login.account_id, company_id=login.company_id,
    )


def login_succeeded(caller: Caller, login: LoginRef, method: str) -> dict[str, Any]:
    return event(
        caller, "LoginSucceeded",
        {"login_id": login.login_id, "account_id": login.account_id, "company_id": login.company_id,
         "method": method},
        subject=login.account_id, company_id=login.company_id,
    )


def login_failed(
    caller: Caller, login: LoginRef, method: str, reason: str, attempts_left: int, consecutive_failures: int
) -> dict[str, Any]:
    return event(
        caller, "LoginFailed",
        {"login_id": login.login_id, "account_id": login.account_id, "company_id": login.company_id,
         "method": method, "reason": reason, "attempts_left": attempts_left,
         "consecutive_failures": consecutive_failures},
        subject=login.account_id, company_id=login.company_id,
    )


def link_requested(
    caller: Caller, login: LoginRef, account: store.Account, sealed_token: str, expires: datetime
) -> dict[str, Any]:
    data = {"login_id": login.login_id, "account_id": account.account_id, "company_id": account.company_id,
            "backup_email": account.backup_address, "first_name": account.first_name,
            "company_name": account.company_name, "link_token": sealed_token, "expires_at": iso(expires)}
    if account.locale:
        data["locale"] = account.locale
    if account.time_zone:
        data["time_zone"] = account.time_zone
    return event(caller, "BackupEmailRequested", data, subject=account.account_id, company_id=account.company_id)
