"""Process lifecycle: concurrent migrations, SIGTERM with work in flight, `mfa run all`."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import uuid
import zlib

import aio_pika
import aiohttp
import asyncpg
import pytest

from services.common.config import queue_name
from services.common.consumer import Consumer
from services.common.outbox import add_events

from .conftest import _db_url, drop_database, free_port, tap, wait_for
from .processes import (
    APIS,
    MFA,
    ROOT,
    env_for,
    free_ports,
    kill,
    port_env,
    run_all_env,
    run_to_end,
    start,
    url,
    wait_ready,
)
from .test_backbone import effects, ping, recording_handler


async def test_two_migrations_at_once_both_succeed_and_apply_each_once(settings):
    name = f"mfa_migrate_{uuid.uuid4().hex[:8]}"
    env = env_for(settings, MFA_DATABASE_URL=_db_url(name))
    procs = [await start("migrate", env=env) for _ in range(2)]
    outs = [await p.communicate() for p in procs]
    try:
        assert [p.returncode for p in procs] == [0, 0], outs
        applied = [int(out.decode().split("migrations applied: ")[1].split()[0]) for out, _ in outs]
        conn = await asyncpg.connect(_db_url(name))
        try:
            rows = await conn.fetch("SELECT version FROM auth.schema_migrations")
        finally:
            await conn.close()
        # One process applied everything, the other found nothing left to do.
        assert sorted(applied)[0] == 0 and sorted(applied)[1] > 0
        assert len(rows) == len({r["version"] for r in rows}) >= 2
    finally:
        await drop_database(name)


async def test_sigterm_during_work_loses_nothing(settings, runtime):
    from services.common.outbox import OutboxRelay

    run = uuid.uuid4().hex
    queue = runtime.queue(f"sigterm-{run}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.sigterm_worker", queue, run,
        env=env_for(settings), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )
    relay = OutboxRelay(runtime.pool, runtime.broker, "bbtest", poll_interval=0.2)
    relay_task = asyncio.create_task(relay.run())
    try:
        assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"ready"
        async with runtime.pool.acquire() as conn, conn.transaction():
            await add_events(conn, "bbtest", [ping(run, f"acct-{i % 7}", i) for i in range(300)])
        await wait_for(lambda: _len_at_least(runtime.pool, run, 20), timeout=20, message="work under way")
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 10)
        assert code == 0
        done_at_stop = await effects(runtime.pool, run)
        processed = await runtime.pool.fetchval(
            "SELECT count(*) FROM bbtest.processed_events WHERE consumer = $1", queue
        )
        # Nothing half-applied: every effect has its processed record and the other way round.
        assert len(done_at_stop) == processed < 300
        # A fresh consumer picks up exactly what was left.
        consumer = Consumer(runtime, party="auth", schema="bbtest", queue=queue,
                            handlers={"TestPing": recording_handler(run)}, prefetch=50)
        await consumer.start()
        try:
            rows = await wait_for(lambda: _len_at_least(runtime.pool, run, 300), timeout=30, message="all 300")
        finally:
            await consumer.stop()
        assert sorted(r["n"] for r in rows) == list(range(300))
    finally:
        await kill(proc)
        relay.stop()
        await asyncio.wait_for(relay_task, 10)


async def _len_at_least(pool, run, n):
    rows = await effects(pool, run)
    return rows if len(rows) >= n else None


async def test_mfa_run_all_serves_health_and_stops_on_sigterm(settings):
    ports = free_ports()
    proc = await start("run", "all", env=run_all_env(settings, ports))
    try:
        await wait_ready({name: url(ports[name]) for name in APIS}, timeout=30)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{ports['AUTH']}/metrics") as resp:
                text = await resp.text()
            assert "mfa_outbox_backlog" in text and "mfa_http_requests_total" in text
            async with http.get(f"http://127.0.0.1:{ports['AUTH']}/v1/accounts/x/mfa") as resp:
                assert resp.status == 401
                assert resp.content_type == "application/problem+json"
                assert (await resp.json())["code"] == "missing_api_key"
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 10)
        assert code == 0
    finally:
        await kill(proc)


async def test_sigterm_under_http_load_exits_in_time_and_loses_nothing(settings, runtime):
    """`mfa run all` serving logins at full speed: SIGTERM, exit 0 within 10 s, every answered
    login is stored, and every stored login has its event published or waiting in the outbox."""
    from services.common.apikeys import create_key

    ports = free_ports()
    env = run_all_env(settings, ports)
    channel, challenges = await tap(runtime, settings.exchange, "LoginChallengeIssued")
    key = await create_key(runtime.pool, "service", label="sigterm")
    headers = {"Authorization": f"Bearer {key}"}
    base = url(ports["AUTH"])
    company = f"co-{uuid.uuid4().hex[:10]}"
    proc = await start("run", "all", env=env)
    answered: list[str] = []
    try:
        await wait_ready({"auth": base}, timeout=30)
        async with aiohttp.ClientSession(base, headers=headers) as http:
            async with http.put(f"/v1/companies/{company}", json={"name": "Sigterm Co", "mfa_required": False}) as r:
                assert r.status in (200, 201)
            accounts = [f"{company}-{i}" for i in range(8)]
            for account in accounts:
                body = {"company_id": company, "email": f"{account}@example.com", "first_name": "A",
                        "last_name": "B", "role": "employee", "mfa_required": False}
                async with http.put(f"/v1/accounts/{account}", json=body) as r:
                    assert r.status == 201

            async def client(account: str) -> None:
                while True:
                    login_id = f"lg-{uuid.uuid4().hex}"
                    try:
                        async with http.post("/v1/logins", json={"account_id": account, "login_id": login_id}) as r:
                            if r.status == 201:
                                answered.append(login_id)
                            elif r.status < 500:
                                raise AssertionError(f"unexpected {r.status}: {await r.text()}")
                    except aiohttp.ClientError:
                        return  # the server stopped listening or closed the connection

            clients = [asyncio.create_task(client(account)) for account in accounts]
            await wait_for(lambda: len(answered) >= 200, timeout=30, message="200 logins answered")
            proc.send_signal(signal.SIGTERM)
            started = asyncio.get_running_loop().time()
            code = await asyncio.wait_for(proc.wait(), 12)
            elapsed = asyncio.get_running_loop().time() - started
            await asyncio.gather(*clients)
        assert code == 0, (await proc.stderr.read()).decode(errors="replace")[-3000:]
        assert elapsed < 10, elapsed
        stored = {r["login_id"] for r in await runtime.pool.fetch(
            "SELECT login_id FROM auth.logins WHERE company_id = $1", company)}
        assert set(answered) <= stored

        async def events_accounted_for():
            waiting = {json.loads(bytes(r["body"]))["data"]["login_id"] for r in await runtime.pool.fetch(
                "SELECT body FROM auth.outbox WHERE event_type = 'LoginChallengeIssued'")}
            return stored <= {e["data"]["login_id"] for e in challenges} | waiting

        await wait_for(events_accounted_for, timeout=10, message="an event for every stored login")
    finally:
        await kill(proc)
        await channel.close()


async def test_with_a_separate_relay_the_service_leaves_its_outbox_to_mfa_relay(settings, runtime):
    """MFA_RELAY=separate: `mfa run auth` publishes nothing itself; `mfa relay auth` publishes its events."""
    from services.common.apikeys import create_key

    name = f"mfa_relay_{uuid.uuid4().hex[:8]}"
    port, relay_port = free_port(), free_port()
    env = env_for(settings, MFA_DATABASE_URL=_db_url(name), MFA_RELAY="separate", MFA_AUTH_PORT=str(port),
                  MFA_RELAY_PORT=str(relay_port))
    channel, challenges = await tap(runtime, settings.exchange, "LoginChallengeIssued")
    procs = [await start("run", "auth", env=env)]
    try:
        await asyncio.wait_for(procs[0].stdout.readline(), 30)
        db = await asyncpg.connect(_db_url(name))
        try:
            key = await create_key(db, "service", label="relay-test")
            company, account = f"co-{uuid.uuid4().hex[:8]}", f"acct-{uuid.uuid4().hex[:8]}"
            async with aiohttp.ClientSession(url(port),
                                             headers={"Authorization": f"Bearer {key}"}) as http:
                async with http.put(f"/v1/companies/{company}", json={"name": "Relay Co", "mfa_required": False}) as r:
                    assert r.status == 201
                body = {"company_id": company, "email": f"{account}@example.com", "first_name": "A", "last_name": "B",
                        "role": "employee", "mfa_required": False}
                async with http.put(f"/v1/accounts/{account}", json=body) as r:
                    assert r.status == 201
                async with http.post("/v1/logins", json={"account_id": account}) as r:
                    assert r.status == 201
                    login_id = (await r.json())["login_id"]
            # No relay in the service process: it holds none of the outbox partitions' locks.
            relay_locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = " \
                          "(SELECT oid FROM pg_database WHERE datname = current_database())" \
                          f" AND classid = {zlib.crc32(b'outbox:auth') & 0x7FFFFFFF}"  # the relay's, not the consumer's
            assert await db.fetchval(relay_locks) == 0
            assert await db.fetchval("SELECT count(*) FROM auth.outbox WHERE event_type = 'LoginChallengeIssued'") == 1
            procs.append(await start("relay", "auth", env=env))
            await wait_for(lambda: any(e["data"]["login_id"] == login_id for e in challenges), timeout=15,
                           message="the login's event published by mfa relay")

            async def outbox_empty() -> bool:
                return await db.fetchval("SELECT count(*) FROM auth.outbox") == 0

            # The broker may deliver the event before the relay's DELETE of it commits.
            await wait_for(outbox_empty, timeout=10, message="the relay deleting what the broker confirmed")
            assert await db.fetchval(relay_locks) == 16  # the relay process holds every partition
            async with aiohttp.ClientSession(url(relay_port)) as http:
                async with http.get("/readyz") as r:
                    assert r.status == 200 and (await r.json())["status"] == "ready"

                async def counted() -> str | None:
                    async with http.get("/metrics") as r:
                        body = await r.text()
                    return body if 'type="LoginChallengeIssued"} 1.0' in body else None

                # Counted right after the relay's commit, which the test may see first.
                text = await wait_for(counted, timeout=10, message="the published event counted")
            assert 'mfa_outbox_backlog{service="auth"} 0.0' in text
            assert 'mfa_events_published_total{service="auth",type="LoginChallengeIssued"} 1.0' in text
        finally:
            await db.close()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        assert [await asyncio.wait_for(proc.wait(), 10) for proc in procs] == [0, 0]
    finally:
        for proc in procs:
            await kill(proc)
        await channel.close()
        await drop_database(name)


async def test_api_key_create_prints_the_key_last_and_revoke_disables_it(settings, runtime):
    from services.common.apikeys import KeyCache

    env = env_for(settings)
    code, out, _ = await run_to_end(MFA, "api-key", "create", "--role", "auditor", "--company", "co-x", env=env)
    assert code == 0
    key = out.strip().splitlines()[-1]
    principal = await KeyCache(runtime.pool).resolve(key)
    assert principal is not None and principal.role == "auditor" and principal.company_id == "co-x"
    code, out, _ = await run_to_end(MFA, "api-key", "revoke", key[:10], env=env)
    assert code == 0 and "revoked 1" in out
    assert await KeyCache(runtime.pool).resolve(key) is None


async def test_production_refuses_to_start_with_the_development_key(settings):
    env = env_for(settings, MFA_ENV="production", MFA_SECRET_KEYS="", MFA_AUTH_PORT=str(free_port()))
    code, _, err = await run_to_end(MFA, "run", "auth", env=env)
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and err.startswith("mfa: MFA_SECRET_KEYS is not set"), err


@pytest.mark.parametrize(("command", "setting"), [
    (["run", "audit"], "MFA_AUDIT_PORT"),
    (["run", "recovery"], "MFA_INBOUND_SMTP_PORT"),
    (["relay", "auth"], "MFA_RELAY_PORT"),
])
async def test_a_port_in_use_is_one_sentence_naming_the_setting(settings, command, setting):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = port_env(free_ports(*APIS, "INBOUND_SMTP", "RELAY"))
        env = env_for(settings, **{**ports, setting: str(port)}, MFA_LOG_LEVEL="ERROR")
        code, _, err = await run_to_end(MFA, *command, env=env)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == (f"mfa: port {port} on 127.0.0.1 is already in use by another process:"
                        f" stop it or choose another port with {setting}")


async def test_broker_teardown_removes_the_prefix_queues_and_exchanges(settings, runtime):
    prefix = f"{settings.queue_prefix}teardown.{uuid.uuid4().hex[:6]}"
    outside = runtime.queue(f"outside-{uuid.uuid4().hex[:6]}")
    exchange = f"{settings.exchange}.teardown.{uuid.uuid4().hex[:6]}"
    channel = await runtime.broker.channel()
    try:
        for name in ("auth.p0", "auth.parked", "notifier.retry.1"):
            await channel.declare_queue(queue_name(prefix, name), durable=True, arguments={"x-queue-type": "quorum"})
        await channel.declare_exchange(queue_name(prefix, "auth.in"), aio_pika.ExchangeType.HEADERS, durable=True)
        await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await channel.declare_queue(outside, durable=True)
        code, out, err = await run_to_end(MFA, "broker", "teardown", "--exchange",
                                   env=env_for(settings, MFA_QUEUE_PREFIX=prefix, MFA_EXCHANGE=exchange))
        assert code == 0, err
        assert out.startswith("removed 5: ")
        for name in ("auth.p0", "auth.parked", "notifier.retry.1"):
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                await (await runtime.broker.channel()).declare_queue(queue_name(prefix, name), passive=True)
        for name in (queue_name(prefix, "auth.in"), exchange):
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                await (await runtime.broker.channel()).declare_exchange(name, passive=True)
        assert await (await runtime.broker.channel()).declare_queue(outside, passive=True)  # not the prefix's
    finally:
        channel = await runtime.broker.channel()
        await channel.queue_delete(outside)
        await channel.close()
