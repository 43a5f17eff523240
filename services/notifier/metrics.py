"""Prometheus metrics of the notifier (exported on /metrics with the shared ones)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

MAILS = Counter(
    "mfa_mails_total",
    "Mails by template and outcome: sent, failed (permanent), deferred (retried later), skipped (already done)",
    ["kind", "outcome"],
)
SEND_SECONDS = Histogram(
    "mfa_mail_send_seconds",
    "Time to hand one mail to the SMTP server",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
