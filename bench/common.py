"""Shared set-up for benchmarks: a throwaway database, unique broker names, percentiles."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from services.common.brokeradmin import teardown
from services.common.config import Settings
from services.common.db import MigrationSet, migrate
from services.common.runner import migration_sets
from services.common.runtime import Runtime

# Benchmarks run services with the development key and one broker user, as `make run` does.
os.environ.setdefault("MFA_ENV", "development")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_profiler(pid: int, path: str, rate: int = 100) -> asyncio.subprocess.Process:
    """py-spy sampling process `pid` into `path` (collapsed stacks if it ends in .txt, else speedscope)."""
    return await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(pid), "-o", path, "-r", str(rate),
        "-f", "raw" if path.endswith(".txt") else "speedscope", "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )


@asynccontextmanager
async def profiling(pid: int, path: str | None, rate: int = 400):
    """py-spy on process `pid` into `path` around the block, attached before it starts; nothing without a path."""
    if not path:
        yield
        return
    spy = await start_profiler(pid, path, rate=rate)
    await asyncio.sleep(1)  # py-spy attaches
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes the profile and exits
        await spy.wait()


def machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"{cores} cores ({cpu}), Python {platform.python_version()}"


async def delete_run_queues(runtime: Runtime, run: str) -> None:
    """Delete the run's queues and exchanges (quorum queues left behind cost the broker)."""
    await teardown(runtime.settings, exchange=True)


@asynccontextmanager
async def bench_runtime(extra: list[MigrationSet] | None = None, pool_size: int = 20):
    """A Runtime on a fresh database and exchange, removed afterwards."""
    from services.registry import SERVICES

    run = uuid.uuid4().hex[:8]
    base = Settings.from_env()
    head, _, _ = base.database_url.rpartition("/")
    settings = dataclasses.replace(
        base,
        database_url=f"{head}/mfa_bench_{run}",
        exchange=f"mfa.events.bench.{run}",
        queue_prefix=f"bench.{run}.",
        log_level="WARNING",
    )
    await migrate(settings.database_url, [*migration_sets(list(SERVICES.values())), *(extra or [])])
    runtime = await Runtime.open(settings, pool_size=pool_size)
    try:
        yield runtime
    finally:
        await delete_run_queues(runtime, run)
        await runtime.close()
        admin = await asyncpg.connect(f"{head}/postgres")
        await admin.execute(f'DROP DATABASE IF EXISTS "mfa_bench_{run}" WITH (FORCE)')
        await admin.close()


def pgbench_ceiling(database_url: str, *, scale: int = 10, clients: int = 16, threads: int = 2,
                    seconds: int = 15) -> float:
    """This machine's database ceiling: `pgbench -N` transactions/s on a scratch database, dropped after.

    The figure the benchmarks divide by, so that a result holds on any machine: TPC-B without
    the updates of the two small tables (-N), so clients do not queue on a few rows.
    """
    head, _, _ = database_url.rpartition("/")
    scratch = f"mfa_pgbench_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(f"{head}/{scratch}")
    conn_args = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432), "-U", parts.username or "postgres"]
    env = {**os.environ, **({"PGPASSWORD": parts.password} if parts.password else {})}
    subprocess.run(["createdb", *conn_args, scratch], check=True, env=env)
    try:
        subprocess.run(["pgbench", *conn_args, "-i", "-q", "-s", str(scale), scratch], check=True, env=env,
                       capture_output=True)
        run = subprocess.run(["pgbench", *conn_args, "-N", "-c", str(clients), "-j", str(threads), "-T", str(seconds),
                              scratch], check=True, env=env, capture_output=True, text=True)
    finally:
        subprocess.run(["dropdb", *conn_args, "--force", scratch], env=env, capture_output=True)
    found = re.search(r"tps = ([\d.]+) \(without initial connection time\)", run.stdout)
    if not found:
        raise RuntimeError(f"pgbench printed no tps: {run.stdout[-500:]}")
    return float(found.group(1))


async def queues_drained(prefix: str, timeout: float = 600.0) -> float:
    """Wait until every queue named `prefix...` holds no message, ready or unacknowledged; seconds waited.

    Work a set-up leaves behind (the audit log appending its events, say) would otherwise be done
    during the measurement and counted in its CPU and latency.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    quiet_since = None
    while loop.time() - started < timeout:
        out = await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "-q", "--no-table-headers", "list_queues",
                                                       "name", "messages_ready", "messages_unacknowledged"],
                                      capture_output=True, text=True)
        busy = sum(int(n) for line in out.stdout.splitlines() if line.startswith(prefix)
                   for n in line.split()[1:] if n.isdigit())
        if busy == 0:
            quiet_since = quiet_since or loop.time()
            if loop.time() - quiet_since >= 1.0:
                return loop.time() - started
        else:
            quiet_since = None
        await asyncio.sleep(0.5)
    raise TimeoutError(f"queues {prefix}* still hold messages after {timeout:.0f} s")


def cpu_times(database: str | None = None) -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by every process on the machine: pid -> (program, seconds).

    Kept per process so that one that exits during the run (a PostgreSQL backend whose client
    closed, say) does not take its earlier CPU time out of its program's total. With
    `database`, PostgreSQL backends of other databases (other work on a shared server) are
    counted apart, as `postgres (other databases)`.
    """
    import os

    tick = os.sysconf("SC_CLK_TCK")
    totals: dict[int, tuple[str, float]] = {}
    parents: dict[int, int] = {}
    mine = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        parents[int(pid)] = int(fields[1])
        if name.startswith("python") or name == "mfa":
            # Tell the load generator from the service: name the script or the mfa sub-command.
            args = [a.decode(errors="replace") for a in cmd if a]
            script = next((a for a in args[1:] if a.endswith(".py")), None)
            if "services.cli" in args or (len(args) > 1 and os.path.basename(args[1]) == "mfa"):
                # `mfa run auth`, `mfa relay all`, `mfa start`: the processes of one kind add up
                first = args.index("services.cli") + 1 if "services.cli" in args else 2
                name = "mfa " + " ".join(a for a in args[first:] if not a.startswith("-"))
            else:
                name = os.path.basename(script) if script else " ".join(os.path.basename(a) for a in args[:3])
            name += "".join(f" {a}" for a in args if a in ("--sink", "--consumer"))  # a benchmark's child process
        if database and name == "postgres" and cmd and cmd[0].startswith(b"postgres: "):
            words = cmd[0].decode(errors="replace").split()
            # A backend says "postgres: 15/main: user database host(port) state"; the server's own processes do not.
            if len(words) > 4 and "(" in words[4] and words[3] != database:
                name = "postgres (other databases)"
        if name.startswith("kworker"):
            name = "kworker"  # the kernel renames its workers by the queue they serve
        totals[int(pid)] = (name, (int(fields[11]) + int(fields[12])) / tick)

    def ours(pid: int) -> bool:
        while pid > 1:
            if pid == mine:
                return True
            pid = parents.get(pid, 0)
        return False

    # Python processes this benchmark did not start (other work on the machine) are counted apart.
    return {pid: (name if ours(pid) or not _python(name) else f"other: {name}", sec)
            for pid, (name, sec) in totals.items()}


def _python(name: str) -> bool:
    return name.startswith(("python", "mfa ", "pytest")) or name.endswith(".py")


def cpu_report(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], operations: int, what: str
) -> str:
    """Milliseconds of CPU per operation by program between two `cpu_times()` readings, largest first.

    A process started during the run counts whole; one that exited during it is not counted.
    Python processes the benchmark did not start and PostgreSQL backends of other databases
    (`cpu_times`) are summed apart, after the figures.
    """
    used: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        used[name] = used.get(name, 0.0) + seconds - before.get(pid, (name, 0.0))[1]
    def other(name: str) -> bool:
        return name.startswith("other: ") or name == "postgres (other databases)"

    rows = sorted(((sec, name) for name, sec in used.items() if sec > 0.005 and not other(name)), reverse=True)
    total = sum(sec for sec, _ in rows)
    elsewhere = sum(sec for name, sec in used.items() if other(name))
    parts = ", ".join(f"{name} {sec * 1000 / operations:.2f}" for sec, name in rows[:10])
    line = f"cpu per {what}: {total * 1000 / operations:.2f} ms in all ({parts})"
    if elsewhere > 0.005:  # processes this benchmark did not start, on a shared machine
        line += f"; other work on the machine meanwhile: {elsewhere * 1000 / operations:.2f} ms"
    return line
