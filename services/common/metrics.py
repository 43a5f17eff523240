"""Prometheus metrics shared by every service (labelled by service)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter("mfa_http_requests_total", "HTTP requests", ["service", "method", "route", "status"])
HTTP_LATENCY = Histogram(
    "mfa_http_request_seconds",
    "HTTP request latency",
    ["service", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
EVENTS_PUBLISHED = Counter("mfa_events_published_total", "Events published from the outbox", ["service", "type"])
EVENTS_CONSUMED = Counter("mfa_events_consumed_total", "Events handled by consumers", ["queue", "type", "outcome"])
EVENTS_RETRIED = Counter("mfa_events_retried_total", "Events sent to a retry queue", ["queue", "type"])
EVENTS_PARKED = Counter("mfa_events_parked_total", "Events parked for a human", ["queue", "type", "reason"])
OUTBOX_BACKLOG = Gauge("mfa_outbox_backlog", "Events written but not yet published", ["service"])
