"""Shared set-up for benchmarks: a throwaway database, unique broker names, percentiles."""

from __future__ import annotations

import asyncio
import dataclasses
import platform
import socket
import subprocess
import uuid
from contextlib import asynccontextmanager

import asyncpg

from services.common.config import Settings
from services.common.db import MigrationSet, migrate
from services.common.runner import migration_sets
from services.common.runtime import Runtime


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
    """Delete the queues whose names carry `run` (quorum queues left behind cost the broker)."""
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "list_queues", "-q", "name", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    channel = await runtime.broker.channel()
    for name in (line.strip() for line in out.decode().splitlines()):
        if run in name:
            await channel.queue_delete(name)
    await channel.close()


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
    runtime = await Runtime(settings).open(pool_size=pool_size)
    try:
        yield runtime
    finally:
        await delete_run_queues(runtime, run)
        channel = await runtime.broker.channel()
        await channel.exchange_delete(settings.exchange)
        await channel.close()
        await runtime.close()
        admin = await asyncpg.connect(f"{head}/postgres")
        await admin.execute(f'DROP DATABASE IF EXISTS "mfa_bench_{run}" WITH (FORCE)')
        await admin.close()
