"""Benchmark of the second step of login: enrolled accounts each verify one login with a valid code.

Run: `.venv/bin/python bench/verify.py [--accounts 6000] [--concurrency 64]`.
Starts `mfa run auth` as its own process on a throwaway database, enrols the accounts,
opens one login each, then measures only `POST /v1/logins/{id}/verify` over HTTP.
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

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_runtime, cpu_report, cpu_times, free_port, machine, percentile, start_profiler  # noqa: E402
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


async def fire(port: int, requests: list[bytes], concurrency: int) -> tuple[list[float], int]:
    """Send every request over `concurrency` connections; latencies in ms and how many did not succeed."""
    loop = asyncio.get_running_loop()
    clients = [(await loop.create_connection(_Client, "127.0.0.1", port))[1] for _ in range(concurrency)]
    latencies: list[float] = []
    starts: list[float] = []
    failures = 0
    queue = iter(requests)

    async def worker(client: _Client) -> None:
        nonlocal failures
        for data in queue:
            start = time.perf_counter()
            response = await client.request(data)
            latencies.append((time.perf_counter() - start) * 1000)
            starts.append(start)
            if not (response.startswith(b"HTTP/1.1 200") and b'"result":"success"' in response.replace(b" ", b"")):
                failures += 1

    try:
        await asyncio.gather(*(worker(c) for c in clients))
    finally:
        for client in clients:
            client.transport.close()
    if os.environ.get("BENCH_DEBUG"):
        first = min(starts)
        for bucket in range(int((max(starts) - first) / 0.1) + 1):
            part = [lat for lat, s in zip(latencies, starts, strict=True) if int((s - first) / 0.1) == bucket]
            if part:
                print(f"{bucket / 10:4.1f} s: {len(part)} sent, p50 {percentile(part, 50):.0f} ms, max {max(part):.0f} ms")
    return latencies, failures


async def main(accounts: int, concurrency: int, profile: str | None, relay_mode: str) -> None:
    configure_logging("WARNING", "console")
    async with bench_runtime() as runtime:
        port = free_port()
        env = {**os.environ, "MFA_DATABASE_URL": runtime.settings.database_url, "MFA_EXCHANGE": runtime.settings.exchange,
               "MFA_QUEUE_PREFIX": runtime.settings.queue_prefix, "MFA_AUTH_PORT": str(port), "MFA_LOG_LEVEL": "WARNING"}
        mfa = str(Path(sys.executable).with_name("mfa"))
        env["MFA_RELAY"] = relay_mode
        env["MFA_RELAY_PORT"] = str(free_port())
        server = await asyncio.create_subprocess_exec(mfa, "run", "auth", env=env, stdout=asyncio.subprocess.PIPE)
        relayer = None
        if relay_mode == "separate":
            relayer = await asyncio.create_subprocess_exec(mfa, "relay", "auth", env=env, stdout=asyncio.subprocess.PIPE)
        try:
            await asyncio.wait_for(server.stdout.readline(), 30)
            if relayer is not None:
                await asyncio.wait_for(relayer.stdout.readline(), 30)
            key = await create_key(runtime.pool, "service", label="bench")
            base = f"http://127.0.0.1:{port}"
            headers = {"Authorization": f"Bearer {key}"}
            connector = aiohttp.TCPConnector(limit=concurrency)
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
                await run_pool(range(accounts), enrol, 32)
                print(f"machine: {machine()}")
                print(f"set-up: {accounts} accounts enrolled with one open login each in {time.perf_counter() - t:.1f} s")

                # Every request is built before the clock starts; the code is one step ahead of
                # now, so it is later than the step used to confirm and valid for 60 s or more.
                requests = [
                    verify_request(port, key, login_id, code_for(secrets[account], 1)) for account, login_id in logins
                ]

                spy = None
                if profile:
                    spy = await start_profiler(server.pid, profile, rate=400)
                    await asyncio.sleep(1)  # py-spy attaches
                settle_garbage_collector()  # the load generator's own pauses would count as latency
                cpu_before = cpu_times()
                started = time.perf_counter()
                latencies, failures = await fire(port, requests, concurrency)
                elapsed = time.perf_counter() - started
                backlog = await runtime.pool.fetchval("SELECT count(*) FROM auth.outbox")
                # A verification is done when its LoginSucceeded is on the broker: wait for the
                # outbox to empty, and count the CPU of publishing too.
                while await runtime.pool.fetchval("SELECT count(*) FROM auth.outbox"):  # noqa: ASYNC110 (polls the database)
                    await asyncio.sleep(0.01)
                drained = time.perf_counter() - started
                cpu_after = cpu_times()
                if os.environ.get("BENCH_DEBUG"):
                    async with http.get("/metrics") as r:
                        print("\n".join(line for line in (await r.text()).splitlines() if "request_seconds_bucket" in line and "verify" in line))
                if spy:
                    spy.send_signal(2)
                    await spy.wait()
            succeeded = len(latencies) - failures
            print(f"relay: {relay_mode}")
            print(f"verify: {succeeded} successful verifications in {elapsed:.2f} s = {succeeded / elapsed:,.0f}/s "
                  f"at concurrency {concurrency} ({failures} failed); latency p50 {percentile(latencies, 50):.1f} ms, "
                  f"p99 {percentile(latencies, 99):.1f} ms")
            print(f"events: {backlog} LoginSucceeded still in the outbox when the last answer came; all published after "
                  f"{drained:.2f} s = {succeeded / drained:,.0f} verifications/s with their events on the broker")
            print(cpu_report(cpu_before, cpu_after, len(latencies), "verification"))
        finally:
            for process in (server, relayer):
                if process is not None:
                    process.terminate()
                    await process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--relay", choices=["separate", "inline"], default="separate",
                        help="publish the outbox from its own `mfa relay` process (default) or inside the auth process")
    parser.add_argument("--profile", help="write a py-spy profile of the server to this file (collapsed stacks if it ends in .txt, else speedscope)")
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.accounts, args.concurrency, args.profile, args.relay))
