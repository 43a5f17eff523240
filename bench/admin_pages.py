"""Benchmark of the administrator's Employees tab for a company of 5,000 employees, over HTTP.

    .venv/bin/python bench/admin_pages.py [--employees 5000] [--others 100000] [--requests 200] [--concurrency 8]

Runs the real auth app on a local port against the local PostgreSQL and RabbitMQ, on a throwaway
database and exchange (removed at the end). One company has `--employees` accounts, `--others`
more are spread over 20 other companies (so the index has to pick one company out of many). An
admin session (the `admin-sessions` link, exchanged for its cookie) then fetches, `--requests`
times each, `--concurrency` at a time: the first page, a page deep in the list (keyset cursor
near the end), the last page, and a search by name. Each figure is the whole HTML page (session
check, list query, count, template).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from bench.common import bench_runtime, free_port, machine, percentile  # noqa: E402
from services.auth.app import create_app  # noqa: E402
from services.auth.handlers.admin import encode_cursor  # noqa: E402
from services.auth.store import EmployeeRow  # noqa: E402
from services.common.apikeys import create_key  # noqa: E402
from services.common.logs import configure_logging  # noqa: E402


async def seed(pool, employees: int, others: int) -> None:
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO auth.companies (company_id, name) VALUES ('big', 'Big BV')")
        await conn.execute("INSERT INTO auth.companies (company_id, name) SELECT 'co' || g, 'Co ' || g"
                           " FROM generate_series(0, 19) g")
        await conn.execute(
            """INSERT INTO auth.accounts (account_id, company_id, email, first_name, last_name, role)
               SELECT 'a' || g, 'big', 'e' || md5(g::text) || '@big.example', 'First' || g, 'Last' || g,
                      CASE WHEN g = 1 THEN 'admin' ELSE 'employee' END
               FROM generate_series(1, $1) g""", employees)
        await conn.execute(
            """INSERT INTO auth.accounts (account_id, company_id, email, first_name, last_name, role)
               SELECT 'o' || g, 'co' || (g % 20), 'o' || md5(g::text) || '@other.example', 'F', 'L', 'employee'
               FROM generate_series(1, $1) g""", others)
        await conn.execute("ANALYZE auth.accounts")


def cursor_at(row) -> str:
    return encode_cursor(EmployeeRow(row["account_id"], row["email"], "", "", "", False, False, False, None, None, None))


async def measure(session: aiohttp.ClientSession, url: str, requests: int, concurrency: int) -> tuple[list[float], int]:
    times: list[float] = []
    rows = 0
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        nonlocal rows
        async with gate:
            start = time.perf_counter()
            async with session.get(url) as response:
                text = await response.text()
                assert response.status == 200, (response.status, text[:300])
            times.append((time.perf_counter() - start) * 1000)
            rows = len(re.findall(r'<td class="email">', text))

    await asyncio.gather(*(one() for _ in range(requests)))
    return times, rows


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--employees", type=int, default=5000)
    parser.add_argument("--others", type=int, default=100000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    async with bench_runtime() as runtime:
        port = free_port()
        runtime.settings = dataclasses.replace(runtime.settings, public_url=f"http://127.0.0.1:{port}")
        app = create_app(runtime)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await seed(runtime.pool, args.employees, args.others)
            key = await create_key(runtime.pool, "service", label="bench")
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                async with http.post(f"{base}/v1/companies/big/admin-sessions", headers={"Authorization": f"Bearer {key}"},
                                     json={"actor_account_id": "a1", "return_to": f"{base}/back"}) as response:
                    link = (await response.json())["url"]
                async with http.get(link) as response:
                    assert response.status == 200 and str(response.url).endswith("/mfa/admin/employees")
                async with runtime.pool.acquire() as conn:
                    ordered = await conn.fetch("SELECT account_id, email FROM auth.accounts WHERE company_id = 'big'"
                                               " ORDER BY email, account_id")
                deep = cursor_at(ordered[int(len(ordered) * 0.9)])
                last = cursor_at(ordered[-30])
                print(f"{machine()}; company of {args.employees} among {args.employees + args.others} accounts; "
                      f"{args.requests} requests each, concurrency {args.concurrency}")
                for name, path in [("first page", "/mfa/admin/employees"),
                                   ("page at 90%", f"/mfa/admin/employees?after={deep}"),
                                   ("last page", f"/mfa/admin/employees?after={last}"),
                                   ("search 'Last49'", "/mfa/admin/employees?q=Last49")]:
                    await measure(http, base + path, 10, 2)  # warm up
                    times, rows = await measure(http, base + path, args.requests, args.concurrency)
                    print(f"  {name:16s} {rows:3d} rows  p50 {percentile(times, 50):6.1f} ms  "
                          f"p99 {percentile(times, 99):6.1f} ms")
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
