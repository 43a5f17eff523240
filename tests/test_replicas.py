"""Two replicas of every worker and two relays, as real processes on one database and broker.

Each worker's queue has four partitions; the replicas share them out (two each) and one
account's events stay on one partition, so they are handled once each and in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import json
import uuid
from collections import defaultdict
from pathlib import Path

import aio_pika
import aiohttp
import asyncpg

from services.common.apikeys import create_key
from services.common.brokeradmin import teardown
from services.common.db import migrate
from services.common.lease import lock_class
from services.common.runner import migration_sets
from services.registry import SERVICES

from . import processes
from .conftest import _db_url, drop_database, free_port, wait_for
from .processes import env_for, url

WORKERS = ("auth", "notifier", "recovery", "audit")
PARTITIONS = 4
ACCOUNTS = 20
UPDATES = 4  # per account, after its creation


async def _consumed(http: aiohttp.ClientSession, port: int, outcome: str = "handled") -> float:
    """The events this process's consumers handled (or found to be duplicates), from its /metrics."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("mfa_events_consumed_total{") and f'outcome="{outcome}"' in line)


async def test_two_replicas_of_every_worker_handle_each_event_once_and_in_order(settings, runtime, tmp_path: Path):
    u = uuid.uuid4().hex[:8]
    mine = dataclasses.replace(settings, database_url=_db_url(f"mfa_replicas_{u}"),
                               exchange=f"{settings.exchange}.replicas.{u}",
                               queue_prefix=f"{settings.queue_prefix}replicas.{u}", queue_partitions=PARTITIONS)
    await migrate(mine.database_url, migration_sets(list(SERVICES.values())))
    mail_dir = tmp_path / "mail"
    base_env = env_for(mine, MFA_EXCHANGE=mine.exchange, MFA_QUEUE_PREFIX=mine.queue_prefix,
                       MFA_QUEUE_PARTITIONS=str(PARTITIONS), MFA_RELAY="separate", MFA_MAIL_DIR=str(mail_dir),
                       MFA_DATABASE_URL=mine.database_url)
    procs: list[asyncio.subprocess.Process] = []
    ports: dict[str, list[int]] = defaultdict(list)
    # Every published event, as the relays sent them (a tap of the suite's guest user).
    channel = await runtime.broker.channel()
    await channel.declare_exchange(mine.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    tap = await channel.declare_queue(mine.queue(f"tap-{u}"), exclusive=True)
    await tap.bind(mine.exchange, "#")
    published: list[dict] = []

    async def on_message(message):
        published.append(json.loads(message.body))

    await tap.consume(on_message, no_ack=True)  # no ack to race the channel's close (see tests/conftest.py tap)
    db = await asyncpg.connect(mine.database_url)
    try:
        for worker in WORKERS:
            for _ in range(2):
                port = free_port()
                ports[worker].append(port)
                env = {**base_env, f"MFA_{worker.upper()}_PORT": str(port), "MFA_INBOUND_SMTP_PORT": str(free_port())}
                procs.append(await processes.start("run", worker, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=None))
        await processes.wait_ready({f"{name} on {port}": url(port) for name, of in ports.items() for port in of},
                                   timeout=60)
        async with aiohttp.ClientSession() as http:

            async def shared_out() -> bool:
                """Every worker's four partitions held, two by each of its two replicas."""
                for worker in WORKERS:
                    rows = await db.fetch(
                        "SELECT pid, count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted"
                        " AND classid = $1::int::oid GROUP BY pid", lock_class("partition", mine.queue(worker)))
                    if sorted(r["n"] for r in rows) != [2, 2]:
                        return False
                return True

            await wait_for(shared_out, timeout=30, message="the partitions shared out between the replicas")

            key = await create_key(db, "service", label="replicas")
            company = f"co-{u}"
            accounts = [f"acct-{u}-{i}" for i in range(ACCOUNTS)]
            headers = {"Authorization": f"Bearer {key}"}

            async def call(method: str, path: str, body: dict, replica: int) -> None:
                url = f"http://127.0.0.1:{ports['auth'][replica % 2]}{path}"
                async with http.request(method, url, json=body, headers=headers) as resp:
                    assert resp.status < 300, (resp.status, await resp.text())

            await call("PUT", f"/v1/companies/{company}", {"name": "Replica Co", "mfa_required": False}, 0)

            async def one_account(i: int, account: str) -> None:
                # Each change answered before the next is made, on alternating auth replicas.
                for version in range(UPDATES + 1):
                    await call("PUT", f"/v1/accounts/{account}", {
                        "company_id": company, "email": f"{account}@example.com", "first_name": f"v{version}",
                        "last_name": "R", "role": "employee", "mfa_required": False}, i + version)
                await call("PUT", f"/v1/accounts/{account}/backup-email", {"email": f"{account}@backup.example"}, i)

            await asyncio.gather(*(one_account(i, a) for i, a in enumerate(accounts)))
            expected = 1 + ACCOUNTS * (UPDATES + 1) + ACCOUNTS  # company, account versions, backup emails
            # The relays start only now, so every account's events leave in one burst, back to back:
            # competing consumers would interleave them.
            for _ in range(2):
                port = free_port()
                ports["relay"].append(port)
                procs.append(await processes.start("relay", "all", env={**base_env, "MFA_RELAY_PORT": str(port)},
                                                   stdout=asyncio.subprocess.DEVNULL, stderr=None))
            # The first relay may publish the whole burst before the second one has started; a SIGTERM
            # that came while it was still starting (before its signal handlers) would kill it (-15).
            await processes.wait_ready({f"relay on {port}": url(port) for port in ports["relay"]}, timeout=60)

            await wait_for(lambda: len(published) >= expected, timeout=60, message=f"{expected} events published")
            await wait_for(lambda: db.fetchval("SELECT count(*) >= $1 FROM audit.events", expected), timeout=60,
                           message="every event in the audit log")
            # The backup emails are the notifier's only events here; an event is recorded once its mails went out.
            await wait_for(lambda: db.fetchval("SELECT count(*) >= $1 FROM notifier.processed_events", ACCOUNTS),
                           timeout=60, message="the mails of every backup email")
            await wait_for(
                lambda: db.fetchval("SELECT count(*) = $1 FROM recovery.accounts WHERE first_name = $2",
                                    ACCOUNTS, f"v{UPDATES}"), timeout=60, message="recovery's directory up to date")
            consumed = {name: [await _consumed(http, p) for p in ports[name]] for name in WORKERS}
            duplicates = [await _consumed(http, p, "duplicate") for name in WORKERS for p in ports[name]]
    finally:
        await asyncio.gather(*(processes.stop(proc) for proc in procs))
        codes = [proc.returncode for proc in procs]
        await channel.close()
    try:
        assert codes == [0] * len(procs)
        ids = [e["id"] for e in published]
        assert len(ids) == expected == len(set(ids))
        rows = await db.fetch("SELECT event_id, event_type, subject, envelope FROM audit.events ORDER BY seq")
        # Exactly once: every published event is in the audit log once, nothing else is.
        assert sorted(r["event_id"] for r in rows) == sorted(ids)
        # In order: each account's versions reached the audit log in the order they were made.
        for account in accounts:
            versions = [json.loads(r["envelope"])["data"]["first_name"] if isinstance(r["envelope"], str)
                        else r["envelope"]["data"]["first_name"]
                        for r in rows if r["subject"] == account and r["event_type"] == "AccountUpserted"]
            assert versions == [f"v{k}" for k in range(UPDATES + 1)], (account, versions)
        # Each mail once, in the journal and in the sink, whichever replica sent it.
        mails = await db.fetch("SELECT kind, status, recipient, message_id FROM notifier.mails")
        confirm = [m["recipient"] for m in mails if m["kind"] == "backup_email_confirm"]
        assert sorted(confirm) == sorted(f"{a}@backup.example" for a in accounts)
        assert {m["status"] for m in mails} == {"sent"}
        # The sink holds exactly the journal's mails (an SMTP retry after a lost answer may store one
        # a second time, under the same Message-ID, which mail clients show once).
        stored = {email.message_from_bytes(path.read_bytes())["Message-ID"] for path in mail_dir.glob("*.eml")}
        assert stored == {m["message_id"] for m in mails} and len(mails) == 2 * ACCOUNTS
        # And the work was shared: both replicas of the workers that see every event handled some,
        # and no replica was handed a copy of what another handled.
        assert all(n > 0 for n in consumed["audit"]) and all(n > 0 for n in consumed["recovery"]), consumed
        assert sum(consumed["audit"]) == expected and duplicates == [0] * len(duplicates), (consumed, duplicates)
    finally:
        await db.close()
        await teardown(mine, exchange=True)
        await drop_database(f"mfa_replicas_{u}")


async def test_a_replica_killed_leaves_its_partitions_to_the_other(settings, runtime):
    from services.common.broker import PARTITION_HEADER
    from services.common.events import encode, new_event
    from services.common.outbox import partition_of

    u = uuid.uuid4().hex[:8]
    mine = dataclasses.replace(settings, database_url=_db_url(f"mfa_failover_{u}"),
                               exchange=f"{settings.exchange}.failover.{u}",
                               queue_prefix=f"{settings.queue_prefix}failover.{u}", queue_partitions=PARTITIONS)
    await migrate(mine.database_url, migration_sets(list(SERVICES.values())))
    env = env_for(mine, MFA_EXCHANGE=mine.exchange, MFA_QUEUE_PREFIX=mine.queue_prefix,
                  MFA_QUEUE_PARTITIONS=str(PARTITIONS), MFA_DATABASE_URL=mine.database_url)
    procs = [await processes.start("run", "audit", env={**env, "MFA_AUDIT_PORT": str(free_port())},
                                   stdout=asyncio.subprocess.DEVNULL, stderr=None) for _ in range(2)]
    db = await asyncpg.connect(mine.database_url)
    lock = lock_class("partition", mine.queue("audit"))

    async def holders() -> list[int]:
        rows = await db.fetch("SELECT pid, count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted"
                              " AND classid = $1::int::oid GROUP BY pid", lock)
        return sorted(r["n"] for r in rows)

    try:
        await wait_for(lambda: _eq(holders, [2, 2]), timeout=60, message="two partitions each")
        procs[0].kill()  # no goodbye: its session locks end with its connections
        await procs[0].wait()
        await wait_for(lambda: _eq(holders, [PARTITIONS]), timeout=20, message="the survivor holds every partition")
        channel = await runtime.broker.channel()
        exchange = await channel.get_exchange(mine.exchange)
        events = [new_event("TestPing", {"n": n, "account_id": f"acct-{n}"}, source="/tests", subject=f"acct-{n}")
                  for n in range(32)]
        for event in events:
            await exchange.publish(aio_pika.Message(encode(event), message_id=event["id"], user_id="guest",
                                                    headers={PARTITION_HEADER: partition_of(event["subject"])}),
                                   routing_key="TestPing")
        await channel.close()
        await wait_for(lambda: db.fetchval("SELECT count(*) = 32 FROM audit.events"), timeout=20,
                       message="every partition's events handled by the survivor")
    finally:
        await asyncio.gather(*(processes.stop(proc) for proc in procs))
        await db.close()
        await teardown(mine, exchange=True)
        await drop_database(f"mfa_failover_{u}")


async def _eq(get, expected) -> bool:
    return await get() == expected
