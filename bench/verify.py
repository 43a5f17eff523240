"""Benchmark of the second step of login: enrolled accounts each verify one login with a valid code.

Run: `.venv/bin/python bench/verify.py [--accounts 3000] [--concurrency 64]`.
Starts `mfa run auth` as its own process on a throwaway database, enrols the accounts,
opens one login each, then measures only `POST /v1/logins/{id}/verify` over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_runtime, cpu_report, cpu_times, free_port, machine, percentile  # noqa: E402
from services.auth import domain  # noqa: E402
from services.common.apikeys import create_key  # noqa: E402
from services.common.logs import configure_logging  # noqa: E402


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


async def main(accounts: int, concurrency: int, profile: str | None) -> None:
    configure_logging("WARNING", "console")
    async with bench_runtime() as runtime:
        port = free_port()
        env = {**os.environ, "MFA_DATABASE_URL": runtime.settings.database_url, "MFA_EXCHANGE": runtime.settings.exchange,
               "MFA_QUEUE_PREFIX": runtime.settings.queue_prefix, "MFA_AUTH_PORT": str(port), "MFA_LOG_LEVEL": "WARNING"}
        mfa = str(Path(sys.executable).with_name("mfa"))
        server = await asyncio.create_subprocess_exec(mfa, "run", "auth", env=env, stdout=asyncio.subprocess.PIPE)
        try:
            await asyncio.wait_for(server.stdout.readline(), 30)
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

                latencies: list[float] = []
                failures = 0

                async def verify(item: tuple[str, str]) -> None:
                    nonlocal failures
                    account, login_id = item
                    # One step ahead of now: always later than the step used to confirm.
                    body = {"method": "totp", "code": code_for(secrets[account], 1)}
                    start = time.perf_counter()
                    async with http.post(f"/v1/logins/{login_id}/verify", json=body) as r:
                        await r.read()
                        ok = r.status == 200
                    latencies.append((time.perf_counter() - start) * 1000)
                    failures += not ok

                spy = None
                if profile:
                    spy = await asyncio.create_subprocess_exec(
                        str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(server.pid), "-o", profile,
                        "-f", "raw" if profile.endswith(".txt") else "speedscope", "--nonblocking", stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL)
                    await asyncio.sleep(1)  # py-spy attaches
                cpu_before = cpu_times()
                started = time.perf_counter()
                await run_pool(logins, verify, concurrency)
                elapsed = time.perf_counter() - started
                cpu_after = cpu_times()
                if spy:
                    spy.send_signal(2)
                    await spy.wait()
            succeeded = len(latencies) - failures
            print(f"verify: {succeeded} successful verifications in {elapsed:.2f} s = {succeeded / elapsed:,.0f}/s "
                  f"at concurrency {concurrency} ({failures} failed); latency p50 {percentile(latencies, 50):.1f} ms, "
                  f"p99 {percentile(latencies, 99):.1f} ms")
            print(cpu_report(cpu_before, cpu_after, len(latencies), "verification"))
        finally:
            server.terminate()
            await server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--profile", help="write a py-spy profile of the server to this file (collapsed stacks if it ends in .txt, else speedscope)")
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.accounts, args.concurrency, args.profile))
