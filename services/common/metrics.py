"""Prometheus metrics shared by every service (labelled by service)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

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
# Several processes (`mfa start`) report the same outbox: the value read last is the one shown.
OUTBOX_BACKLOG = Gauge("mfa_outbox_backlog", "Events written but not yet published", ["service"],
                       multiprocess_mode="mostrecent")


def exposition() -> bytes:
    """/metrics in Prometheus' text format: this process's metrics, or with PROMETHEUS_MULTIPROC_DIR
    (set by `mfa start` for its children) the sum over every process of the set-up, so a scrape
    through the auth port counts every auth process's requests, whichever one answers it.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()

# What a service's use cases did, counted from the events they write: every entry point (API,
# hosted pages, consumed events) goes through the outbox, so one place counts them all.
_EVENT_OBSERVERS: dict[str, list[Callable[[dict[str, Any]], None]]] = {}


def on_event(*event_types: str) -> Callable[[Callable[[dict[str, Any]], None]], Callable[[dict[str, Any]], None]]:
    """Decorator: call the function with the `data` of every event of these types a service writes.

    Register at import of a service's metrics module; a function registered twice runs once.
    """

    def register(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        for event_type in event_types:
            observers = _EVENT_OBSERVERS.setdefault(event_type, [])
            if fn not in observers:
                observers.append(fn)
        return fn

    return register


def observe_written(events: list[dict[str, Any]]) -> None:
    """Count events written to an outbox (in the transaction that commits them)."""
    for event in events:
        for observer in _EVENT_OBSERVERS.get(event["type"], ()):
            observer(event["data"])
