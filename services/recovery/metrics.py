"""Prometheus counters of the recovery service, counted from the events its use cases write."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from ..common.metrics import on_event

TICKETS_OPENED = Counter(
    "mfa_recovery_tickets_opened_total",
    "Recovery tickets opened, by channel (email, form) and status (open, incomplete)",
    ["channel", "status"],
)
TICKETS_DECIDED = Counter("mfa_recovery_tickets_decided_total", "Recovery tickets decided, by decision", ["decision"])


@on_event("RecoveryTicketOpened")
def _opened(data: dict[str, Any]) -> None:
    TICKETS_OPENED.labels(data["channel"], data["status"]).inc()


@on_event("RecoveryTicketApproved")
def _approved(_data: dict[str, Any]) -> None:
    TICKETS_DECIDED.labels("approved").inc()


@on_event("RecoveryTicketRejected")
def _rejected(_data: dict[str, Any]) -> None:
    TICKETS_DECIDED.labels("rejected").inc()
