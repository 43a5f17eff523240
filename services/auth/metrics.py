"""Prometheus counters of the auth service, counted from the events its use cases write.

An event is counted when it is written with its state change, so a login is counted once
whichever way it came in (HTTP, a hosted page, an upstream `LoginAttempted`).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from ..common.metrics import on_event

LOGINS = Counter("mfa_logins_total", "Second-step decisions issued (LoginChallengeIssued), by decision", ["decision"])
VERIFICATIONS = Counter(
    "mfa_verifications_total",
    "Second steps checked, by method (totp, backup_code, backup_email, enrollment) and result"
    " (success, or LoginFailed's reason: wrong_code, replayed_code, too_many_attempts)",
    ["method", "result"],
)
LOCKOUTS = Counter("mfa_lockouts_total", "Accounts locked after too many wrong codes (MfaLocked)")
LOGIN_LINKS = Counter("mfa_login_links_total", "Backup-email login links, by outcome (sent, redeemed)", ["outcome"])


@on_event("LoginChallengeIssued")
def _decision(data: dict[str, Any]) -> None:
    LOGINS.labels(data["decision"]).inc()


@on_event("LoginSucceeded")
def _succeeded(data: dict[str, Any]) -> None:
    if data["method"] == "none":  # an `allow` decision: nothing was verified
        return
    VERIFICATIONS.labels(data["method"], "success").inc()
    if data["method"] == "backup_email":
        LOGIN_LINKS.labels("redeemed").inc()


@on_event("LoginFailed")
def _failed(data: dict[str, Any]) -> None:
    VERIFICATIONS.labels(data["method"], data["reason"]).inc()


@on_event("MfaLocked")
def _locked(_data: dict[str, Any]) -> None:
    LOCKOUTS.inc()


@on_event("BackupEmailRequested")
def _link_sent(_data: dict[str, Any]) -> None:
    LOGIN_LINKS.labels("sent").inc()
