"""Benchmark of the hosted `verify` prompt over HTTP form posts, beside the JSON verify, in one run.

Run: `.venv/bin/python bench/pages.py [--accounts 2000] [--concurrency 32] [--json-concurrency 64]
[--set-up start|auth]`. Starts what `make run` starts (`mfa start`), as bench/verify.py does, whose
JSON verifications/s the issue's target refers to; `--set-up auth` starts only the auth processes
and the relay (`mfa start auth relay`), so no consumer shares each login's event cost. On a
throwaway database it enrols twice `--accounts` accounts, each with one open login. Half verify
over JSON exactly as bench/verify.py does (`POST /v1/logins/{id}/verify`);
the other half go through the prompt as a browser without JavaScript would: open the `prompt_url`
(token for a cookie, 303), load the prompt (HTML and its CSRF token), post the code (303 to
`return_to`), and the upstream fetches the assertion (`GET /v1/logins/{id}`). Both use the same
lean keep-alive HTTP/1.1 client, so the ratio compares the server's work, not the load generator's.
A round's rate is given twice: until its last event is on the broker (as bench/verify.py counts),
and until the consumers have handled its events too (their work is part of a login's cost; its
CPU figures are counted to then).
The issue's target is a ratio within one run of this machine: complete prompt logins/s at least
0.5 x the JSON verifications/s, p99 per request under 50 ms at concurrency 32.

The two kinds run in `--rounds` alternated rounds (JSON, prompt, JSON, prompt, ...), each rate
the round's work over its time, summed per kind: these VMs change speed from one second to the
next (one JSON run alone gave 1,177 and 1,766/s a minute apart), and a kind measured once, first,
takes whatever that moment was. Each round's rates are printed too, so the spread shows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

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
from bench.verify import (  # noqa: E402
    _children,
    _Client,
    _cmdline,
    code_for,
    fire,
    over_connections,
    run_pool,
    verify_request,
)
from services.common.apikeys import create_key  # noqa: E402
from services.common.logs import configure_logging  # noqa: E402
from services.common.runner import settle_garbage_collector  # noqa: E402

_CSRF = re.compile(rb'name="csrf" value="([^"]+)"')
_COOKIE = re.compile(rb"(?im)^set-cookie: mfa_prompt=([^;\r\n]+)")
_LOCATION = re.compile(rb"(?im)^location: ([^\r\n]+)")
RETURN_TO = "http://127.0.0.1:9/back"  # never fetched: the 303's Location is checked instead


def _request(method: str, target: str, host: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Prompt:
    """One prompt login as its browser sees it, step by step: its link, then its cookie and CSRF token."""

    url: str
    login_id: str
    secret: str
    jar: dict[str, str] = field(default_factory=dict)
    csrf: str = ""


async def _timed(client: _Client, data: bytes, latencies: list[float]) -> bytes:
    start = time.perf_counter()
    response = await client.request(data)
    latencies.append((time.perf_counter() - start) * 1000)
    return response


async def open_link(client: _Client, host: str, key: str, login: Prompt, latencies: list[float]) -> bool:
    """Open the `prompt_url`: a 303 that sets the session cookie."""
    parts = urlsplit(login.url)
    opened = await _timed(client, _request("GET", f"{parts.path}?{parts.query}", host, {}), latencies)
    cookie = _COOKIE.search(opened)
    if not opened.startswith(b"HTTP/1.1 303") or cookie is None:
        return False
    login.jar = {"Cookie": f"mfa_prompt={cookie.group(1).decode()}"}
    return True


async def load_page(client: _Client, host: str, key: str, login: Prompt, latencies: list[float]) -> bool:
    """Load the prompt: its HTML and the form's CSRF token."""
    page = await _timed(client, _request("GET", "/mfa/prompt", host, login.jar), latencies)
    csrf = _CSRF.search(page)
    if not page.startswith(b"HTTP/1.1 200") or csrf is None:
        return False
    login.csrf = csrf.group(1).decode()
    return True


async def post_code(client: _Client, host: str, key: str, login: Prompt, latencies: list[float]) -> bool:
    """Post the code, computed now for the next step: always later than the step used to confirm,
    and never out of its window however long the set-up took. A 303 to `return_to`."""
    form = urlencode({"csrf": login.csrf, "code": code_for(login.secret, 1)}).encode()
    posted = await _timed(client, _request("POST", "/mfa/prompt/code", host, {
        **login.jar, "Origin": f"http://{host}", "Content-Type": "application/x-www-form-urlencoded"}, form), latencies)
    location = _LOCATION.search(posted)
    return posted.startswith(b"HTTP/1.1 303") and location is not None and location.group(1).startswith(
        f"{RETURN_TO}?login_id=".encode())


async def fetch_assertion(client: _Client, host: str, key: str, login: Prompt, latencies: list[float]) -> bool:
    """The upstream fetches the outcome with its assertion."""
    outcome = await _timed(client, _request("GET", f"/v1/logins/{login.login_id}", host,
                                            {"Authorization": f"Bearer {key}"}), latencies)
    return outcome.startswith(b"HTTP/1.1 200") and b'"assertion"' in outcome


STEPS = (("open the link", open_link), ("load the page", load_page), ("post the code", post_code),
         ("fetch the assertion", fetch_assertion))


async def prompt_login(client: _Client, host: str, key: str, login: Prompt, latencies: list[float]) -> bool:
    """One whole prompt login on one keep-alive connection; each request's latency in ms goes to `latencies`."""
    for _, step in STEPS:
        if not await step(client, host, key, login, latencies):
            return False
    return True


async def run_prompts(port: int, key: str, logins: list[Prompt], concurrency: int) -> tuple[list[float], int]:
    """Every prompt login over `concurrency` connections; request latencies in ms and how many failed."""
    host = f"127.0.0.1:{port}"
    latencies: list[float] = []

    async def login(client: _Client, item: Prompt) -> bool:
        return await prompt_login(client, host, key, item, latencies)

    return latencies, await over_connections(port, logins, concurrency, login)


async def run_steps(port: int, key: str, logins: list[Prompt], concurrency: int, database: str, runtime,
                    auth_pid: int, profile: str | None) -> None:
    """The prompt logins one step at a time (every link opened, then every page loaded, ...): each step's rate and
    CPU, and with `profile` a py-spy profile of each step (its number before the file's suffix). Login i uses
    connection i mod `concurrency` in every step, so it meets the same auth process as in a whole login (the
    exchange's read serves its page and its code only there)."""
    host = f"127.0.0.1:{port}"
    loop = asyncio.get_running_loop()
    clients = [(await loop.create_connection(_Client, "127.0.0.1", port))[1] for _ in range(concurrency)]
    try:
        path = Path(profile) if profile else None
        for number, (name, step) in enumerate(STEPS, 1):
            kind, latencies = Kind(), []

            async def worker(k: int, step=step, latencies=latencies) -> int:
                return sum([not await step(clients[k], host, key, login, latencies)
                            for login in logins[k::concurrency]])

            async with (profiling(auth_pid, str(path.with_stem(f"{path.stem}-{number}")) if path else None),
                        kind.measured(database, runtime, len(logins))):
                kind.add(latencies, sum(await asyncio.gather(*(worker(k) for k in range(concurrency)))))
            print(f"step {name}: {kind.rate:,.0f}/s ({kind.failed} failed), p99 {percentile(latencies, 99):.1f} ms; "
                  f"{kind.cpu(name)}")
    finally:
        for client in clients:
            client.transport.close()


async def wait_for_outbox(runtime) -> None:
    """Until every event of the run is on the broker (a login is done when its LoginSucceeded is)."""
    while await runtime.pool.fetchval("SELECT count(*) FROM auth.outbox"):  # noqa: ASYNC110 (polls the database)
        await asyncio.sleep(0.01)


# Every consumer's record of the LoginSucceeded events it handled, over every service's schema.
_HANDLED = " + ".join(f"(SELECT count(*) FROM {schema}.processed_events WHERE event_type = 'LoginSucceeded')"
                      for schema in ("auth", "notifier", "recovery", "audit"))


async def handled_count(runtime) -> int:
    """How many LoginSucceeded events the consumers have handled so far, all consumers together."""
    return await runtime.pool.fetchval(f"SELECT {_HANDLED}")


async def wait_for_handled(runtime, count: int) -> None:
    """Until the consumers have handled `count` LoginSucceeded events in all."""
    while await handled_count(runtime) < count:  # noqa: ASYNC110 (polls the database)
        await asyncio.sleep(0.02)


@dataclass
class Kind:
    """One kind of work over the rounds: its time, CPU, latencies and failures, summed."""

    elapsed: float = 0.0
    handled_elapsed: float = 0.0
    failed: int = 0
    operations: int = 0
    latencies: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    used: dict[int, tuple[str, float]] = field(default_factory=dict)

    @asynccontextmanager
    async def measured(self, database: str, runtime, operations: int, consumers: int = 0):
        """Time of one round of `operations` until their events are on the broker, and until the
        `consumers` that handle each LoginSucceeded have handled them; CPU until then."""
        settle_garbage_collector()
        handled = await handled_count(runtime) if consumers else 0
        before = cpu_times(database)
        started = time.perf_counter()
        failed = self.failed
        yield
        await wait_for_outbox(runtime)
        elapsed = time.perf_counter() - started
        if consumers:
            await wait_for_handled(runtime, handled + consumers * (operations - (self.failed - failed)))
        self.handled_elapsed += time.perf_counter() - started
        after = cpu_times(database)
        for pid, (name, seconds) in after.items():
            self.used[pid] = (name, self.used.get(pid, (name, 0.0))[1] + seconds - before.get(pid, (name, 0.0))[1])
        self.elapsed += elapsed
        self.operations += operations
        self.rates.append((operations - (self.failed - failed)) / elapsed)

    def add(self, latencies: list[float], failed: int) -> None:
        self.latencies += latencies
        self.failed += failed

    @property
    def done(self) -> int:
        return self.operations - self.failed

    @property
    def rate(self) -> float:
        return self.done / self.elapsed

    @property
    def handled_rate(self) -> float:
        return self.done / self.handled_elapsed

    def cpu(self, what: str) -> str:
        return cpu_report({}, self.used, self.operations, what)


async def main(accounts: int, concurrency: int, json_concurrency: int, rounds: int, steps: bool, set_up: str,
               profile: str | None) -> None:
    configure_logging("WARNING", "console")
    async with bench_runtime() as runtime:
        # The machine's database ceiling in the same run, as bench/verify.py prints it.
        ceiling = await asyncio.to_thread(pgbench_ceiling, runtime.settings.database_url)
        port = free_port()
        env = {**os.environ, "MFA_DATABASE_URL": runtime.settings.database_url, "MFA_EXCHANGE": runtime.settings.exchange,
               "MFA_QUEUE_PREFIX": runtime.settings.queue_prefix, "MFA_AUTH_PORT": str(port), "MFA_LOG_LEVEL": "WARNING",
               "MFA_RELAY_PORT": str(free_port()), "MFA_PUBLIC_URL": f"http://127.0.0.1:{port}",
               "MFA_RETURN_URLS": RETURN_TO, "MFA_RECOVERY_PORT": str(free_port()), "MFA_AUDIT_PORT": str(free_port()),
               "MFA_NOTIFIER_PORT": str(free_port()), "MFA_INBOUND_SMTP_PORT": str(free_port()),
               "MFA_MAIL_DIR": f"/tmp/mfa-bench-mail-{os.getpid()}"}
        mfa = str(Path(sys.executable).with_name("mfa"))
        parts = ["auth", "relay"] if set_up == "auth" else []
        server = await asyncio.create_subprocess_exec(mfa, "start", *parts, env=env, stdout=asyncio.subprocess.PIPE)
        try:
            while b"ready" not in await asyncio.wait_for(server.stdout.readline(), 60):
                pass
            key = await create_key(runtime.pool, "service", label="bench")
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=32)) as http:
                api = {"Authorization": f"Bearer {key}"}
                company = f"bench-{uuid.uuid4().hex[:6]}"
                async with http.put(f"/v1/companies/{company}", json={"name": "Bench Co", "mfa_required": False},
                                    headers=api) as r:
                    assert r.status in (200, 201), await r.text()
                prompts: list[Prompt] = []
                verifies: list[tuple[str, str]] = []

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
                    opened = {"account_id": account, **({"return_to": RETURN_TO, "state": "b"} if i % 2 else {})}
                    async with http.post("/v1/logins", json=opened, headers=api) as r:
                        login = await r.json()
                    if i % 2:
                        prompts.append(Prompt(login["prompt_url"], login["login_id"], secret))
                    else:
                        verifies.append((login["login_id"], secret))

                t = time.perf_counter()
                await run_pool(range(2 * accounts), enrol, 32)
                await wait_for_outbox(runtime)
                await queues_drained(runtime.settings.queue_prefix)  # the set-up's events, handled
                # The set-up's writes settled before anything is measured, as pgbench does: else
                # autovacuum and the first reads of fresh pages fall on the first round (its JSON
                # verifications ran 25-30% slower than the later rounds').
                await runtime.pool.execute("VACUUM ANALYZE")
            print(f"machine: {machine()}")
            print(f"set-up: mfa start {' '.join(parts) or '(everything, as make run and bench/verify.py)'}")
            print(f"ceiling: pgbench -N, 16 clients, scale 10, 15 s: {ceiling:,.0f} transactions/s")
            print(f"set-up: {2 * accounts} accounts enrolled with one open login each in "
                  f"{time.perf_counter() - t:.1f} s")

            database = runtime.settings.database_url.rpartition("/")[2]
            auth_pid = next(p for p in _children(server.pid) if " run auth " in _cmdline(p))
            json_run, prompt_run = Kind(), Kind()
            # How many consumers handle each LoginSucceeded (none with --set-up auth): one login
            # verified before the rounds, its event handled everywhere. A round's events still
            # waiting in the queues when its last one is on the broker are work it has not done yet.
            login_id, secret = verifies.pop()
            await fire(port, [verify_request(port, key, login_id, code_for(secret, 1))], 1)
            await wait_for_outbox(runtime)
            await queues_drained(runtime.settings.queue_prefix)
            consumers = await handled_count(runtime)
            print(f"consumers handling each LoginSucceeded: {consumers}")
            if steps:
                requests = [verify_request(port, key, login_id, code_for(secret, 1)) for login_id, secret in verifies]
                async with json_run.measured(database, runtime, len(requests)):
                    json_run.add(*await fire(port, requests, json_concurrency))
                print(f"json verify: {json_run.rate:,.0f}/s ({json_run.failed} failed); {json_run.cpu('verification')}")
                await run_steps(port, key, prompts, concurrency, database, runtime, auth_pid, profile)
                return
            prefix = runtime.settings.queue_prefix
            for r in range(rounds):
                # One step ahead of now, computed before the round: later than the step used to
                # confirm, and in its window however long the set-up and the earlier rounds took.
                requests = [verify_request(port, key, login_id, code_for(secret, 1))
                            for login_id, secret in verifies[r::rounds]]
                # Each round starts once the consumers handled the last one's events, so neither kind
                # is slowed by the other's, and its CPU and second rate run until its own events are
                # handled: else the consumer work a short JSON round leaves queued would not count.
                await queues_drained(prefix)
                async with json_run.measured(database, runtime, len(requests), consumers):
                    latencies, failed = await fire(port, requests, json_concurrency)
                    json_run.add(latencies, failed)
                chunk = prompts[r::rounds]
                await queues_drained(prefix)
                async with profiling(auth_pid, profile if r == rounds - 1 else None), prompt_run.measured(database, runtime, len(chunk), consumers):
                    latencies, failed = await run_prompts(port, key, chunk, concurrency)
                    prompt_run.add(latencies, failed)
                print(f"round {r + 1}: JSON {json_run.rates[-1]:,.0f}/s, prompt {prompt_run.rates[-1]:,.0f}/s = "
                      f"{prompt_run.rates[-1] / json_run.rates[-1]:.2f} x")
            json_rate, rate = json_run.rate, prompt_run.rate
            print(f"json verify: {json_run.done} verifications with their events on the broker in {json_run.elapsed:.2f} s "
                  f"= {json_rate:,.0f}/s at concurrency {json_concurrency} ({json_run.failed} failed); latency p50 "
                  f"{percentile(json_run.latencies, 50):.1f} ms, p99 {percentile(json_run.latencies, 99):.1f} ms")
            print(json_run.cpu("verification"))
            p99 = percentile(prompt_run.latencies, 99)
            print(f"prompt: {prompt_run.done} complete prompt logins (4 requests each, events on the broker) in "
                  f"{prompt_run.elapsed:.2f} s = {rate:,.0f}/s at concurrency {concurrency} ({prompt_run.failed} failed); "
                  f"{len(prompt_run.latencies)} requests, latency p50 {percentile(prompt_run.latencies, 50):.1f} ms, "
                  f"p99 {p99:.1f} ms")
            print(prompt_run.cpu("prompt login"))
            ratio = rate / json_rate
            if consumers:
                print(f"with every event handled by its {consumers} consumers: JSON {json_run.handled_rate:,.0f}/s, "
                      f"prompt {prompt_run.handled_rate:,.0f}/s = {prompt_run.handled_rate / json_run.handled_rate:.2f} x")
            print(f"share of pgbench -N: JSON {json_rate / ceiling:.2f}, prompt logins {rate / ceiling:.2f}")
            print(f"ratio: prompt logins/s = {ratio:.2f} x JSON verifications/s (target >= 0.5: "
                  f"{'PASS' if ratio >= 0.5 else 'FAIL'}); prompt p99 {p99:.1f} ms (target < 50: "
                  f"{'PASS' if p99 < 50 else 'FAIL'})")
        finally:
            server.terminate()
            await server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=2000, help="logins of each kind (twice as many accounts)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections of the prompt logins")
    parser.add_argument("--json-concurrency", type=int, default=64, help="connections of the JSON verifications")
    parser.add_argument("--rounds", type=int, default=3, help="JSON and prompt rounds, alternated, so that a VM whose "
                        "speed drifts during the run slows both kinds alike")
    parser.add_argument("--set-up", choices=["start", "auth"], default="start",
                        help="start: everything `make run` starts, as bench/verify.py measures it (the consumers' "
                        "work on each login's event counts for both kinds); auth: only `mfa start auth relay`")
    parser.add_argument("--steps", action="store_true", help="instead of the ratio: the JSON verifications, then "
                        "the prompt logins one step at a time, with each step's rate and CPU (where a login's cost is)")
    parser.add_argument("--profile", help="write a py-spy profile of the (first) auth process during the last round's prompt logins "
                        "(with --steps: during each step, numbered) to this file (collapsed stacks if it ends in .txt, else speedscope)")
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.accounts, args.concurrency, args.json_concurrency, args.rounds, args.steps, args.set_up,
                    args.profile))
