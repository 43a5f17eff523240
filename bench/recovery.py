"""Benchmark of the recovery intake: the help form over HTTP and phone mails over SMTP, into tickets.

    .venv/bin/python bench/recovery.py [--requests 100] [--concurrency 8] [--photo-kb 1024]

Runs the real recovery app (HTTP on a local port, the SMTP mailbox on another) against the local
PostgreSQL and RabbitMQ on a throwaway database and exchange (removed at the end). Requests come
from this same process, so client and server share the CPU. Every request is a different person
of a seeded directory (so each opens a ticket, matched, with its photo stored and an event
written to the outbox).

1. Form: `--requests` multipart POSTs with a photo of `--photo-kb` KB, `--concurrency` at a time.
2. Mail: `--requests` iPhone-style mails (multipart/mixed, quoted-printable text, base64 photo)
   delivered with aiosmtplib, `--concurrency` connections at a time.
3. Parser bounds: the time to read the largest mail accepted (a 10 MB photo, ~14 MB of MIME) and
   the slowest structure the mailbox still parses (249,000 header lines).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import aiosmtplib  # noqa: E402
from aiohttp import web  # noqa: E402

from bench.common import bench_runtime, free_port, machine, percentile  # noqa: E402
from services.common.apikeys import create_key  # noqa: E402
from services.common.logs import configure_logging  # noqa: E402
from services.common.runtime import Runtime  # noqa: E402
from services.recovery import store  # noqa: E402
from services.recovery.app import create_app  # noqa: E402
from services.recovery.domain import MAX_PHOTO_BYTES, RateLimits, company_key  # noqa: E402
from services.recovery.mailparse import parse_mail  # noqa: E402

HELPDESK = "helpdesk@mfa.localhost"


def jpeg(size: int) -> bytes:
    """A real JPEG of noise (the service decodes every photo), close to `size` bytes, padded after its end."""
    import io

    from PIL import Image

    side = max(8, int((size / 4) ** 0.5))
    img = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=95)
    data = out.getvalue()
    return data + b"\0" * max(0, size - len(data))


def phone_mail(email: str, company: str, photo: bytes) -> bytes:
    import base64
    import quopri

    body = quopri.encodestring(
        f"Hello,\nI lost my phone.\nAccount email: {email}\nFirst name: Jane\nLast name: Doe\n\nSent from my iPhone\n"
        .encode()).decode()
    return (
        f"From: Jane Doe <{email}>\r\nTo: {HELPDESK}\r\nSubject: Resetting MFA authenticator ({company})\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"Apple-Mail-1\"\r\n\r\n"
        "--Apple-Mail-1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        f"{body}\r\n--Apple-Mail-1\r\nContent-Type: image/jpeg; name=IMG_0001.jpeg\r\n"
        "Content-Disposition: attachment; filename=IMG_0001.jpeg\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + base64.encodebytes(photo).replace(b"\n", b"\r\n") + b"--Apple-Mail-1--\r\n"


async def seed(runtime: Runtime, n: int, prefix: str) -> list[tuple[str, str]]:
    """`n` people in `n // 10` companies, straight into the read model (the consumer's job in production)."""
    people = []
    now = datetime.now(UTC)
    async with runtime.pool.acquire() as conn, conn.transaction():
        for c in range(max(1, n // 10)):
            name = f"{prefix} Company {c}"
            await store.upsert_company(conn, f"{prefix}-co-{c}", name, company_key(name), c % 2 == 0, now)
        for i in range(n):
            c = i % max(1, n // 10)
            email = f"{prefix}.person{i}@acme.example"
            await store.upsert_account_profile(conn, account_id=f"{prefix}-acc-{i}", company_id=f"{prefix}-co-{c}",
                                               email=email, email_key=email, first_name="Jane", last_name="Doe",
                                               role="employee", mfa_required=False, at=now)
            people.append((email, f"{prefix} Company {c}"))
    return people


async def timed(jobs, concurrency: int) -> tuple[float, list[float]]:
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def run(job):
        async with semaphore:
            started = time.perf_counter()
            await job()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(run(job) for job in jobs))
    return time.perf_counter() - started, latencies


def report(name: str, count: int, elapsed: float, latencies: list[float], photo_kb: int) -> None:
    print(f"{name}: {count} in {elapsed:.2f} s = {count / elapsed:.1f}/s "
          f"({count * photo_kb / 1024 / elapsed:.1f} MB of photos/s); latency p50 "
          f"{percentile(latencies, 50) * 1000:.0f} ms, p99 {percentile(latencies, 99) * 1000:.0f} ms")


async def main(args: argparse.Namespace) -> None:
    configure_logging("WARNING", "console")
    print(f"machine: {machine()}")
    photo = jpeg(args.photo_kb * 1024)
    async with bench_runtime() as base:
        smtp_port = free_port()
        runtime = Runtime(dataclasses.replace(base.settings, inbound_smtp_port=smtp_port), pool=base.pool,
                          broker=base.broker, keys=base.keys)
        app = create_app(runtime, limits=RateLimits(per_sender=10_000, per_ip=10_000_000))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        http_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", http_port).start()
        key = await create_key(base.pool, "service", label="bench")
        try:
            form_people = await seed(runtime, args.requests, "form")
            mail_people = await seed(runtime, args.requests, "mail")
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:

                def form_job(email: str, company: str):
                    async def job():
                        data = aiohttp.FormData(default_to_multipart=True)
                        for name, value in (("email", email), ("first_name", "Jane"), ("last_name", "Doe"),
                                            ("company_name", company)):
                            data.add_field(name, value)
                        data.add_field("photo", photo, filename="me.jpg", content_type="image/jpeg")
                        async with http.post(f"http://127.0.0.1:{http_port}/v1/recovery-requests", data=data) as r:
                            assert r.status == 202, await r.text()

                    return job

                elapsed, lat = await timed([form_job(e, c) for e, c in form_people], args.concurrency)
                report("form", len(form_people), elapsed, lat, args.photo_kb)

            def mail_job(email: str, company: str):
                raw = phone_mail(email, company, photo)

                async def job():
                    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=smtp_port, timeout=60) as smtp:
                        await smtp.mail(email)
                        await smtp.rcpt(HELPDESK)
                        response = await smtp.data(raw)
                        assert response.code == 250

                return job

            elapsed, lat = await timed([mail_job(e, c) for e, c in mail_people], args.concurrency)
            report("mail", len(mail_people), elapsed, lat, args.photo_kb)
            opened = await base.pool.fetchval(
                "SELECT count(*) FROM recovery.tickets WHERE status = 'open' AND account_id IS NOT NULL")
            print(f"tickets open and matched: {opened} of {2 * args.requests}")
        finally:
            await runner.cleanup()

    largest = phone_mail("jane@acme.example", "Acme", jpeg(MAX_PHOTO_BYTES))
    started = time.perf_counter()
    parse_mail(largest, envelope_sender="jane@acme.example")
    print(f"parse the largest accepted mail ({len(largest) / 1e6:.1f} MB): {(time.perf_counter() - started) * 1000:.0f} ms")
    slow = b"Subject: x\r\n" + b"X-A: b\r\n" * 249_000 + b"\r\nbody"
    started = time.perf_counter()
    parse_mail(slow, envelope_sender="a@b.example")
    print(f"parse the slowest structure still read (249,000 header lines): "
          f"{(time.perf_counter() - started) * 1000:.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--photo-kb", type=int, default=1024)
    asyncio.run(main(parser.parse_args()))
