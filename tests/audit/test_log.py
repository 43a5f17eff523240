"""The audit consumer against the real broker and database: every event once, redacted, chained."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid

import asyncpg
import pytest

from services.audit.handlers import redaction_key, verify
from services.common.events import known_types, new_event

from ..conftest import parked_messages
from .conftest import NOW, event_of, publish, rows_for, sample_data, wait_landed


def _ids():
    u = uuid.uuid4().hex[:12]
    return f"co-{u}", f"acct-{u}"


async def test_every_event_type_lands_once_with_secrets_redacted(settings, runtime, audit_client):
    company, account = _ids()
    tokens = {"BackupEmailRequested": "link-" + uuid.uuid4().hex, "BackupEmailChanged": "confirm-" + uuid.uuid4().hex}
    samples = sample_data(settings, company, account, tokens)
    assert set(samples) == known_types(), "add a sample for each new event schema"
    subject_of = {t: (d.get("ticket_id") or d.get("account_id") or company) for t, d in samples.items()}
    events = [event_of(t, d, company=company, subject=subject_of[t]) for t, d in sorted(samples.items())]
    # Every message twice: a redelivery (relay crash after publish, broker redelivery) adds nothing.
    await publish(runtime, *events)
    await publish(runtime, *events)
    rows = await wait_landed(runtime.pool, [e["id"] for e in events])
    # Published after the copies: once it is in, every copy before it has been consumed.
    sentinel = event_of("TestPing", {"n": 2, "account_id": account}, company=company, subject=account)
    await publish(runtime, *events[:3], sentinel)
    await wait_landed(runtime.pool, [sentinel["id"]])
    rows = await rows_for(runtime.pool, [e["id"] for e in events])

    assert sorted(r["event_type"] for r in rows) == sorted(samples)  # each type exactly once
    assert len({r["seq"] for r in rows}) == len(rows)
    assert {r["company_id"] for r in rows} == {company}
    key = redaction_key(settings.secret_keys)
    by_type = {r["event_type"]: r for r in rows}
    for event in events:
        stored = json.loads(by_type[event["type"]]["envelope"])
        sensitive = {"BackupEmailRequested": "link_token", "BackupEmailChanged": "confirm_token"}.get(event["type"])
        if sensitive:
            value = event["data"][sensitive]
            assert stored["data"][sensitive] == {
                "redacted": True,
                "hmac_sha256": hmac.new(key, value.encode(), hashlib.sha256).hexdigest(),
            }
            text = by_type[event["type"]]["envelope"]
            assert value not in text and tokens[event["type"]] not in text
            stored["data"][sensitive] = value
        assert stored == json.loads(json.dumps(event))  # the rest is the envelope as published
    result = await verify(runtime.pool)
    assert result.ok, result.broken


async def test_the_database_refuses_to_change_the_log(runtime, audit_client):
    company, account = _ids()
    event = event_of("TestPing", {"n": 1, "account_id": account}, company=company, subject=account)
    await publish(runtime, event)
    await wait_landed(runtime.pool, [event["id"]])
    statements = [
        "UPDATE audit.events SET company_id = 'evil' WHERE event_id = $1",
        "DELETE FROM audit.events WHERE event_id = $1",
    ]
    for sql in statements:
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await runtime.pool.execute(sql, event["id"])
    async with runtime.pool.acquire() as conn:
        for sql in ("TRUNCATE audit.events", "DELETE FROM audit.chain_head", "UPDATE audit.chain_head SET seq = 0"):
            with pytest.raises(asyncpg.PostgresError):
                async with conn.transaction():
                    await conn.execute(sql)
    assert len(await rows_for(runtime.pool, [event["id"]])) == 1


async def test_an_unloggable_event_is_parked_alone_and_its_batch_still_lands(runtime, audit_client):
    company, account = _ids()
    good = [event_of("TestPing", {"n": n, "account_id": account}, company=company, subject=account) for n in range(20)]
    bad = new_event("TestPing", {"n": 99, "account_id": account}, source="/tests", subject=account, company_id=company)
    bad["time"] = "the day after tomorrow, at noon"  # fits the envelope schema, is no timestamp
    await publish(runtime, *good[:10], bad, *good[10:])
    rows = await wait_landed(runtime.pool, [e["id"] for e in good])
    assert [json.loads(r["envelope"])["data"]["n"] for r in rows] == list(range(20))  # arrival order
    [parked] = await parked_messages(runtime, runtime.queue("audit") + ".parked", 1, message_id=bad["id"])
    assert parked.headers["x-parked-reason"] == "rejected"
    assert "timestamp" in parked.headers["x-parked-detail"]
    assert await rows_for(runtime.pool, [bad["id"]]) == []


async def test_event_time_is_the_envelope_time(runtime, audit_client):
    company, account = _ids()
    event = event_of("TestPing", {"n": 1, "account_id": account}, company=company, subject=account)
    await publish(runtime, event)
    await wait_landed(runtime.pool, [event["id"]])
    stored = await runtime.pool.fetchval("SELECT event_time FROM audit.events WHERE event_id = $1", event["id"])
    assert stored == NOW
