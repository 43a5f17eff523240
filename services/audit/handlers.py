"""Use cases of the audit log: append a batch of events to the chain, read pages, verify the chain.

Transactions: appending runs in the consumer's transaction (`append_events` takes its `conn`);
reading and verifying take the pool and open their own (a snapshot for the longer reads).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import asyncpg

from ..common.consumer import PermanentError
from ..common.crypto import Keyring
from ..common.events import data_version, sensitive_fields
from ..common.logs import get_logger
from . import store
from .domain import (
    AuditRuleError,
    Break,
    ChainVerifier,
    Entry,
    Filters,
    NewRow,
    link,
    prepare,
)

log = get_logger("audit")

REDACTION_PURPOSE = "audit-redaction"


def redaction_key(secret_keys: tuple[tuple[str, bytes], ...]) -> bytes:
    """The HMAC key of redacted values (derived from the oldest key, so it survives rotation)."""
    return Keyring(secret_keys).derive(REDACTION_PURPOSE)


def prepare_event(event: dict[str, Any], key: bytes) -> NewRow:
    """Redact and normalise one validated envelope; PermanentError when it can never be logged."""
    try:
        return prepare(event, sensitive_fields(event["type"], data_version(event)), key)
    except AuditRuleError as exc:
        raise PermanentError(f"cannot log event: {exc}") from exc


async def append_events(conn: asyncpg.Connection, events: list[dict[str, Any]], key: bytes) -> list[Entry]:
    """Append `events` to the chain, in order, inside the caller's transaction.

    Events already in the log are skipped, so a copy arriving through another queue adds nothing.
    """
    rows = [prepare_event(event, key) for event in events]
    head = await store.lock_head(conn, [r.event_id for r in rows])
    logged = head.logged
    fresh: list[NewRow] = []
    for row in rows:
        if row.event_id not in logged:
            logged.add(row.event_id)
            fresh.append(row)
    if not fresh:
        return []
    entries = link(fresh, head.seq, head.hash, max(head.now, head.recorded_at))
    await store.append(conn, entries)
    return entries


def batch_handler(key: bytes):
    """The consumer's batch handler: appends what it is given under `key`'s redaction."""

    async def handle(conn: asyncpg.Connection, events: list[dict[str, Any]]) -> None:
        await append_events(conn, events, key)

    return handle


async def list_page(pool: asyncpg.Pool, filters: Filters, limit: int) -> tuple[list[Entry], int | None]:
    """One page of rows and the cursor of the next page (None at the end)."""
    async with pool.acquire() as conn:
        entries = await store.page(conn, filters, limit + 1)
    if len(entries) > limit:
        entries = entries[:limit]
        return entries, entries[-1].seq
    return entries, None


async def export(
    pool: asyncpg.Pool,
    filters: Filters,
    limit: int | None,
    write: Callable[[list[Entry]], Awaitable[None]],
) -> int:
    """Hand every matching row to `write`, chunk by chunk, from one consistent snapshot.

    Returns how many rows were written; the snapshot is a read-only transaction of its own.
    """
    count = 0
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        async with aclosing(store.stream(conn, filters, limit)) as chunks:
            async for chunk in chunks:
                await write(chunk)
                count += len(chunk)
    return count


@dataclass(frozen=True)
class Verification:
    """The result of recomputing the chain."""

    ok: bool
    rows: int
    head_seq: int
    head_hash: bytes
    broken: Break | None


async def verify(pool: asyncpg.Pool) -> Verification:
    """Recompute every hash from row 1, streaming, and name the first broken row.

    Runs in one repeatable-read snapshot of its own, so appends happening meanwhile neither
    break nor extend what is checked.
    """
    verifier = ChainVerifier()
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        head_seq, head_hash = await store.read_head(conn)
        async with aclosing(store.stream(conn, Filters(), chunk=5000)) as chunks:
            async for chunk in chunks:
                for entry in chunk:
                    if verifier.feed(entry) is not None:
                        break
                if verifier.broken is not None:
                    break
        broken = verifier.finish(head_seq, head_hash)
    if broken is not None:
        log.warning("audit_chain_broken", seq=broken.seq, reason=broken.reason)
    return Verification(broken is None, verifier.rows, head_seq, head_hash, broken)
