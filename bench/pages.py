"""Benchmark of the hosted `verify` prompt over HTTP form posts, as a browser without JavaScript drives it.

Run: `.venv/bin/python bench/pages.py [--accounts 2000] [--concurrency 32]`.
Starts `mfa run auth` (and `mfa relay auth`) on a throwaway database, enrols the accounts and opens
one login each with `return_to`, then measures per login: open the `prompt_url` (token for cookie,
303), load the prompt (HTML, its CSRF token), post the code (303 to `return_to`), and fetch the
assertion with `GET /v1/logins/{id}` as the upstream would. The issue's target is a ratio within one
run of this machine: complete prompt logins/s at least 0.5 x the JSON verifications/s of
bench/verify.py, p99 per request under 50 ms at concurrency 32.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_runtime, cpu_report, cpu_times, free_port, machine, percentile  # noqa: E402
from bench.verify import code_for, run_pool  # noqa: E402
from services.common.apikeys import create_key  # noqa: E402
from services.common.logs import configure_logging  # noqa: E402
from services.common.runner import settle_garbage_collector  # noqa: E402

_CSRF = re.compile(rb'name="csrf" value="([^"]+)"')
RETURN_TO = "http://127.0.0.1:9/back"  # never fetched: the 303's Location is checked instead


async def prompt_login(http: aiohttp.ClientSession, key: str, prompt_url: str, login_id: str, code: str,
                       latencies: list[float]) -> bool:
    """One whole prompt login; each request's latency in ms is added to `latencies`."""

    async def timed(method: str, url: str, **kwargs) -> aiohttp.ClientResponse:
        start = time.perf_counter()
        response = await http.request(method, url, allow_redirects=False, **kwargs)
        await response.read()
        latencies.append((time.perf_counter() - start) * 1000)
        return response

    opened = await timed("GET", urlsplit(prompt_url)._replace(scheme="", netloc="").geturl())
    cookie = opened.cookies.get("mfa_prompt")
    if opened.status != 303 or cookie is None:
        return False
    headers = {"Cookie": f"mfa_prompt={cookie.value}"}
    page = await timed("GET", "/mfa/prompt", headers=headers)
    match = _CSRF.search(await page.read())
    if page.status != 200 or not match:
        return False
    posted = await timed("POST", "/mfa/prompt/code", headers={**headers, "Origin": str(http._base_url)},
                         data={"csrf": match.group(1).decode(), "code": code})
    if posted.status != 303 or not posted.headers.get("Location", "").startswith(RETURN_TO + "?login_id="):
        return False
    outcome = await timed("GET", f"/v1/logins/{login_id}", headers={"Authorization": f"Bearer {key}"})
    return outcome.status == 200 and b'"assertion"' in await outcome.read()


async def main(accounts: int, concurrency: int) -> None:
    configure_logging("WARNING", "console")
    async with bench_runtime() as runtime:
        port = free_port()
        env = {**os.environ, "MFA_DATABASE_URL": runtime.settings.database_url, "MFA_EXCHANGE": runtime.settings.exchange,
               "MFA_QUEUE_PREFIX": runtime.settings.queue_prefix, "MFA_AUTH_PORT": str(port), "MFA_LOG_LEVEL": "WARNING",
               "MFA_RELAY": "separate", "MFA_RELAY_PORT": str(free_port()), "MFA_PUBLIC_URL": f"http://127.0.0.1:{port}"}
        mfa = str(Path(sys.executable).with_name("mfa"))
        server = await asyncio.create_subprocess_exec(mfa, "run", "auth", env=env, stdout=asyncio.subprocess.PIPE)
        relayer = await asyncio.create_subprocess_exec(mfa, "relay", "auth", env=env, stdout=asyncio.subprocess.PIPE)
        try:
            await asyncio.wait_for(server.stdout.readline(), 30)
            await asyncio.wait_for(relayer.stdout.readline(), 30)
            key = await create_key(runtime.pool, "service", label="bench")
            base = f"http://127.0.0.1:{port}"
            connector = aiohttp.TCPConnector(limit=concurrency)
            jar = aiohttp.DummyCookieJar()  # each login carries its own cookie by hand
            async with aiohttp.ClientSession(base, connector=connector, cookie_jar=jar) as http:
                api = {"Authorization": f"Bearer {key}"}
                company = f"bench-{uuid.uuid4().hex[:6]}"
                async with http.put(f"/v1/companies/{company}", json={"name": "Bench Co", "mfa_required": False},
                                    headers=api) as r:
                    assert r.status in (200, 201), await r.text()
                logins: list[tuple[str, str, str]] = []

                async def enrol(i: int) -> None:
                    account = f"{company}-{i}"
                    body = {"company_id": company, "email": f"{account}@bench.example", "first_name": "B",
                            "last_name": "Ench", "role": "employee", "mfa_required": False}
                    async with http.put(f"/v1/accounts/{account}", json=body, headers=api) as r:
                        assert r.status == 201, await r.text()
                    async with http.post(f"/v1/accounts/{account}/mfa/enrollment", headers=api) as r:
                        secret = (await r.json())["secret"]
                    async with http.post(f"/v1/accounts/{account}/mfa/enrollment/confirm",
                                         json={"code": code_for(secret)}, headers=api) as r:
                        assert r.status == 201, await r.text()
                    async with http.post("/v1/logins", json={"account_id": account, "return_to": RETURN_TO,
                                                             "state": "b"}, headers=api) as r:
                        login = await r.json()
                    logins.append((login["prompt_url"], login["login_id"], code_for(secret, 1)))

                t = time.perf_counter()
                await run_pool(range(accounts), enrol, 32)
                print(f"machine: {machine()}")
                print(f"set-up: {accounts} accounts enrolled with one open prompt each in {time.perf_counter() - t:.1f} s")
                latencies: list[float] = []
                failures = 0

                async def one(item: tuple[str, str, str]) -> None:
                    nonlocal failures
                    if not await prompt_login(http, key, *item, latencies):
                        failures += 1

                settle_garbage_collector()
                cpu_before = cpu_times()
                started = time.perf_counter()
                await run_pool(logins, one, concurrency)
                elapsed = time.perf_counter() - started
                cpu_after = cpu_times()
            done = len(logins) - failures
            print(f"prompt: {done} complete prompt logins in {elapsed:.2f} s = {done / elapsed:,.0f}/s at concurrency "
                  f"{concurrency} ({failures} failed); {len(latencies)} requests, latency p50 "
                  f"{percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms")
            print(cpu_report(cpu_before, cpu_after, len(logins), "prompt login"))
        finally:
            for process in (server, relayer):
                process.terminate()
                await process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.accounts, args.concurrency))
