"""SQL of the audit log. Rows are only ever inserted; the database refuses updates and deletes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .domain import Entry, Filters

_COLUMNS = "seq, event_id, event_type, event_time, company_id, subject, recorded_at, envelope, prev_hash, hash"


def _entry(row: asyncpg.Record) -> Entry:
    return Entry(*row)


@dataclass(frozen=True)
class Head:
    """The locked chain head, plus what an appender needs to know at that moment."""

    seq: int
    hash: bytes
    recorded_at: datetime  # of the last appended batch
    now: datetime  # the database's clock
    logged: set[str]  # which of the asked ids are in the log already


async def lock_head(conn: asyncpg.Connection, event_ids: list[str]) -> Head:
    """Lock the chain head until the caller's transaction ends (serialises appenders), in one round trip.

    If the lock had to wait, `logged` and `now` may predate the appender that held it: the
    unique event id still refuses a duplicate (its batch is then replayed one event at a
    time), and the caller keeps `recorded_at` monotonic with the head's own.
    """
    row = await conn.fetchrow(
        "SELECT h.seq, h.hash, h.updated_at, clock_timestamp() AS now,"
        " ARRAY(SELECT e.event_id FROM audit.events e WHERE e.event_id = ANY($1::text[])) AS logged"
        " FROM audit.chain_head h WHERE h.id FOR UPDATE OF h",
        event_ids,
    )
    return Head(row["seq"], bytes(row["hash"]), row["updated_at"], row["now"], set(row["logged"]))


async def read_head(conn: asyncpg.Connection) -> tuple[int, bytes]:
    row = await conn.fetchrow("SELECT seq, hash FROM audit.chain_head WHERE id")
    return row["seq"], bytes(row["hash"])


async def append(conn: asyncpg.Connection, entries: list[Entry]) -> None:
    """Insert chained rows and move the head to the last one, in one statement (caller's transaction)."""
    last = entries[-1]
    await conn.execute(
        f"WITH rows AS (INSERT INTO audit.events ({_COLUMNS})"
        " SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],"
        " $6::text[], $7::timestamptz[], $8::text[], $9::bytea[], $10::bytea[]))"
        " UPDATE audit.chain_head SET seq = $11, hash = $12, updated_at = $13 WHERE id",
        [e.seq for e in entries],
        [e.event_id for e in entries],
        [e.type for e in entries],
        [e.time for e in entries],
        [e.company_id for e in entries],
        [e.subject for e in entries],
        [e.recorded_at for e in entries],
        [e.envelope for e in entries],
        [e.prev_hash for e in entries],
        [e.hash for e in entries],
        last.seq,
        last.hash,
        last.recorded_at,
    )


def _where(filters: Filters) -> tuple[str, list[Any]]:
    clauses = ["seq > $1"]
    args: list[Any] = [filters.after]

    def add(sql: str, value: Any) -> None:
        args.append(value)
        clauses.append(sql.replace("?", f"${len(args)}"))

    if filters.company_id is not None:
        add("company_id = ?", filters.company_id)
    if filters.types:
        add("event_type = ANY(?::text[])", list(filters.types))
    if filters.subject is not None:
        add("subject = ?", filters.subject)
    if filters.since is not None:
        add("event_time >= ?", filters.since)
    if filters.until is not None:
        add("event_time < ?", filters.until)
    return " AND ".join(clauses), args


async def page(conn: asyncpg.Connection, filters: Filters, limit: int) -> list[Entry]:
    """Up to `limit` rows after `filters.after`, in seq order."""
    where, args = _where(filters)
    args.append(limit)
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM audit.events WHERE {where} ORDER BY seq LIMIT ${len(args)}", *args)
    return [_entry(r) for r in rows]


async def stream(
    conn: asyncpg.Connection, filters: Filters, limit: int | None = None, chunk: int = 2000
) -> AsyncIterator[list[Entry]]:
    """Matching rows in seq order, `chunk` at a time, from a server-side cursor.

    The caller holds a transaction on `conn` for as long as it iterates.
    """
    where, args = _where(filters)
    sql = f"SELECT {_COLUMNS} FROM audit.events WHERE {where} ORDER BY seq"
    if limit is not None:
        args.append(limit)
        sql += f" LIMIT ${len(args)}"
    cursor = await conn.cursor(sql, *args)
    while True:
        rows = await cursor.fetch(chunk)
        if not rows:
            return
        yield [_entry(r) for r in rows]
