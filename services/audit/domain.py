"""Pure rules of the audit log: redaction, canonical rows, the hash chain and its verification.

A log row is hashed as ``SHA-256(prev_hash || canonical(row))`` where ``row`` holds the fields
in :data:`HASHED_FIELDS` and ``canonical`` is JSON with sorted keys, no spaces and UTF-8 text.
The first row's ``prev_hash`` is :data:`GENESIS` (32 zero bytes). Anyone holding an export can
recompute every hash with a few lines of code; nothing here needs the database.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring as _encode_str
from typing import Any

from ..common import events

GENESIS = bytes(32)
HASHED_FIELDS = ("seq", "event_id", "type", "time", "company_id", "subject", "recorded_at", "envelope")


class AuditRuleError(ValueError):
    """An event cannot be recorded as it is (for instance its time is not a timestamp)."""


def canonical_text(obj: Any) -> str:
    """The one form that is hashed, as text: sorted keys, no spaces (how the redacted envelope is stored)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(obj: Any) -> bytes:
    """:func:`canonical_text` in UTF-8: the bytes that are hashed."""
    return canonical_text(obj).encode()


def format_time(value: datetime) -> str:
    """A timestamp in the fixed UTC form used in hashes and output: `2024-05-01T12:00:00.000000Z`."""
    if value.tzinfo is not UTC:  # asyncpg already hands out UTC: skip the conversion then
        value = value.astimezone(UTC)
    # %-formatting: always 4 year digits and 6 microsecond digits, and 4x faster than isoformat.
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031
        value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond
    )


class _TimeText:
    """format_time with a one-entry memory: the rows of one batch share their `recorded_at`."""

    __slots__ = ("_value", "_text")

    def __init__(self) -> None:
        self._value: datetime | None = None
        self._text = ""

    def __call__(self, value: datetime) -> str:
        if value is not self._value and value != self._value:
            self._value, self._text = value, format_time(value)
        return self._text


def _js(value: str | None) -> str:
    """A JSON string (or null) exactly as :func:`canonical_text` writes it, without its overhead."""
    return "null" if value is None else _encode_str(value)


def parse_time(value: str) -> datetime:
    """An ISO 8601 timestamp as an aware UTC datetime; a value without offset is taken as UTC."""
    try:
        return events.parse_time(value).astimezone(UTC)
    except (TypeError, ValueError) as exc:
        raise AuditRuleError(f"not an ISO 8601 timestamp: {str(value)[:60]!r}") from exc


def company_of(event: Mapping[str, Any]) -> str | None:
    """The tenant an event belongs to: the envelope's `companyid`, else `data.company_id`."""
    company = event.get("companyid")
    if isinstance(company, str) and company:
        return company
    data_company = (event.get("data") or {}).get("company_id")
    return data_company if isinstance(data_company, str) and data_company else None


def redact(event: Mapping[str, Any], sensitive: Iterable[str], key: bytes) -> dict[str, Any]:
    """A copy of `event` whose sensitive `data` fields are replaced by a keyed digest.

    The digest is an HMAC under a key derived from MFA_SECRET_KEYS, so equal values can be
    matched across rows while a short secret cannot be guessed back from the log.
    """
    data = event.get("data") or {}
    hits = [name for name in sensitive if name in data]
    if not hits:
        return dict(event)
    redacted = dict(data)
    for name in hits:
        value = data[name]
        raw = value.encode() if isinstance(value, str) else canonical(value)
        redacted[name] = {"redacted": True, "hmac_sha256": hmac.new(key, raw, hashlib.sha256).hexdigest()}
    return {**event, "data": redacted}


@dataclass(frozen=True, slots=True)
class Entry:
    """One row of the log as stored; `envelope` is the canonical JSON text of the redacted envelope."""

    seq: int
    event_id: str
    type: str
    time: datetime
    company_id: str | None
    subject: str | None
    recorded_at: datetime
    envelope: str
    prev_hash: bytes
    hash: bytes


def row_bytes(
    seq: int,
    event_id: str,
    event_type: str,
    time: datetime,
    company_id: str | None,
    subject: str | None,
    recorded_at: datetime,
    envelope: str,
) -> bytes:
    """``canonical(row)`` for the hashed fields, built around the stored envelope text.

    Equal to ``canonical({... "envelope": json.loads(envelope)})`` when `envelope` is itself
    canonical, without parsing it (keys written in sorted order; a unit test holds the two
    forms equal). This runs once per appended, verified and exported row, hence by hand.
    """
    return _row_bytes(seq, event_id, event_type, format_time(time), company_id, subject, format_time(recorded_at), envelope)


def _row_bytes(
    seq: int,
    event_id: str,
    event_type: str,
    time: str,
    company_id: str | None,
    subject: str | None,
    recorded_at: str,
    envelope: str,
) -> bytes:
    return (
        f'{{"company_id":{_js(company_id)},"envelope":{envelope},"event_id":{_js(event_id)},'
        f'"recorded_at":"{recorded_at}","seq":{int(seq)},"subject":{_js(subject)},'
        f'"time":"{time}","type":{_js(event_type)}}}'
    ).encode()


def chain_hash(prev_hash: bytes, content: bytes) -> bytes:
    """SHA-256 over the previous row's hash and this row's canonical bytes."""
    return hashlib.sha256(prev_hash + content).digest()


def entry_hash(entry: Entry, prev_hash: bytes, recorded: _TimeText | None = None) -> bytes:
    """What `entry.hash` must be when it follows a row whose hash is `prev_hash`."""
    recorded_at = recorded(entry.recorded_at) if recorded else format_time(entry.recorded_at)
    return chain_hash(
        prev_hash,
        _row_bytes(
            entry.seq,
            entry.event_id,
            entry.type,
            format_time(entry.time),
            entry.company_id,
            entry.subject,
            recorded_at,
            entry.envelope,
        ),
    )


def entry_json(entry: Entry) -> str:
    """One row as a JSON object (API item and NDJSON line), in canonical form.

    The envelope text is spliced in as stored, so the output is exactly what was hashed.
    """
    return (
        f'{{"company_id":{_js(entry.company_id)},"envelope":{entry.envelope},"event_id":{_js(entry.event_id)},'
        f'"hash":"{entry.hash.hex()}","prev_hash":"{entry.prev_hash.hex()}",'
        f'"recorded_at":"{format_time(entry.recorded_at)}","seq":{int(entry.seq)},"subject":{_js(entry.subject)},'
        f'"time":"{format_time(entry.time)}","type":{_js(entry.type)}}}'
    )


@dataclass(frozen=True)
class NewRow:
    """An event prepared for appending: everything except its place in the chain."""

    event_id: str
    type: str
    time: datetime
    company_id: str | None
    subject: str | None
    envelope: str


def prepare(event: Mapping[str, Any], sensitive: Iterable[str], key: bytes) -> NewRow:
    """Redact and normalise a validated envelope; raises AuditRuleError when it cannot be logged."""
    try:
        text = canonical_text(redact(event, sensitive, key))
        text.encode()  # a lone surrogate from a \\ud800 escape cannot be stored or hashed
    except (TypeError, ValueError) as exc:
        raise AuditRuleError(f"envelope cannot be encoded: {exc}") from exc
    subject = event.get("subject")
    row = NewRow(
        event_id=str(event["id"]),
        type=str(event["type"]),
        time=parse_time(event.get("time", "")),
        company_id=company_of(event),
        subject=subject if isinstance(subject, str) else None,
        envelope=text,
    )
    # PostgreSQL text cannot hold NUL; inside the envelope JSON escapes it, these columns cannot.
    if any("\x00" in v for v in (row.event_id, row.company_id or "", row.subject or "")):
        raise AuditRuleError("id, subject or company holds a NUL character")
    return row


def link(rows: list[NewRow], head_seq: int, head_hash: bytes, recorded_at: datetime) -> list[Entry]:
    """Give `rows` the next sequence numbers after the head and chain their hashes."""
    entries: list[Entry] = []
    seq, prev = head_seq, head_hash
    recorded = format_time(recorded_at)
    for row in rows:
        seq += 1
        digest = chain_hash(
            prev,
            _row_bytes(seq, row.event_id, row.type, format_time(row.time), row.company_id, row.subject, recorded, row.envelope),
        )
        entries.append(
            Entry(seq, row.event_id, row.type, row.time, row.company_id, row.subject, recorded_at, row.envelope, prev, digest)
        )
        prev = digest
    return entries


@dataclass(frozen=True)
class Break:
    """The first place where the chain does not hold."""

    seq: int
    reason: str  # missing_row | prev_hash_mismatch | hash_mismatch | head_mismatch
    detail: str
    event_id: str | None = None
    company_id: str | None = None


class ChainVerifier:
    """Recomputes the chain row by row (fed in seq order) and stops at the first break."""

    def __init__(self) -> None:
        self.rows = 0
        self.last_seq = 0
        self.last_hash = GENESIS
        self.broken: Break | None = None
        self._recorded = _TimeText()

    def feed(self, entry: Entry) -> Break | None:
        """Check one row; returns the break when this row is the first broken place."""
        if self.broken is not None:
            return self.broken
        expected = self.last_seq + 1
        if entry.seq != expected:
            self.broken = Break(
                expected,
                "missing_row",
                f"row {expected} is missing: the next row present is {entry.seq}",
            )
            return self.broken
        if entry.prev_hash != self.last_hash:
            self.broken = Break(
                entry.seq,
                "prev_hash_mismatch",
                f"row {entry.seq} does not point at the hash of row {self.last_seq}",
                entry.event_id,
                entry.company_id,
            )
            return self.broken
        digest = entry_hash(entry, self.last_hash, self._recorded)
        if digest != entry.hash:
            self.broken = Break(
                entry.seq,
                "hash_mismatch",
                f"row {entry.seq} was changed after it was written: its content does not match its hash",
                entry.event_id,
                entry.company_id,
            )
            return self.broken
        self.rows += 1
        self.last_seq = entry.seq
        self.last_hash = digest
        return None

    def finish(self, head_seq: int, head_hash: bytes) -> Break | None:
        """Compare the end of the chain with the recorded head (catches rows cut off the end)."""
        if self.broken is not None:
            return self.broken
        if head_seq > self.last_seq:
            self.broken = Break(
                self.last_seq + 1,
                "head_mismatch",
                f"the chain head records row {head_seq} but the log ends at row {self.last_seq}: "
                f"rows {self.last_seq + 1}..{head_seq} are missing",
            )
        elif head_seq < self.last_seq:
            self.broken = Break(
                head_seq + 1,
                "head_mismatch",
                f"the chain head records row {head_seq} but the log goes on to row {self.last_seq}",
            )
        elif head_hash != self.last_hash:
            self.broken = Break(
                self.last_seq,
                "head_mismatch",
                f"the chain head's hash differs from the hash of row {self.last_seq}",
            )
        return self.broken


@dataclass(frozen=True)
class Filters:
    """What an auditor asked for; `company_id` is already narrowed to the caller's company."""

    company_id: str | None = None
    types: tuple[str, ...] = ()
    subject: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    after: int = 0


MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
