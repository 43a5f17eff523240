"""A started stack as an integrator meets it: `mfa run all` in its own process, on ports of its own."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from ..conftest import free_port, wait_for

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SERVICES = ("AUTH", "RECOVERY", "AUDIT", "NOTIFIER")


def stack_env(settings, ports: Mapping[str, int], mail_dir: str, **extra: str) -> dict[str, str]:
    """The environment of a stack on this test run's database, exchange and queues."""
    env = dict(os.environ)
    env.update(
        MFA_DATABASE_URL=settings.database_url,
        MFA_AMQP_URL=settings.amqp_url,
        MFA_EXCHANGE=settings.exchange,
        MFA_QUEUE_PREFIX=settings.queue_prefix,
        MFA_LOG_LEVEL="WARNING",
        MFA_ENV="development",
        MFA_MAIL_DIR=mail_dir,
        MFA_PUBLIC_URL=f"http://127.0.0.1:{ports['AUTH']}",
        **{f"MFA_{name}_PORT": str(port) for name, port in ports.items()},
    )
    env.update(extra)
    return env


@dataclass
class Stack:
    """Where the started services listen, and what they were started with."""

    env: dict[str, str]
    ports: dict[str, int]
    mail_dir: Path
    mfa: str  # the `mfa` executable that started it

    def url(self, service: str = "AUTH") -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    async def api_key(self, *args: str) -> str:
        """A new API key from `mfa api-key create ARGS` (the key is the last line of its output)."""
        out = await run_command(self.mfa, "api-key", "create", *args, env=self.env)
        return out.strip().splitlines()[-1]


async def run_command(*argv: str, env: Mapping[str, str], cwd: str | None = None, timeout: float = 60) -> str:
    """Run a command to completion; its standard output, or an AssertionError with both streams."""
    proc = await asyncio.create_subprocess_exec(*argv, env=dict(env), cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}\n{out.decode()}\n{err.decode()}"
    return out.decode()


async def start_stack(mfa: str, settings, cwd: str | None = None):
    """Start `mfa run all` from the `mfa` executable given; returns (Stack, process) once every API is ready."""
    ports = {name: free_port() for name in (*SERVICES, "INBOUND_SMTP")}
    mail_dir = Path(tempfile.mkdtemp(prefix="mfa-mail-"))
    env = stack_env(settings, ports, str(mail_dir))
    log = mail_dir.with_suffix(".log")  # a file, not a pipe: nobody reads a pipe while it runs
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(mfa, "run", "all", env=env, cwd=cwd,
                                                    stdout=asyncio.subprocess.DEVNULL, stderr=stderr)
    stack = Stack(env, ports, mail_dir, mfa)
    async with aiohttp.ClientSession() as http:
        async def ready(port: int) -> bool:
            if proc.returncode is not None:
                raise AssertionError(f"mfa run all exited {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        for name in SERVICES:
            await wait_for(lambda p=ports[name]: ready(p), timeout=40, message=f"{name} ready")
    return stack, proc


async def stop_stack(stack: Stack, proc) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    shutil.rmtree(stack.mail_dir, ignore_errors=True)
    stack.mail_dir.with_suffix(".log").unlink(missing_ok=True)


@pytest.fixture(scope="package")
async def stack(settings):
    """`mfa run all` of this checkout on the run's database and exchange: every service in one process.

    (`make run` starts `mfa start`, several processes; tests/test_workers_processes.py runs that.)

    Package scope: it consumes the run's queues, so it must be gone before other packages' apps
    expect to be the only consumers (a notifier test would miss the mails this one sent).
    """
    mfa = os.path.join(os.path.dirname(sys.executable), "mfa")
    started, proc = await start_stack(mfa, settings)
    yield started
    await stop_stack(started, proc)


@pytest.fixture(scope="session")
def jose_dir() -> Path:
    """tests/interop with node `jose` installed from the committed lock file (`npm ci`)."""
    if not (HERE / "node_modules" / "jose").is_dir():
        pytest.fail("node `jose` is missing: run `npm ci --prefix tests/interop` (make test and .ci/run do)")
    return HERE


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
