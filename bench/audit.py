"""Benchmark of the audit log: events/s appended with the hash chain, verification and export rates.

    .venv/bin/python bench/audit.py [--events 20000] [--workers 1]

Runs against the local PostgreSQL and RabbitMQ on a throwaway database, exchange and queues
(all removed at the end). The queue is filled first, then the audit consumer is started and
timed until the chain head reaches the last event: that is the append rate with the chain,
redaction, the idempotency record and the acks. With `--workers N`, N audit worker processes
consume the queue at once (competing consumers sharing one chain). Then `/v1/audit/verify`
work is timed, and the NDJSON export and the JSON pages are read over real HTTP.
Targets (issue 6): append >= 2,000 events/s, export >= 20,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import aio_pika
import aiohttp
import asyncpg
from aiohttp import web

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from bench.common import bench_runtime, free_port  # noqa: E402
from services.audit.app import create_app  # noqa: E402
from services.audit.consumers import build_consumers  # noqa: E402
from services.audit.handlers import verify  # noqa: E402
from services.common.apikeys import create_key  # noqa: E402
from services.common.config import Settings  # noqa: E402
from services.common.crypto import Keyring  # noqa: E402
from services.common.events import encode, new_event  # noqa: E402
from services.common.logs import configure_logging  # noqa: E402
from services.common.runtime import Runtime  # noqa: E402


def make_events(count: int, keyring: Keyring) -> list[dict]:
    """A realistic mix: logins, challenges, and login links whose sealed token must be redacted."""
    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(hours=1)
    events = []
    for n in range(count):
        company = f"bench-co-{n % 50}"
        account = f"bench-acct-{rng.randrange(1000)}"
        login = f"login-{n}"
        when = start + timedelta(milliseconds=n)
        roll = n % 10
        if roll < 6:
            event_type = "LoginSucceeded"
            data = {"login_id": login, "account_id": account, "company_id": company, "method": "totp"}
        elif roll < 9:
            event_type = "LoginChallengeIssued"
            data = {"login_id": login, "account_id": account, "company_id": company, "decision": "verify",
                    "methods": ["totp", "backup_code", "backup_email"], "expires_at": when.isoformat()}
        else:
            event_type = "BackupEmailRequested"
            token = keyring.seal(uuid.uuid4().bytes, aad=f"{event_type}:{account}".encode())
            data = {"login_id": login, "account_id": account, "company_id": company,
                    "backup_email": f"{account}@backup.example", "first_name": "Zoë", "link_token": token,
                    "expires_at": when.isoformat()}
        events.append(new_event(event_type, data, source="/mfa/auth", subject=account, company_id=company,
                                correlation_id=login, time=when))
    return events


async def publish_all(runtime: Runtime, events: list[dict]) -> None:
    exchange = runtime.broker.exchange

    async def one(event: dict) -> None:
        await exchange.publish(
            aio_pika.Message(encode(event), message_id=event["id"], content_type="application/cloudevents+json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=event["type"],
        )

    for i in range(0, len(events), 500):
        await asyncio.gather(*(one(e) for e in events[i:i + 500]))


async def wait_head(pool: asyncpg.Pool, target: int, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while await pool.fetchval("SELECT seq FROM audit.chain_head") < target:
        if time.perf_counter() > deadline:
            raise SystemExit(f"timed out: the chain did not reach {target} rows in {timeout}s")
        await asyncio.sleep(0.02)


async def spawn_worker(settings: Settings) -> asyncio.subprocess.Process:
    """Another audit worker process on the same database and queue; it starts on "go", stops at EOF."""
    env = {
        **os.environ,
        "MFA_DATABASE_URL": settings.database_url,
        "MFA_EXCHANGE": settings.exchange,
        "MFA_QUEUE_PREFIX": settings.queue_prefix,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, HERE, "--worker", env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"ready", line
    return proc


async def worker() -> None:
    """The `--worker` mode: one audit consumer until standard input closes."""
    runtime = await Runtime(Settings.from_env()).open(pool_size=4)
    try:
        consumer = build_consumers(runtime)[0]
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        print("ready", flush=True)
        await reader.readline()  # "go"
        await consumer.start()
        await reader.read()  # EOF: stop
        await consumer.stop()
    finally:
        await runtime.close()


async def bench(count: int, workers: int) -> None:
    async with bench_runtime(pool_size=10) as runtime:
        await _bench(runtime, runtime.settings, count, workers)


async def _bench(runtime: Runtime, settings: Settings, count: int, workers: int) -> None:
    runner: web.AppRunner | None = None
    consumer = None
    try:
        events = make_events(count, Keyring(settings.secret_keys))
        # Declare the queue and its binding, then fill it while nobody consumes.
        declare = build_consumers(runtime)[0]
        await declare.start()
        await declare.stop()
        t = time.perf_counter()
        await publish_all(runtime, events)
        publish_s = time.perf_counter() - t

        extra = [await spawn_worker(settings) for _ in range(workers - 1)]
        try:
            consumer = build_consumers(runtime)[0]
            t = time.perf_counter()
            for proc in extra:
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            await consumer.start()
            await wait_head(runtime.pool, count, timeout=max(60, count / 200))
            append_s = time.perf_counter() - t
            await consumer.stop()
            consumer = None
        finally:
            for proc in extra:
                proc.stdin.close()
                await asyncio.wait_for(proc.wait(), 15)

        t = time.perf_counter()
        result = await verify(runtime.pool)
        verify_s = time.perf_counter() - t
        assert result.ok and result.rows == count, result

        key = await create_key(runtime.pool, "auditor")
        bound = await create_key(runtime.pool, "auditor", "bench-co-7")
        port = free_port()
        runner = web.AppRunner(create_app(runtime), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}/v1/audit/events"
        async with aiohttp.ClientSession() as http:
            async def export(api_key: str, **params) -> tuple[int, float]:
                headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/x-ndjson"}
                t = time.perf_counter()
                lines = 0
                async with http.get(url, headers=headers, params=params) as resp:
                    assert resp.status == 200, await resp.text()
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        lines += chunk.count(b"\n")
                return lines, time.perf_counter() - t

            export_n, export_s = await export(key)
            bound_n, bound_s = await export(bound)
            t = time.perf_counter()
            paged, cursor = 0, None
            while True:
                params = {"limit": "1000"} | ({"after": cursor} if cursor else {})
                async with http.get(url, headers={"Authorization": f"Bearer {key}"}, params=params) as resp:
                    body = await resp.json()
                paged += len(body["events"])
                cursor = body["next_cursor"]
                if cursor is None:
                    break
            paged_s = time.perf_counter() - t
        assert export_n == count == paged, (export_n, paged)

        print(f"audit benchmark, {count} events ({os.cpu_count()} cores)")
        print(f"  publish to the exchange   {count / publish_s:10,.0f} events/s  (setup, not the target)")
        print(f"  append with the chain     {count / append_s:10,.0f} events/s  (target >= 2,000; {workers} worker process(es))")
        print(f"  verify the chain          {count / verify_s:10,.0f} rows/s")
        print(f"  NDJSON export, all        {export_n / export_s:10,.0f} events/s  (target >= 20,000)")
        print(f"  NDJSON export, 1 company  {bound_n / bound_s:10,.0f} events/s  ({bound_n} rows, bound key)")
        print(f"  JSON pages of 1000        {paged / paged_s:10,.0f} events/s")
    finally:
        if consumer is not None:
            await consumer.stop()
        if runner is not None:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=1, help="audit worker processes consuming at once")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    asyncio.run(worker() if args.worker else bench(args.events, max(1, args.workers)))


if __name__ == "__main__":
    main()
