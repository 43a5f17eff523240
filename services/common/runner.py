"""Running services: migrate, open the runtime, serve the apps, stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from pathlib import Path

from aiohttp import web

from .broker import BrokerUnreachable
from .config import Settings
from .db import DatabaseUnreachable, MigrationSet, migrate
from .logs import get_logger
from .runtime import Runtime
from .service import ServiceSpec

log = get_logger("runner")

# API keys are shared by every service's edge, so they live in their own small schema.
IAM_MIGRATIONS = MigrationSet("iam", (Path(__file__).parent / "migrations" / "iam",))


def migration_sets(specs: list[ServiceSpec]) -> list[MigrationSet]:
    return [IAM_MIGRATIONS, *(spec.migration_set for spec in specs)]


async def run_migrations(settings: Settings, specs: list[ServiceSpec]) -> list[str]:
    return await migrate(settings.database_url, migration_sets(specs))


def settle_garbage_collector() -> None:
    """Keep full garbage collections short and rare once the process is serving.

    Everything built at start-up (modules, schemas, apps) lives as long as the process, so it
    is frozen out of the collector's scans. With CPython's default first threshold (700
    allocations) the objects of requests still in flight were promoted on every few requests
    and full collections of 20-40 ms ran every few seconds, stalling every request in flight;
    a threshold of 20,000 lets them die young.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


async def serve(settings: Settings, specs: list[ServiceSpec], *, ready_message: bool = True) -> int:
    """Serve `specs` in this process until SIGTERM or SIGINT; returns the exit code."""
    try:
        await run_migrations(settings, specs)
        runtime = await Runtime(settings).open(pool_size=sum(spec.pool_size for spec in specs))
    except (DatabaseUnreachable, BrokerUnreachable) as exc:
        print(f"mfa: {exc}", file=sys.stderr)
        return 2
    if settings.uses_dev_secret_key:
        log.warning("dev_secret_key", detail="MFA_SECRET_KEYS is not set: secrets are sealed with the public development key")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runners: list[web.AppRunner] = []
    try:
        for spec in specs:
            app = spec.create_app(runtime)
            runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5, access_log=None)
            await runner.setup()
            runners.append(runner)
            port = getattr(settings, spec.port_setting)
            await web.TCPSite(runner, settings.host, port).start()
            log.info("service_listening", service=spec.name, url=f"http://{settings.host}:{port}")
            if ready_message:
                print(f"{spec.name:9s} listening on http://{settings.host}:{port}", flush=True)
        settle_garbage_collector()
        await stop.wait()
        log.info("shutdown_requested")
    finally:
        # Reverse order: consumers of later apps stop before the shared runtime closes.
        for runner in reversed(runners):
            await runner.cleanup()
        await runtime.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("shutdown_complete")
    return 0
