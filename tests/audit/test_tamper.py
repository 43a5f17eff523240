"""Tampering with the log directly in the database is caught by verification, at the right row.

Runs on a database, exchange and queue of its own: a broken chain would fail every later
verification in the shared test database.
"""

from __future__ import annotations

import json
import os
import uuid

import aio_pika
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.audit.app import create_app
from services.audit.cli import verify_command
from services.common.apikeys import create_key
from services.common.runner import migration_sets
from services.common.runtime import Runtime
from services.registry import SERVICES

from ..conftest import isolated, private_database
from ..processes import MFA, run_to_end
from .conftest import event_of, publish, wait_landed


@pytest.fixture
async def own(settings):
    """A throwaway database, exchange and queue prefix with only the audit service on them."""
    u = uuid.uuid4().hex[:8]
    async with private_database(f"mfa_audit_tamper_{u}", migration_sets([SERVICES["audit"]])) as url:
        mine = isolated(settings, url, f"tamper.{u}")
        runtime = await Runtime.open(mine, pool_size=4)
        client = TestClient(TestServer(create_app(runtime)))
        await client.start_server()
        try:
            yield mine, runtime, client
        finally:
            await client.close()
            try:
                channel = await runtime.broker.channel()
                await channel.exchange_delete(mine.exchange)
                await channel.close()
            except aio_pika.exceptions.AMQPError:
                pass
            await runtime.close()


async def attacker(settings) -> asyncpg.Connection:
    """A superuser connection with triggers switched off, as someone with database access could."""
    conn = await asyncpg.connect(settings.database_url)
    await conn.execute("SET session_replication_role = replica")
    return conn


async def verify_http(client, key) -> dict:
    resp = await client.get("/v1/audit/verify", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200
    return await resp.json()


async def test_edits_and_deletions_are_named_by_verification(own, capsys):
    settings, runtime, client = own
    key = await create_key(runtime.pool, "auditor")
    events = [event_of("TestPing", {"n": n, "account_id": "acct"}, company="co", subject="acct") for n in range(6)]
    await publish(runtime, *events)
    await wait_landed(runtime.pool, [e["id"] for e in events])
    assert (await verify_http(client, key))["ok"] is True
    assert await verify_command(settings) == 0
    assert "audit chain verified: 6 rows" in capsys.readouterr().out

    conn = await attacker(settings)
    try:
        # 1. Edit row 3's content.
        original = await conn.fetchrow("SELECT * FROM audit.events WHERE seq = 3")
        envelope = json.loads(original["envelope"])
        envelope["data"]["n"] = 42
        await conn.execute("UPDATE audit.events SET envelope = $1 WHERE seq = 3",
                           json.dumps(envelope, sort_keys=True, separators=(",", ":")))
        body = await verify_http(client, key)
        assert body["ok"] is False
        assert body["first_broken"]["seq"] == 3 and body["first_broken"]["reason"] == "hash_mismatch"
        assert body["first_broken"]["event_id"] == events[2]["id"]
        assert await verify_command(settings) == 1
        assert f"BROKEN at row 3 (event {events[2]['id']})" in capsys.readouterr().out

        # Putting the row back as it was makes the chain whole again: the hash is deterministic.
        await conn.execute("UPDATE audit.events SET envelope = $1 WHERE seq = 3", original["envelope"])
        assert (await verify_http(client, key))["ok"] is True

        # 2. Edit a column outside the envelope (move an event to another company).
        await conn.execute("UPDATE audit.events SET company_id = 'other' WHERE seq = 2")
        assert (await verify_http(client, key))["first_broken"]["seq"] == 2
        await conn.execute("UPDATE audit.events SET company_id = 'co' WHERE seq = 2")

        # 3. Delete row 5: a gap, named by the real `mfa audit verify` command.
        row5 = await conn.fetchrow("SELECT * FROM audit.events WHERE seq = 5")
        await conn.execute("DELETE FROM audit.events WHERE seq = 5")
        body = await verify_http(client, key)
        assert body["first_broken"]["seq"] == 5 and body["first_broken"]["reason"] == "missing_row"
        env = {**os.environ, "MFA_DATABASE_URL": settings.database_url, "MFA_LOG_LEVEL": "WARNING"}
        code, out, err = await run_to_end(MFA, "audit", "verify", env=env)
        assert code == 1, err
        assert "BROKEN at row 5" in out
        await conn.execute(
            "INSERT INTO audit.events SELECT * FROM unnest($1::audit.events[])", [tuple(row5.values())]
        )
        assert (await verify_http(client, key))["ok"] is True
    finally:
        await conn.close()


async def test_cutting_off_the_tail_is_caught_by_the_head(own):
    settings, runtime, client = own
    key = await create_key(runtime.pool, "auditor")
    events = [event_of("TestPing", {"n": n, "account_id": "acct"}, company="co", subject="acct") for n in range(4)]
    await publish(runtime, *events)
    await wait_landed(runtime.pool, [e["id"] for e in events])
    conn = await attacker(settings)
    try:
        await conn.execute("DELETE FROM audit.events WHERE seq >= 3")
    finally:
        await conn.close()
    body = await verify_http(client, key)
    assert body["ok"] is False
    assert body["first_broken"]["seq"] == 3 and body["first_broken"]["reason"] == "head_mismatch"
    assert await verify_command(settings) == 1
