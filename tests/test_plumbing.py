"""Process plumbing: the pool lends connections in the order they were asked for; the relay setting."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from services.common.db import create_pool


async def test_connections_are_lent_in_the_order_they_were_asked_for(settings):
    """40 clients share 2 connections; nobody is served before someone who asked earlier.

    asyncpg's own pool fails this: about one grant in eight went to a later asker.
    """
    pool = await create_pool(settings.database_url, min_size=2, max_size=2)
    asks = itertools.count()
    grants: list[int] = []

    async def client(i: int) -> None:
        for _ in range(10):
            ask = next(asks)
            async with pool.acquire() as conn:
                grants.append(ask)
                await conn.fetchval("SELECT $1::int", i)

    try:
        await asyncio.gather(*(client(i) for i in range(40)))
    finally:
        pool.terminate()
    assert len(grants) == 400
    assert [b for a, b in itertools.pairwise(grants) if b < a] == []


async def test_permits_come_back_after_errors_timeouts_and_double_release(settings):
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        with pytest.raises(ZeroDivisionError):
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
                raise ZeroDivisionError  # the caller's own error while it holds the connection
        held = await pool.acquire()
        with pytest.raises(TimeoutError):
            await pool.acquire(timeout=0.05)
        await pool.release(held)
        await pool.release(held)  # a second release of the same connection frees no extra permit
        assert await pool.fetchval("SELECT 41 + 1") == 42
        first = await pool.acquire(timeout=1)
        with pytest.raises(TimeoutError):
            await pool.acquire(timeout=0.05)  # still exactly one connection to lend
        await pool.release(first)
    finally:
        pool.terminate()


def test_relay_mode_setting():
    from services.common.config import ConfigError, Settings

    assert Settings.from_env({}).relay_mode == "inline"
    assert Settings.from_env({"MFA_RELAY": "Separate"}).relay_mode == "separate"
    with pytest.raises(ConfigError, match="MFA_RELAY must be inline or separate"):
        Settings.from_env({"MFA_RELAY": "elsewhere"})


def test_queue_prefix_joins_with_a_dot():
    from services.common.config import Settings, queue_name

    assert queue_name("", "auth") == "auth"
    assert queue_name("staging", "auth") == "staging.auth"
    assert queue_name("staging.", "auth") == "staging.auth"  # no second dot
    assert Settings.from_env({"MFA_QUEUE_PREFIX": "blue"}).queue("notifier.parked") == "blue.notifier.parked"


def test_serving_refuses_the_development_key_outside_development():
    from services.common.config import DEV_SECRET_KEY, ConfigError, Settings

    own_key = "k1:" + "A" * 43
    with pytest.raises(ConfigError, match=r"^MFA_SECRET_KEYS is not set and the development key"):
        Settings.from_env({}).check_safe_to_serve()
    with pytest.raises(ConfigError, match=r"^MFA_SECRET_KEYS is not set"):
        Settings.from_env({"MFA_SECRET_KEYS": DEV_SECRET_KEY, "MFA_AMQP_USER_PREFIX": "mfa-"}).check_safe_to_serve()
    with pytest.raises(ConfigError, match=r"^MFA_AMQP_USER_PREFIX is not set"):
        Settings.from_env({"MFA_SECRET_KEYS": own_key}).check_safe_to_serve()
    Settings.from_env({"MFA_SECRET_KEYS": own_key, "MFA_AMQP_USER_PREFIX": "mfa-"}).check_safe_to_serve()
    Settings.from_env({"MFA_ENV": "development"}).check_safe_to_serve()
    with pytest.raises(ConfigError, match="MFA_ENV must be production or development"):
        Settings.from_env({"MFA_ENV": "staging"})


def test_queue_partitions_setting():
    from services.common.config import ConfigError, Settings

    assert Settings.from_env({}).queue_partitions == 1
    assert Settings.from_env({"MFA_QUEUE_PARTITIONS": "4"}).queue_partitions == 4
    with pytest.raises(ConfigError, match="MFA_QUEUE_PARTITIONS must be between 1 and 16"):
        Settings.from_env({"MFA_QUEUE_PARTITIONS": "17"})


def test_login_retention_setting():
    from services.common.config import ConfigError, Settings

    assert Settings.from_env({}).login_retention_days == 90
    assert Settings.from_env({"MFA_LOGIN_RETENTION_DAYS": "30"}).login_retention_days == 30
    for days in ("7", "3651"):  # under 8 a login would take its links before they may go
        with pytest.raises(ConfigError, match="MFA_LOGIN_RETENTION_DAYS must be between 8 and 3650"):
            Settings.from_env({"MFA_LOGIN_RETENTION_DAYS": days})


@pytest.mark.parametrize("error", [
    "ConnectionDoesNotExistError", "CrashShutdownError", "InternalClientError", "AdminShutdownError",
    "CannotConnectNowError", "InterfaceError",
])
async def test_a_database_outage_answers_503_problem_json_not_500(error):
    """What asyncpg raises while PostgreSQL restarts (seen by bench/soak.py) is a 503, never a 500."""
    import asyncpg
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from services.common.errors import DATABASE_UNAVAILABLE
    from services.common.web import SERVICE_NAME, edge_middleware

    exc_type = getattr(asyncpg, error)
    assert issubclass(exc_type, DATABASE_UNAVAILABLE)

    async def handler(request):
        raise exc_type("simulated outage")

    app = web.Application(middlewares=[edge_middleware])
    app[SERVICE_NAME] = "test"
    app.router.add_get("/x", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/x")
        assert resp.status == 503
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        assert (await resp.json())["code"] == "unavailable"


def test_a_killed_supervisors_metrics_folder_goes_at_the_next_start_a_live_ones_stays(tmp_path):
    import os
    import subprocess

    from services.common.supervisor import METRICS_PREFIX, remove_stale_metrics

    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid belongs to no process now, as a supervisor's after SIGKILL
    stale = tmp_path / f"{METRICS_PREFIX}{gone.pid}-x1"
    live = tmp_path / f"{METRICS_PREFIX}{os.getpid()}-x2"
    other = tmp_path / "mfa-metrics-notes"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"\0" * 16)

    assert remove_stale_metrics(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.exists() and other.exists()


def test_the_soak_smtp_server_takes_another_port_when_its_chosen_one_was_taken_meanwhile():
    import socket

    from bench.nodes import SoakSmtp

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        smtp = SoakSmtp(port=taken.getsockname()[1])
        smtp.start_first()
        try:
            assert smtp.up and smtp.port != taken.getsockname()[1]
        finally:
            smtp.stop()


async def test_a_periodic_job_runs_again_after_a_failed_round_and_stops_with_the_app():
    from services.common.service import periodic_ctx

    from .conftest import wait_for

    rounds: list[int] = []

    async def job(app) -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise ConnectionError("database away")

    ctx = periodic_ctx("test-periodic", 0.01, job)(object())
    await anext(ctx)
    await wait_for(lambda: len(rounds) >= 3, message="rounds after a failed one")
    with pytest.raises(StopAsyncIteration):
        await anext(ctx)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "test-periodic"]  # the loop ended with the app
