"""Benchmark of the second step of login: enrolled accounts each verify one login with a valid code.

Run: `.venv/bin/python bench/verify.py [--accounts 6000] [--concurrency 64] [--open-rate 200]`.
Starts what `make run` starts (`mfa start`; `--set-up one-process`: `mfa run all`, the relay
inline) on a throwaway database, enrols the accounts, opens one login each, then measures only
`POST /v1/logins/{id}/verify` over HTTP: a closed loop at `--concurrency`, then an open loop of
a steady `--open-rate` verifications/s. Before them it measures this machine's database
ceiling, `pgbench -N` (16 clients, scale 10, 15 s, on a scratch database), and prints the
verifications/s as a share of it: absolute rates differ from machine to machine, the share
much less. A verification counts once its LoginSucceeded is on the broker (a queue of the
benchmark's own receives every one).
BENCH_DEBUG=1 adds latency per 100 ms of the run and the server's own latency histogram.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    bench_runtime,
    cpu_report,
    cpu_times,
    free_port,
    machine,
    percentile,
    pgbench_ceiling,
    profiling,
    queues_drained,
)
from services.auth import domain  # noqa: E402
from services.common.apikeys import create_key  # noqa: E402
from services.common.logs import configure_logging  # noqa: E402
from services.common.runner import settle_garbage_collector  # noqa: E402


def code_for(secret: str, offset_steps: int = 0) -> str:
    return domain.hotp(domain.decode_secret(secret), domain.time_step(time.time()) + offset_steps)


async def run_pool(items, worker, concurrency: int):
    queue: asyncio.Queue = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def loop():
        while not queue.empty():
            await worker(queue.get_nowait())

    await asyncio.gather(*(loop() for _ in range(concurrency)))


def verify_request(port: int, key: str, login_id: str, code: str) -> bytes:
    body = json.dumps({"method": "totp", "code": code}).encode()
    return (
        f"POST /v1/logins/{login_id}/verify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class _Client(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends a request and reads its whole response.

    The load generator shares the 2 cores with the server, PostgreSQL and RabbitMQ, so it is
    kept lean: pre-built requests, responses split on Content-Length (aiohttp's client costs
    about 0.4 ms of CPU per request here, as much as a third of the server's).
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.done: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buffer[:head_end]
        length_at = head.lower().find(b"content-length:")
        length = int(head[length_at + 15: head.find(b"\r\n", length_at)]) if length_at >= 0 else 0
        if len(self.buffer) < head_end + 4 + length:
            return
        response, self.buffer = self.buffer[: head_end + 4 + length], self.buffer[head_end + 4 + length:]
        if self.done is not None and not self.done.done():
            self.done.set_result(response)

    def connection_lost(self, exc) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc or ConnectionError("server closed the connection"))

    async def request(self, data: bytes) -> bytes:
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.done


def _succeeded(response: bytes) -> bool:
    return response.startswith(b"HTTP/1.1 200") and b'"result":"success"' in response.replace(b" ", b"")


async def over_connections(port: int, items, concurrency: int, work) -> int:
    """Await `work(client, item)` for every item over `concurrency` keep-alive connections; how many gave False."""
    loop = asyncio.get_running_loop()
    clients = [(await loop.create_connection(_Client, "127.0.0.1", port))[1] for _ in range(concurrency)]
    failures = 0
    queue = iter(items)

    async def worker(client: _Client) -> None:
        nonlocal failures
        for item in queue:
            if not await work(client, item):
                failures += 1

    try:
        await asyncio.gather(*(worker(c) for c in clients))
    finally:
        for client in clients:
            client.transport.close()
    return failures


async def fire(port: int, requests: list[bytes], concurrency: int) -> tuple[list[float], int]:
    """Send every request over `concurrency` connections; latencies in ms and how many did not succeed."""
    latencies: list[float] = []
    starts: list[float] = []

    async def send(client: _Client, data: bytes) -> bool:
        start = time.perf_counter()
        response = await client.request(data)
        latencies.append((time.perf_counter() - start) * 1000)
        starts.append(start)
        return _succeeded(response)

    failures = await over_connections(port, requests, concurrency, send)
    if os.environ.get("BENCH_DEBUG"):
        first = min(starts)
        for bucket in range(int((max(starts) - first) / 0.1) + 1):
            part = [lat for lat, s in zip(latencies, starts, strict=True) if int((s - first) / 0.1) == bucket]
            if part:
                print(f"{bucket / 10:4.1f} s: {len(part)} sent, p50 {percentile(part, 50):.0f} ms, max {max(part):.0f} ms")
    return latencies, failures


async def fire_open(port: int, requests: list[bytes], rate: float, connections: int = 48) -> tuple[list[float], int]:
    """Send `requests` at a steady `rate` per second whatever the answers do (an open loop).

    Each latency is counted from the moment its request was due, not from when a free
    connection took it, so a stalled server shows in the figures instead of slowing the load.
    """
    loop = asyncio.get_running_loop()
    idle = [(await loop.create_connection(_Client, "127.0.0.1", port))[1] for _ in range(connections)]
    free: asyncio.Queue = asyncio.Queue()
    for client in idle:
        free.put_nowait(client)
    latencies: list[float] = []
    failures = 0

    async def one(data: bytes, due: float) -> None:
        nonlocal failures
        client = await free.get()
        try:
            response = await client.request(data)
        finally:
            free.put_nowait(client)
        latencies.append((time.perf_counter() - due) * 1000)
        if not _succeeded(response):
            failures += 1

    tasks = []
    start = time.perf_counter() + 0.05
    for i, data in enumerate(requests):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(data, due)))
    await asyncio.gather(*tasks)
    for client in idle:
        client.transport.close()
    return latencies, failures


def _children(pid: int) -> list[int]:
    return [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


class Tap:
    """A queue of the benchmark's own, bound to LoginSucceeded: which logins' events reached the broker."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.last_at = 0.0

    async def open(self, runtime) -> None:
        self.channel = await runtime.broker.channel()
        await self.channel.set_qos(prefetch_count=1000)
        exchange = await self.channel.declare_exchange(runtime.settings.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await self.channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "LoginSucceeded")
        await queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message) -> None:
        self.seen.add(json.loads(message.body)["data"]["login_id"])
        self.last_at = time.perf_counter()

    async def wait_for(self, login_ids: list[str], timeout: float = 60) -> bool:
        deadline = time.perf_counter() + timeout
        while not self.seen.issuperset(login_ids):
            if time.perf_counter() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


async def main(args: argparse.Namespace) -> None:
    configure_logging("WARNING", "console")
    async with bench_runtime() as runtime:
        print(f"machine: {machine()}; load average before: {_load()}")
        ceiling = None
        database = runtime.settings.database_url.rpartition("/")[2]
        if args.pgbench:
            ceiling = await asyncio.to_thread(pgbench_ceiling, runtime.settings.database_url)
            print(f"ceiling: pgbench -N, 16 clients, scale 10, 15 s: {ceiling:,.0f} transactions/s")
        port = free_port()
        env = {**os.environ, "MFA_DATABASE_URL": runtime.settings.database_url, "MFA_EXCHANGE": runtime.settings.exchange,
               "MFA_QUEUE_PREFIX": runtime.settings.queue_prefix, "MFA_LOG_LEVEL": "WARNING",
               "MFA_AUTH_PORT": str(port), "MFA_RELAY_PORT": str(free_port()), "MFA_RECOVERY_PORT": str(free_port()),
               "MFA_AUDIT_PORT": str(free_port()), "MFA_NOTIFIER_PORT": str(free_port()),
               "MFA_INBOUND_SMTP_PORT": str(free_port()), "MFA_MAIL_DIR": f"/tmp/mfa-bench-mail-{os.getpid()}"}
        if args.workers:
            env["MFA_AUTH_WORKERS"] = str(args.workers)
        mfa = str(Path(sys.executable).with_name("mfa"))
        command = ["start"] if args.set_up == "start" else ["run", "all"]
        if args.set_up == "one-process":
            env["MFA_RELAY"] = "inline"
        server = await asyncio.create_subprocess_exec(mfa, *command, env=env, stdout=asyncio.subprocess.PIPE)
        tap = Tap()
        try:
            ready = 0
            while ready < (1 if args.set_up == "start" else 4):
                line = (await asyncio.wait_for(server.stdout.readline(), 90)).decode()
                if not line:
                    raise SystemExit(f"mfa {' '.join(command)} ended before it was ready")
                ready += line.startswith("ready:") if args.set_up == "start" else " listening on " in line
            auth_pids = ([p for p in _children(server.pid) if " run auth " in _cmdline(p)]
                         if args.set_up == "start" else [server.pid])
            print(f"set-up: mfa {' '.join(command)}: {len(auth_pids)} auth process(es)"
                  + (", relay in its own process" if args.set_up == "start" else ", relay inline"))
            await tap.open(runtime)
            key = await create_key(runtime.pool, "service", label="bench")
            base = f"http://127.0.0.1:{port}"
            headers = {"Authorization": f"Bearer {key}"}
            connector = aiohttp.TCPConnector(limit=32)
            open_count = int(args.open_rate * args.open_seconds) if args.open_rate else 0
            async with aiohttp.ClientSession(base, headers=headers, connector=connector) as http:
                company = f"bench-{uuid.uuid4().hex[:6]}"
                async with http.put(f"/v1/companies/{company}", json={"name": "Bench Co", "mfa_required": False}) as r:
                    assert r.status in (200, 201), await r.text()
                secrets: dict[str, str] = {}
                logins: list[tuple[str, str]] = []

                async def enrol(i: int) -> None:
                    account = f"{company}-{i}"
                    body = {"company_id": company, "email": f"{account}@bench.example", "first_name": "B",
                            "last_name": "Ench", "role": "employee", "mfa_required": False}
                    async with http.put(f"/v1/accounts/{account}", json=body) as r:
                        assert r.status == 201, await r.text()
                    async with http.post(f"/v1/accounts/{account}/mfa/enrollment") as r:
                        secret = (await r.json())["secret"]
                    async with http.post(f"/v1/accounts/{account}/mfa/enrollment/confirm",
                                         json={"code": code_for(secret)}) as r:
                        assert r.status == 201, await r.text()
                    async with http.post("/v1/logins", json={"account_id": account}) as r:
                        logins.append((account, (await r.json())["login_id"]))
                    secrets[account] = secret

                t = time.perf_counter()
                await run_pool(range(args.accounts + open_count), enrol, 32)
                print(f"set-up: {args.accounts + open_count} accounts enrolled with one open login each "
                      f"in {time.perf_counter() - t:.1f} s")
                # Let the set-up's own events (enrolments, challenges) leave and be consumed first.
                while await runtime.pool.fetchval("SELECT count(*) FROM auth.outbox"):  # noqa: ASYNC110 (polls the database)
                    await asyncio.sleep(0.05)
                # ... and be handled by every consumer (the audit log appends each), before the clock starts.
                waited = await queues_drained(runtime.settings.queue_prefix)
                print(f"set-up: its events handled by every consumer {waited:.1f} s later")

            # Every request is built before the clock starts; the code is one step ahead of
            # now, so it is later than the step used to confirm and valid for 60 s or more.
            def build(part: list[tuple[str, str]]) -> list[bytes]:
                return [verify_request(port, key, login_id, code_for(secrets[account], 1)) for account, login_id in part]

            closed, opened = logins[: args.accounts], logins[args.accounts:]
            async with profiling(auth_pids[0], args.profile):
                settle_garbage_collector()  # the load generator's own pauses would count as latency
                requests = build(closed)
                cpu_before = cpu_times(database)
                started = time.perf_counter()
                latencies, failures = await fire(port, requests, args.concurrency)
                elapsed = time.perf_counter() - started
                on_broker = await tap.wait_for([login_id for _, login_id in closed])
                drained = tap.last_at - started
                cpu_after = cpu_times(database)
            succeeded = len(latencies) - failures
            rate = succeeded / drained
            print(f"closed loop: {succeeded} successful verifications in {elapsed:.2f} s = {succeeded / elapsed:,.0f}/s "
                  f"at concurrency {args.concurrency} ({failures} failed); latency p50 {percentile(latencies, 50):.1f} ms, "
                  f"p99 {percentile(latencies, 99):.1f} ms ({_verdict(percentile(latencies, 99) < 50)}: p99 < 50 ms)")
            print(f"events: {'every' if on_broker else 'NOT every'} LoginSucceeded on the broker after {drained:.2f} s "
                  f"= {rate:,.0f} verifications/s with their events")
            if ceiling:
                print(f"share: {rate:,.0f} / {ceiling:,.0f} = {rate / ceiling:.2f} of pgbench -N "
                      f"({_verdict(on_broker and rate >= 0.6 * ceiling)}: at least 0.60 with every event)")
            print(cpu_report(cpu_before, cpu_after, len(latencies), "verification"))
            if open_count:
                requests = build(opened)
                cpu_before = cpu_times(database)
                latencies, failures = await fire_open(port, requests, args.open_rate)
                on_broker = await tap.wait_for([login_id for _, login_id in opened])
                cpu_after = cpu_times(database)
                p99 = percentile(latencies, 99)
                print(f"open loop: {len(requests)} verifications at {args.open_rate:,.0f}/s ({failures} failed); latency "
                      f"p50 {percentile(latencies, 50):.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms "
                      f"({_verdict(p99 < 15)}: p99 < 15 ms); {'every' if on_broker else 'NOT every'} LoginSucceeded "
                      "on the broker")
                print(cpu_report(cpu_before, cpu_after, len(latencies), "verification at the open rate"))
            print(f"load average after: {_load()}")
        finally:
            server.terminate()
            await server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=6000, help="verifications of the closed loop")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--open-rate", type=float, default=200, help="verifications/s of the open loop (0: none)")
    parser.add_argument("--open-seconds", type=float, default=15)
    parser.add_argument("--set-up", choices=["start", "one-process"], default="start",
                        help="start: `mfa start`, what `make run` starts (default); one-process: `mfa run all`, relay inline")
    parser.add_argument("--workers", type=int, default=0, help="MFA_AUTH_WORKERS for `mfa start` (default: its own, the cores)")
    parser.add_argument("--no-pgbench", dest="pgbench", action="store_false", help="skip the pgbench -N ceiling")
    parser.add_argument("--profile", help="write a py-spy profile of the (first) auth process to this file (collapsed stacks if it ends in .txt, else speedscope)")
    import uvloop

    uvloop.run(main(parser.parse_args()))
