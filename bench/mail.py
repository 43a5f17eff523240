"""Benchmark of the notifier: events on RabbitMQ -> mails accepted by a local SMTP sink.

    .venv/bin/python bench/mail.py [--events 3000] [--rate 50] [--seconds 10]

Runs against the local PostgreSQL and RabbitMQ on a throwaway database, exchange and queues
(all removed at the end). The SMTP sink is an aiosmtpd server in a separate process that
accepts everything and reports when it accepted each Message-ID.

1. Throughput: `--events` events (a mix of MfaEnrolled, BackupEmailRequested with a sealed
   token to open, and MfaLocked; one mail each) are queued first, then the notifier consumer
   starts and is timed until the sink accepted the last mail: mails/s with the idempotency
   record, the journal, the templates and SMTP.
2. Latency: events are published at `--rate` per second for `--seconds`; for each, the time from
   publishing the event to the sink accepting its mail; p50, p99 and max.
Targets (issue 4): at least 300 mails/s; p99 under 250 ms at 50 mails/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import aio_pika

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import bench_runtime, cpu_report, cpu_times  # noqa: E402
from services.common.config import Settings  # noqa: E402
from services.common.crypto import Keyring  # noqa: E402
from services.common.events import CONTENT_TYPE, encode, new_event  # noqa: E402
from services.common.logs import configure_logging  # noqa: E402
from services.common.runtime import Runtime  # noqa: E402
from services.notifier.consumers import POOL_SPARE, PREFETCH, notifier_consumer  # noqa: E402
from services.notifier.domain import TEMPLATE_KINDS  # noqa: E402
from services.notifier.handlers import Notifier  # noqa: E402
from services.notifier.mailer import Mailer, SmtpConfig  # noqa: E402
from services.notifier.templates import Catalog  # noqa: E402

SELF = os.path.abspath(__file__)

# --- the sink process --------------------------------------------------------------------------


async def run_sink() -> None:
    """Accept every mail; print `PORT <n>` once, then `<message-id> <unix time>` per accepted mail."""
    import re

    from aiosmtpd.smtp import SMTP

    # The sink shares the 2 cores with the notifier: find the header with a regex rather than
    # parse the whole mail with the email package (a fifth of the sink's CPU).
    message_id = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            accepted = time.time()
            head = envelope.original_content.split(b"\r\n\r\n", 1)[0]
            found = message_id.search(head)
            sys.stdout.write(f"{found.group(1).decode() if found else '?'} {accepted:.6f}\n")
            sys.stdout.flush()
            return "250 2.0.0 OK"

    loop = asyncio.get_running_loop()
    handler = Handler()
    server = await loop.create_server(lambda: SMTP(handler, hostname="bench-sink", loop=loop), "127.0.0.1", 0)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()  # until the parent kills it


class SinkProcess:
    """The sink as a child process, and the accept times it reports."""

    def __init__(self) -> None:
        self.accepted: dict[str, float] = {}
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, SELF, "--sink", stdout=asyncio.subprocess.PIPE
        )
        line = await asyncio.wait_for(self._proc.stdout.readline(), 20)
        self.port = int(line.split()[1])
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while line := await self._proc.stdout.readline():
            msg_id, _, stamp = line.decode().strip().rpartition(" ")
            self.accepted.setdefault(msg_id, float(stamp))
            self._changed.set()

    async def wait_for(self, ids: set[str]) -> None:
        """Return once every id in `ids` was accepted (callers bound it with asyncio.timeout)."""
        while not ids <= self.accepted.keys():
            self._changed.clear()
            await self._changed.wait()

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        if self._reader is not None:
            await self._reader


# --- events --------------------------------------------------------------------------------------


def make_event(n: int, keyring: Keyring, now: datetime) -> dict:
    account, company = f"bench-acct-{n}", f"bench-co-{n % 50}"
    person = {"account_id": account, "company_id": company, "email": f"{account}@example.com", "first_name": "Zoë"}
    roll = n % 10
    if roll < 5:
        event_type, data = "MfaEnrolled", {**person, "method": "totp", "enrolled_at": now.isoformat()}
    elif roll < 8:
        event_type = "BackupEmailRequested"
        token = keyring.seal(uuid.uuid4().hex.encode(), aad=f"{event_type}:{account}".encode())
        data = {"login_id": f"login-{n}", "account_id": account, "company_id": company,
                "backup_email": f"{account}@backup.example", "first_name": "Zoë", "link_token": token,
                "expires_at": (now + timedelta(minutes=15)).isoformat()}
    else:
        event_type = "MfaLocked"
        data = {**person, "locked_until": (now + timedelta(minutes=15)).isoformat(), "consecutive_failures": 5}
    return new_event(event_type, data, source="/mfa/auth", subject=account, company_id=company, time=now)


def mail_id(event: dict) -> str:
    return f"<{event['id']}.1@mfa.localhost>"


async def publish(exchange: aio_pika.abc.AbstractExchange, event: dict) -> None:
    await exchange.publish(
        aio_pika.Message(encode(event), message_id=event["id"], content_type=CONTENT_TYPE,
                         delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=event["type"],
    )


# --- the run -------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> int:
    # The process pool is sized as `mfa run notifier` sizes it (the notifier's ServiceSpec.pool_size).
    async with bench_runtime(pool_size=PREFETCH + POOL_SPARE) as runtime:
        return await _bench(args, runtime, runtime.settings)


async def _bench(args: argparse.Namespace, runtime: Runtime, settings: Settings) -> int:
    sink = SinkProcess()
    await sink.start()
    pool = runtime.pool
    mailer = await Mailer(SmtpConfig(host="127.0.0.1", port=sink.port)).start()
    notifier = Notifier.from_settings(settings, catalog=Catalog.load(required=TEMPLATE_KINDS), mailer=mailer,
                                      journal=pool)
    consumer = notifier_consumer(runtime, notifier)
    keyring = Keyring(settings.secret_keys)
    try:
        # Declare the queue and its bindings, then stop consuming so the backlog can be built.
        await consumer.start()
        await consumer.stop()

        now = datetime.now(UTC)
        events = [make_event(n, keyring, now) for n in range(args.events)]
        channel = await runtime.broker.channel()
        exchange = await channel.get_exchange(settings.exchange)
        for chunk in range(0, len(events), 200):
            await asyncio.gather(*(publish(exchange, e) for e in events[chunk:chunk + 200]))
        consumer = notifier_consumer(runtime, notifier)
        cpu_before = cpu_times()
        started = time.time()
        await consumer.start()
        async with asyncio.timeout(300):
            await sink.wait_for({mail_id(e) for e in events})
        cpu_after = cpu_times()
        last = max(sink.accepted[mail_id(e)] for e in events)
        elapsed = last - started
        rate = len(events) / elapsed
        print(f"throughput: {len(events)} events -> {len(events)} mails accepted in {elapsed:.2f} s"
              f" = {rate:.0f} mails/s (target >= 300)")
        print(cpu_report(cpu_before, cpu_after, len(events), "mail"))

        total = int(args.rate * args.seconds)
        paced = [make_event(args.events + n, keyring, datetime.now(UTC)) for n in range(total)]
        published: dict[str, float] = {}
        t0 = time.monotonic()
        for n, event in enumerate(paced):
            delay = t0 + n / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the offered load, not waiting for a result
            published[mail_id(event)] = time.time()
            await publish(exchange, event)
        async with asyncio.timeout(60):
            await sink.wait_for(set(published))
        latencies = sorted((sink.accepted[m] - published[m]) * 1000 for m in published)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"latency at {args.rate:g} mails/s for {args.seconds:g} s ({total} mails): "
              f"p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms, max {latencies[-1]:.1f} ms"
              f" (target p99 < 250 ms)")
        expected = args.events + total
        for _ in range(600):  # the sink may accept a mail just before its journal row is written: poll, 30 s at most
            sent = await pool.fetchval("SELECT count(*) FROM notifier.mails WHERE status = 'sent'")
            if sent >= expected:
                break
            await asyncio.sleep(0.05)
        print(f"journal: {sent} mails recorded as sent; SMTP connections opened: {mailer.connections_opened}")
        await channel.close()
        return 0 if rate >= 300 and p99 < 250 else 1
    finally:
        await consumer.stop()
        await mailer.close()
        await sink.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000, help="events queued for the throughput run")
    parser.add_argument("--rate", type=float, default=50, help="events per second for the latency run")
    parser.add_argument("--seconds", type=float, default=10, help="length of the latency run")
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop  # as `mfa run` uses

    if args.sink:
        uvloop.run(run_sink())
        return 0
    configure_logging("WARNING", "console")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load} before the run")
    return uvloop.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
