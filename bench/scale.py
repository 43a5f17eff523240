"""Benchmark of how cost grows with size: verify by account count, the audit log by row count, an outbox backlog.

    .venv/bin/python bench/scale.py [--accounts 10000,100000,1000000] [--audit-rows 1000000,10000000]
                                    [--backlog 200000] [--quick] [--only verify,audit,drain]

One scratch database and exchange on the local PostgreSQL and RabbitMQ, removed at the end.

1. verify: accounts are loaded with SQL (COPY into `auth.accounts` with secrets sealed as the
   service seals them, one past login each) up to each size; then `mfa run auth` beside `mfa relay
   auth` answers `POST /v1/logins/{id}/verify` over HTTP for a random sample of accounts never
   used before (rounds of `--sample`, the best round counts), as `bench/verify.py` measures it.
2. audit: rows are loaded with COPY into `audit.events` with a valid hash chain up to each size;
   then a fresh `mfa run audit` appends `--append` events from the broker, and answers
   `/v1/audit/verify` and the NDJSON export over HTTP; the peak memory of that process is read
   from /proc/<pid>/status (VmHWM, reset before each step through /proc/<pid>/clear_refs).
3. drain: the sustained rate of `bench/events.py --batched` (writers, relay and consumer at once),
   then `--backlog` events are written while no relay runs (a broker outage as the relay sees it),
   and the time from starting the relay to the last event handled is the drain rate.

The targets are ratios within the run (these VMs differ 2-3x from one to the next): verify/s at the
largest account count within 15 % of the smallest; audit verify and export rows/s at the largest
size >= 80 % of the smallest, in constant memory; the backlog drains at >= 90 % of the sustained rate.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import events as events_bench  # noqa: E402
from bench.audit import make_events, publish_all, wait_head  # noqa: E402
from bench.common import bench_runtime, cpu_report, cpu_times, free_port, machine, percentile  # noqa: E402
from bench.verify import code_for, fire, verify_request  # noqa: E402
from services.audit import store as audit_store  # noqa: E402
from services.audit.app import create_app as create_audit_app  # noqa: E402
from services.audit.consumers import build_consumers as build_audit_consumers  # noqa: E402
from services.audit.domain import _row_bytes, chain_hash, format_time  # noqa: E402
from services.audit.handlers import prepare_event, redaction_key  # noqa: E402
from services.auth import domain as auth_domain  # noqa: E402
from services.common import sealing  # noqa: E402
from services.common.apikeys import create_key  # noqa: E402
from services.common.crypto import Keyring  # noqa: E402
from services.common.db import MigrationSet  # noqa: E402
from services.common.events import new_event  # noqa: E402
from services.common.logs import configure_logging  # noqa: E402
from services.common.outbox import OutboxRelay  # noqa: E402
from services.common.runner import settle_garbage_collector  # noqa: E402
from services.common.runtime import Runtime  # noqa: E402

MFA = str(Path(sys.executable).with_name("mfa"))
COMPANY_SIZE = 1000  # accounts per company
CHUNK = 50_000  # rows per COPY


@dataclass
class Verdicts:
    """The ratios the run is judged by, printed together at the end."""

    lines: list[str] = field(default_factory=list)
    failed: int = 0

    def ratio(self, what: str, value: float, target: str, ok: bool) -> None:
        self.failed += not ok
        self.lines.append(f"  {what}: {value:.2f} ({target}) {'PASS' if ok else 'FAIL'}")


def uptime() -> str:
    """`uptime`, and how much of the last minute tasks waited for a CPU (Linux pressure stall information)."""
    line = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()[2].split("=")[1]  # "some avg10=.. avg60=.. ..."
        line += f"; CPU pressure (some, avg60) {some} %"
    except (OSError, IndexError):
        pass
    return line


def service_env(runtime: Runtime, **extra: str) -> dict[str, str]:
    """The environment of a service process on the benchmark's database and exchange."""
    s = runtime.settings
    return {**os.environ, "MFA_DATABASE_URL": s.database_url, "MFA_EXCHANGE": s.exchange,
            "MFA_QUEUE_PREFIX": s.queue_prefix, "MFA_LOG_LEVEL": "WARNING", **extra}


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def our_cpu(runtime: Runtime, pids: list[int]) -> dict[int, float]:
    """CPU seconds so far of `pids` and of every PostgreSQL backend on the benchmark's database.

    Only this run's processes: other work on the machine (and on the shared PostgreSQL) is left
    out, so the cost per operation holds still where rates move with the load.
    """
    backends = await runtime.pool.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
    return {pid: process_cpu(pid) for pid in {*pids, *(r["pid"] for r in backends)}}


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


async def start_service(args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    """An `mfa` sub-command as its own process, once it printed that it listens."""
    proc = await asyncio.create_subprocess_exec(MFA, *args, env=env, stdout=asyncio.subprocess.PIPE)
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if not line:
        raise SystemExit(f"mfa {' '.join(args)} did not start")
    return proc


async def stop(proc: asyncio.subprocess.Process | None) -> None:
    if proc is not None and proc.returncode is None:
        proc.terminate()
        await proc.wait()


# ---- 1. verify by account count ----------------------------------------------------------------

def account_id(i: int) -> str:
    return f"scale-{i:07d}"


def company_id(i: int) -> str:
    return f"scale-co-{i // COMPANY_SIZE:05d}"


def secret_of(i: int) -> str:
    """Account i's TOTP secret, derived so that a million of them need not be kept in memory."""
    return base64.b32encode(hmac.new(b"bench-scale", str(i).encode(), hashlib.sha1).digest()).decode().rstrip("=")


def account_rows(keyring: Keyring, start: int, stop: int, enrolled_at: datetime, last_step: int) -> list[tuple]:
    """Rows of `auth.accounts` as enrolment leaves them: the secret sealed for its account."""
    rows = []
    for i in range(start, stop):
        account = account_id(i)
        sealed = keyring.seal(secret_of(i).encode(), aad=sealing.totp_secret(account))
        rows.append((account, company_id(i), f"{account}@scale.example", "Scale", f"Person {i}", "employee",
                     False, sealed, enrolled_at, last_step))
    return rows


ACCOUNT_COLUMNS = ["account_id", "company_id", "email", "first_name", "last_name", "role", "mfa_required",
                   "totp_secret", "enrolled_at", "last_step"]


async def load_accounts(runtime: Runtime, start: int, stop: int) -> None:
    """Accounts start..stop-1 (their companies, one finished login each), then VACUUM ANALYZE as autovacuum would."""
    keyring = Keyring(runtime.settings.secret_keys)
    pool = runtime.pool
    await pool.execute(
        "INSERT INTO auth.companies (company_id, name) SELECT 'scale-co-' || lpad(c::text, 5, '0'), 'Scale Co ' || c"
        " FROM generate_series($1::int, $2::int) c ON CONFLICT DO NOTHING",
        start // COMPANY_SIZE, (stop - 1) // COMPANY_SIZE,
    )
    enrolled_at = datetime.now(UTC) - timedelta(days=30)
    last_step = auth_domain.time_step(time.time()) - 1000  # an old login: every code of now is newer
    async with pool.acquire() as conn:
        for lo in range(start, stop, CHUNK):
            rows = await asyncio.to_thread(account_rows, keyring, lo, min(stop, lo + CHUNK), enrolled_at, last_step)
            await conn.copy_records_to_table("accounts", schema_name="auth", columns=ACCOUNT_COLUMNS, records=rows)
    # Every account has logged in before: the logins table grows with the directory.
    await pool.execute(
        """INSERT INTO auth.logins (login_id, account_id, company_id, decision, status, method, created_at,
                                    expires_at, completed_at)
           SELECT 'past-' || i, 'scale-' || lpad(i::text, 7, '0'), 'scale-co-' || lpad((i / $3)::text, 5, '0'),
                  'verify', 'succeeded', 'totp', now() - interval '1 day', now() - interval '1 day' + interval '10 minutes',
                  now() - interval '1 day'
           FROM generate_series($1::int, $2::int) i""",
        start, stop - 1, COMPANY_SIZE,
    )
    for table in ("companies", "accounts", "logins"):
        await pool.execute(f"VACUUM ANALYZE auth.{table}")


async def open_logins(http: aiohttp.ClientSession, indices: list[int]) -> list[tuple[int, str]]:
    """One login per account over HTTP (`POST /v1/logins`), 32 at a time: (account index, login id)."""
    opened: list[tuple[int, str]] = []
    queue = iter(indices)

    async def worker() -> None:
        for i in queue:
            async with http.post("/v1/logins", json={"account_id": account_id(i)}) as r:
                body = await r.json()
                assert r.status == 201 and body["decision"] == "verify", body
                opened.append((i, body["login_id"]))

    await asyncio.gather(*(worker() for _ in range(32)))
    return opened


async def empty_outbox(runtime: Runtime, schema: str) -> None:
    while await runtime.pool.fetchval(f"SELECT count(*) FROM {schema}.outbox"):  # noqa: ASYNC110 (polls the database)
        await asyncio.sleep(0.01)


async def verify_section(runtime: Runtime, sizes: list[int], sample: int, rounds: int, concurrency: int,
                         verdicts: Verdicts) -> None:
    print(f"\n== 1. verify by enrolled accounts: sizes {', '.join(f'{s:,}' for s in sizes)}; "
          f"{rounds} round(s) of {sample:,} verifications each, concurrency {concurrency}, best round counts")
    port = free_port()
    env = service_env(runtime, MFA_AUTH_PORT=str(port), MFA_RELAY="separate", MFA_RELAY_PORT=str(free_port()))
    server = relayer = None
    rng = random.Random(17)
    used: set[int] = set()
    best: dict[int, tuple[float, float]] = {}
    costs: dict[int, list[float]] = {}
    loaded = 0
    try:
        server = await start_service(["run", "auth"], env)
        relayer = await start_service(["relay", "auth"], env)
        key = await create_key(runtime.pool, "service", label="bench-scale")
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                                         connector=connector) as http:
            settle_garbage_collector()
            for size in sizes:
                t = time.perf_counter()
                await load_accounts(runtime, loaded, size)
                print(f"accounts {size:,}: loaded {size - loaded:,} with SQL in {time.perf_counter() - t:.1f} s")
                loaded = size
                for n in range(rounds):
                    candidates = [i for i in range(size) if i not in used]
                    picked = rng.sample(candidates, min(sample, len(candidates)))
                    used.update(picked)
                    logins = await open_logins(http, picked)
                    await empty_outbox(runtime, "auth")  # the challenges' events are out before the clock starts
                    # One step ahead of now: newer than every accepted step and valid for 60 s or more.
                    requests = [verify_request(port, key, login, code_for(secret_of(i), 1)) for i, login in logins]
                    cpu_before = cpu_times()
                    ours = await our_cpu(runtime, [server.pid, relayer.pid])
                    started = time.perf_counter()
                    latencies, failures = await fire(port, requests, concurrency)
                    answered = time.perf_counter() - started
                    await empty_outbox(runtime, "auth")  # done once every LoginSucceeded is on the broker
                    elapsed = time.perf_counter() - started
                    cpu_after = cpu_times()
                    cost = cpu_spent(ours, await our_cpu(runtime, [server.pid, relayer.pid])) / len(latencies)
                    ok = len(latencies) - failures
                    rate = ok / elapsed
                    p99 = percentile(latencies, 99)
                    print(f"  round {n + 1}: {ok:,} verified ({failures} failed) in {elapsed:.2f} s = {rate:,.0f}/s with "
                          f"their events on the broker (answers {ok / answered:,.0f}/s); p50 {percentile(latencies, 50):.1f} ms, "
                          f"p99 {p99:.1f} ms; CPU {cost * 1000:.2f} ms per verification (auth, relay and their backends)")
                    print(f"    {cpu_report(cpu_before, cpu_after, len(latencies), 'verification')}")
                    costs.setdefault(size, []).append(cost)
                    if failures:
                        raise SystemExit(f"{failures} verifications failed")
                    if size not in best or rate > best[size][0]:
                        best[size] = (rate, p99)
                rate, p99 = best[size]
                print(f"accounts {size:,}: {rate:,.0f} verifications/s, p99 {p99:.1f} ms (best round)")
    finally:
        await stop(relayer)
        await stop(server)
    small, large = sizes[0], sizes[-1]
    ratio = best[large][0] / best[small][0]
    verdicts.ratio(f"verify/s at {large:,} accounts / at {small:,}", ratio, "target >= 0.85", ratio >= 0.85)
    print(f"  (p99 {best[small][1]:.1f} ms at {small:,}, {best[large][1]:.1f} ms at {large:,}; CPU per verification "
          f"{min(costs[large]) / min(costs[small]):.2f} at {large:,} / at {small:,}, no target)")


# ---- 2. the audit log by row count ---------------------------------------------------------------

AUDIT_COLUMNS = ["seq", "event_id", "event_type", "event_time", "company_id", "subject", "recorded_at", "envelope",
                 "prev_hash", "hash"]


def envelope_templates(key: bytes) -> list[tuple[str, str]]:
    """(type, format string of the stored envelope) for the mix of bench/audit.py, redacted by the real code.

    Each template is a real event prepared for the log, with markers where rows differ.
    """
    marks = {"id": "zzidzz", "time": "2000-01-01T00:00:00Z", "account": "zzaccountzz", "login": "zzloginzz",
             "company": "zzcompanyzz"}
    when = datetime(2000, 1, 1, tzinfo=UTC)
    base = {"login_id": marks["login"], "account_id": marks["account"], "company_id": marks["company"]}
    kinds = [
        ("LoginSucceeded", {**base, "method": "totp"}),
        ("LoginChallengeIssued", {**base, "decision": "verify", "methods": ["totp", "backup_code", "backup_email"],
                                  "expires_at": marks["time"]}),
        ("BackupEmailRequested", {**base, "backup_email": "someone@backup.example", "first_name": "Zoë",
                                  "link_token": "v1.k1.c2VhbGVkLXRva2VuLWJ5dGVz", "expires_at": marks["time"]}),
    ]
    templates = []
    for event_type, data in kinds:
        event = new_event(event_type, data, source="/mfa/auth", subject=marks["account"], company_id=marks["company"],
                          correlation_id=marks["login"], event_id=marks["id"], time=when)
        text = prepare_event(event, key).envelope
        assert "\\" not in text, text  # markers and values need no JSON escaping
        text = text.replace("{", "{{").replace("}", "}}")
        for name, mark in marks.items():
            text = text.replace(mark, "{" + name + "}")
        templates.append((event_type, text))
    return templates


def audit_rows(templates: list[tuple[str, str]], seq: int, prev: bytes, count: int, start: datetime,
               ) -> tuple[list[tuple], int, bytes]:
    """`count` chained rows after (seq, prev): 6 logins, 3 challenges, 1 login link in 10, batches of 500 recorded together."""
    rows = []
    urandom = os.urandom
    for _ in range(count):
        seq += 1
        kind = seq % 10
        event_type, template = templates[0 if kind < 6 else 1 if kind < 9 else 2]
        h = urandom(16).hex()
        event_id = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"
        when = start + timedelta(milliseconds=seq)
        recorded = start + timedelta(milliseconds=(seq // 500 + 1) * 500 + 20)
        company, account = f"bench-co-{seq % 50}", f"bench-acct-{seq % 1000}"
        when_text, recorded_text = format_time(when), format_time(recorded)
        envelope = template.format(id=event_id, time=when_text, account=account, login=f"login-{seq}", company=company)
        digest = chain_hash(prev, _row_bytes(seq, event_id, event_type, when_text, company, account, recorded_text, envelope))
        rows.append((seq, event_id, event_type, when, company, account, recorded, envelope, prev, digest))
        prev = digest
    return rows, seq, prev


async def without_indexes(conn, table: str):
    """Drop `table`'s indexes and unique constraints but its primary key; the statements that make them again.

    A bulk load then builds each index once, sorted, instead of inserting 10 million keys one
    by one; the definitions come from the catalogue, so the table ends in the migrations' shape.
    """
    constraints = await conn.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint"
        " WHERE conrelid = $1::regclass AND contype = 'u'", table)
    indexes = await conn.fetch(
        "SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS def FROM pg_index"
        " WHERE indrelid = $1::regclass AND NOT indisprimary"
        " AND indexrelid NOT IN (SELECT conindid FROM pg_constraint WHERE conrelid = $1::regclass)", table)
    for c in constraints:
        await conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{c["conname"]}"')
    for i in indexes:
        await conn.execute(f"DROP INDEX {i['name']}")
    return [i["def"] for i in indexes] + [f'ALTER TABLE {table} ADD CONSTRAINT "{c["conname"]}" {c["def"]}'
                                          for c in constraints]


async def load_audit(runtime: Runtime, upto: int) -> None:
    """COPY chained rows into `audit.events` until the head is at `upto`, moving the head with each chunk.

    The next chunk is made in a thread while the database takes the previous one; the indexes
    are built again at the end.
    """
    templates = envelope_templates(redaction_key(runtime.settings.secret_keys))
    async with runtime.pool.acquire() as conn:
        await conn.execute("SET maintenance_work_mem = '256MB'")
        rebuild = await without_indexes(conn, "audit.events")
        seq, prev = await audit_store.read_head(conn)
        start = datetime.now(UTC) - timedelta(milliseconds=upto + 86_400_000)

        def make(seq: int, prev: bytes):
            return audit_rows(templates, seq, prev, min(CHUNK, upto - seq), start)

        pending = asyncio.create_task(asyncio.to_thread(make, seq, prev)) if seq < upto else None
        while pending is not None:
            rows, seq, prev = await pending
            pending = asyncio.create_task(asyncio.to_thread(make, seq, prev)) if seq < upto else None
            async with conn.transaction():
                await conn.copy_records_to_table("events", schema_name="audit", columns=AUDIT_COLUMNS, records=rows)
                await conn.execute("UPDATE audit.chain_head SET seq = $1, hash = $2, updated_at = $3 WHERE id",
                                   seq, prev, rows[-1][6])
        for statement in rebuild:
            await conn.execute(statement)
        await conn.execute("RESET maintenance_work_mem")
    await runtime.pool.execute("VACUUM ANALYZE audit.events")


async def settle(runtime: Runtime) -> float:
    """Write the load out (CHECKPOINT, then sync) so that its writeback does not slow the first reader.

    A log of 10 million rows was written over months, not in the last ten minutes: without this,
    the checkpointer and the kernel flush gigabytes while the verify right after the load runs.
    """
    t = time.perf_counter()
    await runtime.pool.execute("CHECKPOINT")
    await asyncio.to_thread(os.sync)
    return time.perf_counter() - t


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def reset_peak(pid: int) -> None:
    """Start VmHWM again from the current RSS (Linux >= 4.0)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


@dataclass
class AuditFigures:
    rows: int
    append: float  # events/s
    verify: float  # rows/s
    export: float  # rows/s
    peaks: dict[str, int]  # step -> VmHWM KiB
    costs: dict[str, float]  # step -> CPU seconds per row


async def measure_audit(runtime: Runtime, size: int, append: int, keyring: Keyring) -> AuditFigures:
    """Append `append` events through a fresh `mfa run audit`, then verify and export all over its HTTP API."""
    base = await runtime.pool.fetchval("SELECT seq FROM audit.chain_head")
    await publish_all(runtime, make_events(append, keyring))  # waiting in the queue when the service starts
    port = free_port()
    proc = await start_service(["run", "audit"], service_env(runtime, MFA_AUDIT_PORT=str(port)))
    peaks: dict[str, int] = {}
    costs: dict[str, float] = {}  # step -> CPU seconds per row of the audit process and its backends
    own: dict[str, float] = {}  # the audit process's part of it
    try:
        started_rss = memory(proc.pid)[0]
        reset_peak(proc.pid)
        await wait_head(runtime.pool, base + append, timeout=max(120, append / 100))
        peaks["append"] = memory(proc.pid)[1]
        span, later = await runtime.pool.fetchrow(
            """WITH r AS (SELECT recorded_at FROM audit.events WHERE seq > $1)
               SELECT extract(epoch FROM max(recorded_at) - min(recorded_at))::float8,
                      count(*) FILTER (WHERE recorded_at > (SELECT min(recorded_at) FROM r)) FROM r""",
            base,
        )
        append_rate = later / span if span else float("nan")  # by the rows' own clock: start-up does not count
        rows = base + append
        key = await create_key(runtime.pool, "auditor", label="bench-scale")
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=None)) as http:
            reset_peak(proc.pid)
            cpu = await our_cpu(runtime, [proc.pid])
            t = time.perf_counter()
            async with http.get("/v1/audit/verify") as r:
                result = await r.json()
            verify_s = time.perf_counter() - t
            peaks["verify"] = memory(proc.pid)[1]
            costs["verify"] = cpu_spent(cpu, await our_cpu(runtime, [proc.pid])) / rows
            own["verify"] = (process_cpu(proc.pid) - cpu[proc.pid]) / rows
            assert result["ok"] and result["rows_checked"] == rows, result
            reset_peak(proc.pid)
            lines = 0
            cpu = await our_cpu(runtime, [proc.pid])
            t = time.perf_counter()
            async with http.get("/v1/audit/events", headers={"Accept": "application/x-ndjson"}) as r:
                assert r.status == 200, await r.text()
                async for chunk in r.content.iter_chunked(1 << 16):
                    lines += chunk.count(b"\n")
            export_s = time.perf_counter() - t
            peaks["export"] = memory(proc.pid)[1]
            t = time.perf_counter()
            async with http.get("/v1/audit/verify") as r:
                assert (await r.json())["ok"]
            again_s = time.perf_counter() - t
            costs["export"] = cpu_spent(cpu, await our_cpu(runtime, [proc.pid])) / rows
            own["export"] = (process_cpu(proc.pid) - cpu[proc.pid]) / rows
            assert lines == rows, (lines, rows)
    finally:
        await stop(proc)
    mib = {step: kib / 1024 for step, kib in peaks.items()}
    print(f"rows {rows:,}: append {append_rate:,.0f} events/s ({append:,} from the broker, peak {mib['append']:.0f} MiB); "
          f"process RSS {started_rss / 1024:.0f} MiB at start")
    for step, took in (("verify", verify_s), ("export", export_s)):
        print(f"  {step} {took:.1f} s = {rows / took:,.0f} rows/s, peak RSS {mib[step]:.0f} MiB, "
              f"CPU {costs[step] * 1e6:.1f} µs per row (the audit process {own[step] * 1e6:.1f}, "
              f"its PostgreSQL backends {(costs[step] - own[step]) * 1e6:.1f})")
    print(f"  verify again after the export {again_s:.1f} s = {rows / again_s:,.0f} rows/s (not counted)")
    return AuditFigures(rows, append_rate, rows / verify_s, rows / export_s, peaks, costs)


async def audit_section(runtime: Runtime, sizes: list[int], append: int, verdicts: Verdicts) -> None:
    print(f"\n== 2. the audit log by rows: sizes {', '.join(f'{s:,}' for s in sizes)}; at each, {append:,} events "
          "appended by the audit consumer, then the whole chain verified and exported over HTTP")
    keyring = Keyring(runtime.settings.secret_keys)
    declare = build_audit_consumers(create_audit_app(runtime))[0]  # the queue and its binding, before publishing
    await declare.start()
    await declare.stop()
    figures: list[AuditFigures] = []
    for size in sizes:
        head = await runtime.pool.fetchval("SELECT seq FROM audit.chain_head")
        t = time.perf_counter()
        await load_audit(runtime, size)
        took = time.perf_counter() - t
        table = await runtime.pool.fetchval("SELECT pg_total_relation_size('audit.events')")
        print(f"rows {size:,}: loaded {size - head:,} chained rows with COPY in {took:.1f} s "
              f"({(size - head) / took:,.0f} rows/s); audit.events with its indexes {table / 2**30:.2f} GiB; "
              f"written out (CHECKPOINT, sync) in {await settle(runtime):.1f} s")
        figures.append(await measure_audit(runtime, size, append, keyring))
    small, large = figures[0], figures[-1]
    label = f"at {large.rows:,} rows / at {small.rows:,}"
    for what, a, b in (("append events/s", small.append, large.append), ("verify rows/s", small.verify, large.verify),
                       ("export rows/s", small.export, large.export)):
        if what.startswith("append"):
            print(f"  (append: {b / a:.2f} {label}, no target)")
        else:
            verdicts.ratio(f"audit {what} {label}", b / a, "target >= 0.80", b / a >= 0.80)
    for step in ("verify", "export"):
        print(f"  (audit {step} CPU per row {label}: {large.costs[step] / small.costs[step]:.2f}, no target: "
              "the cost without the machine's other load)")
    for step in ("verify", "export"):
        grow = large.peaks[step] / small.peaks[step]
        verdicts.ratio(f"audit {step} peak memory {label}", grow, "constant: target <= 1.10", grow <= 1.10)


# ---- 3. the outbox drain after an outage ---------------------------------------------------------

async def drain_section(runtime: Runtime, backlog: int, sustained_total: int, verdicts: Verdicts) -> None:
    print(f"\n== 3. outbox drain: {backlog:,} events waiting after a broker outage, beside bench/events.py --batched "
          f"sustained ({sustained_total:,} events)")
    schema = events_bench.SCHEMA
    relay = OutboxRelay(runtime.pool, runtime.broker, schema, signal=runtime.signal)
    task = asyncio.create_task(relay.run())
    try:
        sustained = await events_bench.sustained(runtime, sustained_total, 50, batched=True)
    finally:
        relay.stop()
        await task
    # The outage: nothing publishes while the writers commit, as when the relay cannot reach the broker.
    consumer = await events_bench.start_consumer(runtime, backlog, batched=True)
    t = time.perf_counter()
    await events_bench.write_events(runtime, [events_bench.ping(sustained_total + n) for n in range(backlog)], 50)
    waiting = await runtime.pool.fetchval(f"SELECT count(*) FROM {schema}.outbox")
    print(f"backlog: {waiting:,} events written in {time.perf_counter() - t:.1f} s while no relay ran")
    relay = OutboxRelay(runtime.pool, runtime.broker, schema, signal=runtime.signal)
    cpu_before = cpu_times()
    started = time.time()
    task = asyncio.create_task(relay.run())
    try:
        await empty_outbox(runtime, schema)
        published = time.time() - started
        handled, consumer_cpu = await events_bench.collect(consumer, 900)
    finally:
        relay.stop()
        await task
    cpu_after = cpu_times()
    cpu_after[0] = ("consumer process", consumer_cpu)
    elapsed = max(handled.values()) - started
    rate = backlog / elapsed
    print(f"drain: {backlog:,} events handled {elapsed:.2f} s after the relay started = {rate:,.0f} events/s "
          f"(all published after {published:.2f} s = {backlog / published:,.0f}/s)")
    print(f"  {cpu_report(cpu_before, cpu_after, backlog, 'event')}")
    verdicts.ratio("backlog drain events/s / sustained", rate / sustained, "target >= 0.90", rate / sustained >= 0.90)


# ---- the run ------------------------------------------------------------------------------------------

def sizes(text: str) -> list[int]:
    values = sorted(int(v.replace("_", "")) for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError("give at least one size")
    return values


QUICK = {"accounts": [1000, 3000], "sample": 300, "audit_rows": [5000, 20000], "append": 1000, "backlog": 3000,
         "sustained": 3000}


async def main(args: argparse.Namespace) -> int:
    configure_logging("WARNING", "console")
    sys.stdout.reconfigure(line_buffering=True)  # progress shows as it goes, also into a pipe or a file
    verdicts = Verdicts()
    print(f"machine: {machine()}")
    print(f"load before: {uptime()}")
    extra = [MigrationSet.for_service(events_bench.SCHEMA, Path(__file__).parent / "migrations")]
    async with bench_runtime(extra, pool_size=8) as runtime:
        if "verify" in args.only:
            await verify_section(runtime, args.accounts, args.sample, args.rounds, args.concurrency, verdicts)
        if "audit" in args.only:
            await audit_section(runtime, args.audit_rows, args.append, verdicts)
        if "drain" in args.only:
            await drain_section(runtime, args.backlog, args.sustained, verdicts)
        size = await runtime.pool.fetchval("SELECT pg_database_size(current_database())")
    print(f"\n== ratios (within this run; database {size / 2**30:.1f} GiB before it was dropped)")
    print("\n".join(verdicts.lines))
    print(f"load after: {uptime()}")
    return 1 if verdicts.failed else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=sizes, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--sample", type=int, default=5000, help="verifications per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per account count (the best counts)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--audit-rows", type=sizes, default=[1_000_000, 10_000_000])
    parser.add_argument("--append", type=int, default=20_000, help="events appended by the audit consumer at each size")
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--sustained", type=int, default=100_000, help="events of the sustained run beside the drain")
    parser.add_argument("--only", type=lambda v: set(v.split(",")), default={"verify", "audit", "drain"},
                        help="sections to run: verify,audit,drain")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run: " + json.dumps(QUICK))
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    return args


if __name__ == "__main__":
    import uvloop  # as `mfa run` uses

    sys.exit(uvloop.run(main(parse())))
