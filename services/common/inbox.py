"""The inbox beside the outbox: the ids of the events a consumer has handled, `<schema>.processed_events`.

Claiming an id happens in the handler's transaction, so an event's effect and its claim commit
together and a redelivered copy finds its id taken.
"""

from __future__ import annotations

import asyncpg


async def claim(conn: asyncpg.Connection, schema: str, consumer: str, event: dict) -> bool:
    """Record `event` as handled by `consumer`; False when it was handled before."""
    return bool(await conn.fetchval(
        f"INSERT INTO {schema}.processed_events (consumer, event_id, event_type)"
        " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING true",
        consumer,
        event["id"],
        event["type"],
    ))


async def claim_many(conn: asyncpg.Connection, schema: str, consumer: str, events: list[dict]) -> set[str]:
    """Record a batch of events in one statement; the ids that were new."""
    rows = await conn.fetch(
        f"INSERT INTO {schema}.processed_events (consumer, event_id, event_type)"
        " SELECT $1, u.id, u.type FROM unnest($2::text[], $3::text[]) AS u(id, type)"
        " ON CONFLICT DO NOTHING RETURNING event_id",
        consumer,
        [e["id"] for e in events],
        [e["type"] for e in events],
    )
    return {r["event_id"] for r in rows}
