"""Running services: migrate, open the runtime, serve the apps, stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from .broker import BrokerUnreachable
from .config import ConfigError, Settings
from .db import DatabaseUnreachable, MigrationSet, migrate
from .logs import get_logger
from .outbox import OutboxRelay
from .runtime import Runtime, cancel_and_wait
from .service import ServiceSpec
from .web import create_base_app

log = get_logger("runner")

# API keys are shared by every service's edge, so they live in their own small schema.
IAM_MIGRATIONS = MigrationSet("iam", (Path(__file__).parent / "migrations" / "iam",))


def migration_sets(specs: list[ServiceSpec]) -> list[MigrationSet]:
    return [IAM_MIGRATIONS, *(spec.migration_set for spec in specs)]


async def run_migrations(settings: Settings, specs: list[ServiceSpec]) -> list[str]:
    return await migrate(settings.database_url, migration_sets(specs))


async def relay(settings: Settings, specs: list[ServiceSpec], *, ready_message: bool = True,
                migrations: bool = True) -> int:
    """Publish the outboxes of `specs` in this process only, until SIGTERM or SIGINT (`mfa relay`).

    With MFA_RELAY=separate the service processes leave their outboxes to this one, so that
    publishing gets its own share of the CPU instead of queueing behind HTTP requests on one
    event loop (under full load an inline relay published about half as fast as logins were
    verified). The services' commits wake it through NOTIFY; several may run (partitions are
    shared out by advisory locks). `migrations=False`: the caller (`mfa start`) applied them.
    """
    publishing = [spec for spec in specs if spec.publishes]
    schemas = [spec.schema for spec in publishing]
    try:
        settings.check_safe_to_serve()
        if migrations:
            await run_migrations(settings, specs)
        # Each outbox is published as the user of the service that wrote it.
        runtime = await Runtime.open(settings, parties=[spec.name for spec in publishing], pool_size=len(schemas) + 2)
    except (DatabaseUnreachable, BrokerUnreachable, ConfigError) as exc:
        print(f"mfa: {exc}", file=sys.stderr)
        return 2
    relays = [
        OutboxRelay(runtime.pool, runtime.broker_for(spec.name), spec.schema, signal=runtime.signal)
        for spec in publishing
    ]
    tasks = [asyncio.create_task(r.run(), name=f"{r.schema}-relay") for r in relays]
    # Health and metrics like a service's (the outbox backlogs, events published), nothing else.
    runner = web.AppRunner(create_base_app(runtime, "relay", *schemas), handle_signals=False, access_log=None)
    async with _stop_signals() as stop:
        try:
            await runner.setup()
            try:
                await web.TCPSite(runner, settings.host, settings.relay_port).start()
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                print(f"mfa: {port_taken(settings, ('relay_port',), exc)}", file=sys.stderr)
                return 2
            url = f"http://{settings.host}:{settings.relay_port}"
            log.info("relay_running", schemas=schemas, url=url)
            if ready_message:
                print(f"relay     publishing the outboxes of {', '.join(schemas)}; health on {url}", flush=True)
            await _until(stop)
        finally:
            await runner.cleanup()
            for r in relays:
                r.stop()
            _, late = await asyncio.wait(tasks, timeout=5)
            for task in late:  # a publish stuck on a dead broker: its rows stay in the outbox
                await cancel_and_wait(task)
            await runtime.close()
    log.info("shutdown_complete")
    return 0


@contextlib.asynccontextmanager
async def _stop_signals() -> AsyncIterator[asyncio.Event]:
    """An event that SIGTERM or SIGINT sets while the block runs."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _until(stop: asyncio.Event) -> None:
    """Serve until `stop` is set, with the collector settled for the long run."""
    settle_garbage_collector()
    await stop.wait()
    log.info("shutdown_requested")


# SIGTERM to exit within 10 s: in-flight HTTP requests get 3 s, then (in each app's cleanup
# context) in-flight messages 3 s and the relay 2 s; apps shut down side by side.
HTTP_DRAIN_SECONDS = 3.0
SHUTDOWN_DEADLINE_SECONDS = 9.0


async def _shut_down(runners: list[web.AppRunner], runtime: Runtime) -> None:
    """Stop every app and close the runtime, within SHUTDOWN_DEADLINE_SECONDS in all.

    Every app stops listening first, so none takes new work while another drains. Past the
    deadline the rest is abandoned: unacknowledged messages go back to their queue and
    uncommitted or unpublished outbox rows stay in the database, so nothing is lost.
    """
    deadline = asyncio.get_running_loop().time() + SHUTDOWN_DEADLINE_SECONDS
    for runner in runners:
        for site in list(runner.sites):
            await site.stop()
    try:
        async with asyncio.timeout_at(deadline - 0.5):
            await asyncio.gather(*(runner.cleanup() for runner in runners))
    except TimeoutError:
        log.warning("shutdown_deadline_passed", stage="apps")
    try:
        async with asyncio.timeout_at(deadline):
            await runtime.close()
    except TimeoutError:
        log.warning("shutdown_deadline_passed", stage="runtime")
        if runtime.pool is not None:
            runtime.pool.terminate()


def port_taken(settings: Settings, port_settings: tuple[str, ...], exc: OSError) -> str:
    """One sentence naming the setting whose port is taken (the first one when the error does not say)."""
    found = re.search(r"(\d+)\)?: address already in use", str(exc), re.IGNORECASE)
    taken = [name for name in port_settings if found and str(getattr(settings, name)) == found.group(1)]
    name = (taken or list(port_settings))[0]
    return (f"port {getattr(settings, name)} on {settings.host} is already in use by another process:"
            f" stop it or choose another port with MFA_{name.upper()}")


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


async def serve(settings: Settings, specs: list[ServiceSpec], *, ready_message: bool = True,
                migrations: bool = True, reuse_port: bool = False) -> int:
    """Serve `specs` in this process until SIGTERM or SIGINT; returns the exit code.

    `migrations=False` and `reuse_port=True` are for the processes `mfa start` runs: it applied
    the migrations once, and several auth processes share one port (SO_REUSEPORT: the kernel
    spreads new connections over them).
    """
    try:
        settings.check_safe_to_serve()
        if migrations:
            await run_migrations(settings, specs)
        # One broker connection per service user: each consumes and publishes as itself.
        runtime = await Runtime.open(settings, parties=[spec.name for spec in specs],
                                     pool_size=sum(spec.pool_size for spec in specs))
    except (DatabaseUnreachable, BrokerUnreachable, ConfigError) as exc:
        print(f"mfa: {exc}", file=sys.stderr)
        return 2
    if settings.uses_dev_secret_key:
        log.warning("dev_secret_key", detail="MFA_SECRET_KEYS is not set: secrets are sealed with the public development key")
    if runtime.publishers.shared:
        log.warning("shared_broker_user", detail="MFA_AMQP_USER_PREFIX is not set: consumers cannot tell publishers apart")
    runners: list[web.AppRunner] = []
    async with _stop_signals() as stop:
        try:
            for spec in specs:
                app = spec.create_app(runtime)
                runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=HTTP_DRAIN_SECONDS, access_log=None)
                port = getattr(settings, spec.port_setting)
                try:
                    await runner.setup()
                    runners.append(runner)
                    await web.TCPSite(runner, settings.host, port, reuse_port=reuse_port or None).start()
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
                    if runner not in runners:
                        runners.append(runner)  # its half-started contexts are cleaned up below
                    print(f"mfa: {port_taken(settings, spec.port_settings, exc)}", file=sys.stderr)
                    return 2
                log.info("service_listening", service=spec.name, url=f"http://{settings.host}:{port}")
                if ready_message:
                    print(f"{spec.name:9s} listening on http://{settings.host}:{port}", flush=True)
            await _until(stop)
        finally:
            await _shut_down(runners, runtime)
    log.info("shutdown_complete")
    return 0
