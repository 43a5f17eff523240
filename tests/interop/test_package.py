"""The project installs as a package: `python -m build`, `pip install dist/*.whl` in a fresh venv, and
from a folder without the checkout `mfa migrate`, `mfa run all` and a login work."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import aio_pika
import aiohttp
import asyncpg
import jwt as pyjwt
import pytest

from services.common.runner import migration_sets
from services.registry import SERVICES

from ..conftest import _db_url, drop_database, wait_for
from .conftest import ROOT, run_command, start_stack, stop_stack, unique


@pytest.fixture(scope="module")
async def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # sdist, then the wheel from it, in build's own isolated environment, as a user gets them
    # (pip's cache keeps it quick)
    await run_command(sys.executable, "-m", "build", "--outdir", str(out), str(ROOT),
                      env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}, timeout=180)
    [built] = out.glob("mfa_service-*.whl")
    return built


@pytest.fixture(scope="module")
async def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel (and its dependencies) in it; returns its bin folder."""
    venv = tmp_path_factory.mktemp("venv")
    await run_command(sys.executable, "-m", "venv", str(venv), env={"PATH": "/usr/bin:/bin"})
    await run_command(str(venv / "bin" / "pip"), "install", "-q", str(wheel),
                      env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}, timeout=180)
    return venv / "bin"


def tracked_data_files() -> set[str]:
    """Every file the code may read at run time: tracked non-Python files under services/, and the schemas."""
    listed = subprocess.run(["git", "ls-files", "services", "schemas"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.split()
    wanted = set()
    for name in listed:
        path = ROOT / name
        if name.startswith("schemas/"):
            wanted.add("services/" + name)
        elif not path.is_symlink() and not name.endswith(".py"):
            wanted.add(name)
    return wanted


def test_the_wheel_carries_every_migration_template_and_schema(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    wanted = tracked_data_files()
    assert {"services/common/migrations/iam/001_api_keys.sql", "services/common/migrations/plumbing/001_outbox.sql",
            "services/schemas/events/LoginSucceeded.v1.json", "services/schemas/openapi/auth.yaml"} <= wanted
    assert wanted - names == set()


async def test_installed_package_migrates_runs_and_logs_a_person_in(installed, settings, tmp_path):
    elsewhere = tmp_path / "elsewhere"  # no checkout here: the code and its data come from the venv
    elsewhere.mkdir()
    probe = await run_command(str(installed / "python"), "-c", "import services; print(services.__file__)",
                              env={"PATH": "/usr/bin:/bin"}, cwd=str(elsewhere))
    assert probe.startswith(str(installed.parent)) and str(ROOT) not in probe

    name = f"mfa_pkg_{uuid.uuid4().hex[:8]}"
    own = dataclasses.replace(settings, database_url=_db_url(name), exchange=f"{settings.exchange}.pkg",
                              queue_prefix=f"{settings.queue_prefix}pkg.")
    env = {"PATH": "/usr/bin:/bin", "MFA_DATABASE_URL": own.database_url, "MFA_AMQP_URL": own.amqp_url,
           "MFA_EXCHANGE": own.exchange, "MFA_QUEUE_PREFIX": own.queue_prefix, "MFA_ENV": "development"}
    stack = proc = None
    try:
        migrated = await run_command(str(installed / "mfa"), "migrate", env=env, cwd=str(elsewhere))
        # Every migration of the checkout, the shared iam and plumbing ones included, came with the wheel.
        expected = [f"{mset.schema}/{version}" for mset in migration_sets(list(SERVICES.values()))
                    for version, _ in mset.files()]
        assert "iam/iam/001_api_keys.sql" in expected and "auth/plumbing/001_outbox.sql" in expected
        assert migrated.split()[3:] == expected, migrated
        stack, proc = await start_stack(str(installed / "mfa"), own, cwd=str(elsewhere))
        key = await stack.api_key("--role", "service")
        company, account = unique("co"), unique("acct")
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(stack.url(), headers=headers) as http:
            for path, body in ((f"/v1/companies/{company}", {"name": "Acme", "mfa_required": True}),
                               (f"/v1/accounts/{account}", {"company_id": company, "email": f"{account}@example.com",
                                                            "first_name": "Ada", "last_name": "Lovelace",
                                                            "role": "employee", "mfa_required": False})):
                async with http.put(path, json=body) as resp:
                    assert resp.status == 201, await resp.text()
            async with http.post("/v1/logins", json={"account_id": account}) as resp:
                login = await resp.json()
            assert login["decision"] == "enroll"
            async with http.post(f"/v1/accounts/{account}/mfa/enrollment", json={}) as resp:
                secret = (await resp.json())["secret"]
            code = (await run_command("oathtool", "--totp", "-b", "-N", f"@{int(time.time())}", secret,
                                      env={"PATH": "/usr/bin:/bin"})).strip()
            async with http.post(f"/v1/accounts/{account}/mfa/enrollment/confirm",
                                 json={"code": code, "login_id": login["login_id"]}) as resp:
                confirmed = await resp.json()
                assert resp.status == 201, confirmed
        token = confirmed["assertion"]
        client = pyjwt.PyJWKClient(f"{stack.url()}/.well-known/jwks.json")
        signing_key = await asyncio.to_thread(client.get_signing_key_from_jwt, token)
        claims = pyjwt.decode(token, signing_key.key, algorithms=["EdDSA"], audience=company, issuer=stack.url())
        assert claims["sub"] == account and claims["amr"] == ["pwd", "otp", "mfa"]

        # The events left the outbox: the relay found their schemas in the package, as did the consumers.
        conn = await asyncpg.connect(own.database_url)
        try:
            await wait_for(lambda: conn.fetchval("SELECT count(*) = 0 FROM auth.outbox"), timeout=15,
                           message="the auth outbox published")
            await wait_for(lambda: conn.fetchval("SELECT count(*) > 0 FROM audit.events WHERE subject = $1", account),
                           timeout=15, message="the audit log holding the account's events")
        finally:
            await conn.close()
    finally:
        if stack is not None:
            await stop_stack(stack, proc)
        await drop_database(name)
        broker = await aio_pika.connect(own.amqp_url)
        async with broker:
            await (await broker.channel()).exchange_delete(own.exchange)
