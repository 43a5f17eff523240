"""`mfa` commands in processes of their own: their environment, starting them, waiting until they serve, stopping them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from .conftest import free_port, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MFA = os.path.join(os.path.dirname(sys.executable), "mfa")  # the `mfa` of this venv (this checkout)
APIS = ("AUTH", "RECOVERY", "AUDIT", "NOTIFIER")  # the services with an HTTP API, by their MFA_<NAME>_PORT


def env_for(settings, **extra: str) -> dict[str, str]:
    """This process's environment pointed at the database, broker, exchange and queues of `settings`; `extra` on top."""
    env = dict(os.environ)
    env.update(
        MFA_DATABASE_URL=settings.database_url,
        MFA_AMQP_URL=settings.amqp_url,
        MFA_EXCHANGE=settings.exchange,
        MFA_QUEUE_PREFIX=settings.queue_prefix,
        MFA_LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def free_ports(*names: str) -> dict[str, int]:
    """A free port for each name (by default every API and the SMTP intake, as `mfa run all` needs them)."""
    return {name: free_port() for name in names or (*APIS, "INBOUND_SMTP")}


def port_env(ports: Mapping[str, int]) -> dict[str, str]:
    """The MFA_<NAME>_PORT settings of `ports`."""
    return {f"MFA_{name}_PORT": str(port) for name, port in ports.items()}


def run_all_env(settings, ports: Mapping[str, int], **extra: str) -> dict[str, str]:
    """The environment of `mfa run all` on `ports`, writing mails to a folder of its own; `extra` on top."""
    return env_for(settings, **{**port_env(ports), "MFA_MAIL_DIR": os.path.join("/tmp", f"mfa-mail-{uuid.uuid4().hex[:6]}"),
                                **extra})


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


async def start(*args: str, env: Mapping[str, str], stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                mfa: str = MFA, **kw) -> asyncio.subprocess.Process:
    """Start `mfa ARGS` with `env` (by default both streams piped)."""
    return await asyncio.create_subprocess_exec(mfa, *args, env=dict(env), stdout=stdout, stderr=stderr, **kw)


async def run_to_end(*argv: str, env: Mapping[str, str], cwd: str | None = None, timeout: float = 60) -> tuple[int, str, str]:
    """Run a command to completion: (exit code, stdout, stderr); killed when it outlasts `timeout`."""
    proc = await asyncio.create_subprocess_exec(*argv, env=dict(env), cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        await kill(proc)
    return proc.returncode, out.decode(), err.decode()


async def wait_ready(urls: Mapping[str, str], *, timeout: float = 30, proc: asyncio.subprocess.Process | None = None,
                     log: Path | None = None) -> None:
    """Wait until `GET <url>/readyz` answers 200 for each of `urls` (by name); fail at once if `proc` exits (with
    the end of `log`)."""
    async with aiohttp.ClientSession() as http:
        async def ready(base: str) -> bool:
            if proc is not None and proc.returncode is not None:
                tail = (await asyncio.to_thread(log.read_text))[-3000:] if log else ""
                raise AssertionError(f"the process exited {proc.returncode}: {tail}")
            try:
                async with http.get(f"{base}/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        for name, base in urls.items():
            await wait_for(lambda b=base: ready(b), timeout=timeout, message=f"{name} ready")


async def kill(proc: asyncio.subprocess.Process) -> None:
    """Kill `proc` if it still runs (what a test leaves behind when it fails)."""
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def stop(proc: asyncio.subprocess.Process, timeout: float = 15) -> None:
    """SIGTERM `proc` if it still runs; kill it if it has not exited within `timeout` seconds."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            await kill(proc)
