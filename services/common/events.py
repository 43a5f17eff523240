"""CloudEvents 1.0 structured envelopes and the JSON Schemas of each event type's `data`.

Schemas live in `schemas/events/<Type>.v<N>.json`, are compiled once per process and are
checked on publish (`new_event`) and on consume (`parse_event`). A schema may mark a
property `"x-sensitive": true`: the audit log keeps only a digest of such values.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from . import strictjson

# services/schemas links to the top-level schemas/ folder in a checkout and is package data in a wheel.
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas" / "events"
SPECVERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"
AUTH_TYPES = ("user", "service_account", "api_key", "system")


class EventError(ValueError):
    """A message is not a valid event: bad JSON, a bad envelope or data failing its schema."""


@dataclass(frozen=True)
class Actor:
    """Who caused an event (CloudEvents authcontext)."""

    authtype: str = "system"
    authid: str | None = None

    def __post_init__(self) -> None:
        if self.authtype not in AUTH_TYPES:
            raise ValueError(f"authtype must be one of {AUTH_TYPES}")


SYSTEM = Actor("system", None)

_ENVELOPE_SCHEMA = {
    "type": "object",
    "required": ["specversion", "id", "source", "type", "time", "data", "dataschema"],
    "properties": {
        "specversion": {"const": SPECVERSION},
        "id": {"type": "string", "minLength": 1, "maxLength": 200},
        "source": {"type": "string", "minLength": 1},
        "type": {"type": "string", "pattern": "^[A-Z][A-Za-z]+$"},
        "time": {"type": "string", "minLength": 20},
        "subject": {"type": ["string", "null"]},
        "companyid": {"type": ["string", "null"]},
        "correlationid": {"type": ["string", "null"]},
        "dataschema": {"type": "string"},
        "datacontenttype": {"const": "application/json"},
        "authtype": {"enum": list(AUTH_TYPES)},
        "authid": {"type": ["string", "null"]},
        "data": {"type": "object"},
    },
}
_validate_envelope = fastjsonschema.compile(_ENVELOPE_SCHEMA)


def schema_uri(event_type: str, version: int) -> str:
    return f"urn:mfa:schema:events:{event_type}:v{version}"


@cache
def _schemas() -> dict[tuple[str, int], dict]:
    found = {}
    for path in SCHEMA_DIR.glob("*.v*.json"):
        name, _, ver = path.stem.rpartition(".v")
        found[(name, int(ver))] = json.loads(path.read_text())
    return found


@cache
def _validator(event_type: str, version: int):
    schema = _schemas().get((event_type, version))
    if schema is None:
        raise EventError(f"no schema for {event_type} v{version}")
    return fastjsonschema.compile(schema)


def known_types() -> set[str]:
    """Every event type that has a schema."""
    return {name for name, _ in _schemas()}


def latest_version(event_type: str) -> int:
    versions = [v for (name, v) in _schemas() if name == event_type]
    if not versions:
        raise EventError(f"unknown event type {event_type!r}")
    return max(versions)


@cache
def sensitive_fields(event_type: str, version: int) -> frozenset[str]:
    """Top-level `data` properties marked `x-sensitive` in the type's schema (schemas load once, so cached)."""
    schema = _schemas().get((event_type, version), {})
    return frozenset(k for k, v in schema.get("properties", {}).items() if isinstance(v, dict) and v.get("x-sensitive"))


def data_version(event: dict[str, Any]) -> int:
    """The version of the `data` schema that a checked envelope's `dataschema` names."""
    prefix = schema_uri(event["type"], 0)[:-1]
    if not event["dataschema"].startswith(prefix):
        raise EventError(f"dataschema {event['dataschema']!r} does not name {event['type']}")
    try:
        return int(event["dataschema"][len(prefix):])
    except ValueError as exc:
        raise EventError("dataschema has no version") from exc


def validate_data(event_type: str, version: int, data: dict) -> None:
    try:
        _validator(event_type, version)(data)
    except fastjsonschema.JsonSchemaException as exc:
        raise EventError(f"{event_type} v{version} data: {exc.message}") from exc


def iso(value: datetime | None) -> str | None:
    """A datetime as the events' ISO 8601 UTC text (`2030-01-02T03:04:05Z`); None stays None."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def parse_time(value: str) -> datetime:
    """An ISO 8601 timestamp as an aware datetime, a value without offset read as UTC; ValueError if none.

    Also ValueError when the instant lies outside years 1 to 9999 in UTC (`9999-12-31T23:59:59-23:59`,
    year 1 at `+14:00`): Python holds such a value, but neither its UTC conversion nor PostgreSQL does.
    """
    parsed = datetime.fromisoformat(value)
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    try:
        parsed.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"{value[:40]} is out of range in UTC") from exc
    return parsed


def new_event(
    event_type: str,
    data: dict[str, Any],
    *,
    source: str,
    subject: str | None = None,
    company_id: str | None = None,
    correlation_id: str | None = None,
    actor: Actor = SYSTEM,
    version: int | None = None,
    event_id: str | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """Build a schema-checked envelope; raises EventError when `data` does not fit."""
    version = version or latest_version(event_type)
    validate_data(event_type, version, data)
    return {
        "specversion": SPECVERSION,
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": event_type,
        "time": (time or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
        "subject": subject,
        "companyid": company_id,
        "correlationid": correlation_id,
        "dataschema": schema_uri(event_type, version),
        "datacontenttype": "application/json",
        "authtype": actor.authtype,
        "authid": actor.authid,
        "data": data,
    }


def parse_event(body: bytes) -> dict[str, Any]:
    """Decode and check a message body; raises EventError with a reason.

    A body no handler could store (U+0000, a lone surrogate, NaN, nesting deep enough to
    exhaust the stack) is an EventError too, so the consumer parks it at once.
    """
    try:
        event = strictjson.loads(body)
    except ValueError as exc:  # UnicodeDecodeError and strictjson's refusals included
        raise EventError(f"undecodable body: {exc}") from exc
    if not isinstance(event, dict):
        raise EventError("envelope is not a JSON object")
    try:
        _validate_envelope(event)
    except fastjsonschema.JsonSchemaException as exc:
        raise EventError(f"envelope: {exc.message}") from exc
    validate_data(event["type"], data_version(event), event["data"])
    return event


def encode(event: dict[str, Any]) -> bytes:
    """The message body of an envelope: compact JSON, sorted keys, UTF-8 (orjson: a few microseconds)."""
    # Datetimes are no JSON value here as in json.dumps: orjson passes them on to a default there is not.
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME)
