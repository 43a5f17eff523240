"""A started stack as an integrator meets it: `mfa run all` in its own process, on ports of its own."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..processes import APIS, MFA, env_for, free_ports, port_env, run_to_end, start, stop, url, wait_ready

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def stack_env(settings, ports: Mapping[str, int], mail_dir: str, **extra: str) -> dict[str, str]:
    """The environment of a stack on this test run's database, exchange and queues."""
    return env_for(settings, **{"MFA_ENV": "development", "MFA_MAIL_DIR": mail_dir, "MFA_PUBLIC_URL": url(ports["AUTH"]),
                                **port_env(ports), **extra})


@dataclass
class Stack:
    """Where the started services listen, and what they were started with."""

    env: dict[str, str]
    ports: dict[str, int]
    mail_dir: Path
    mfa: str  # the `mfa` executable that started it

    def url(self, service: str = "AUTH") -> str:
        return url(self.ports[service])

    async def api_key(self, *args: str) -> str:
        """A new API key from `mfa api-key create ARGS` (the key is the last line of its output)."""
        out = await run_command(self.mfa, "api-key", "create", *args, env=self.env)
        return out.strip().splitlines()[-1]


async def run_command(*argv: str, env: Mapping[str, str], cwd: str | None = None, timeout: float = 60) -> str:
    """Run a command to completion; its standard output, or an AssertionError with both streams."""
    code, out, err = await run_to_end(*argv, env=env, cwd=cwd, timeout=timeout)
    assert code == 0, f"{argv} exited {code}\n{out}\n{err}"
    return out


async def start_stack(mfa: str, settings, cwd: str | None = None):
    """Start `mfa run all` from the `mfa` executable given; returns (Stack, process) once every API is ready."""
    ports = free_ports()
    mail_dir = Path(tempfile.mkdtemp(prefix="mfa-mail-"))
    env = stack_env(settings, ports, str(mail_dir))
    log = mail_dir.with_suffix(".log")  # a file, not a pipe: nobody reads a pipe while it runs
    with log.open("wb") as stderr:
        proc = await start("run", "all", env=env, cwd=cwd, stdout=asyncio.subprocess.DEVNULL, stderr=stderr, mfa=mfa)
    stack = Stack(env, ports, mail_dir, mfa)
    await wait_ready({name: url(ports[name]) for name in APIS}, timeout=40, proc=proc, log=log)
    return stack, proc


async def stop_stack(stack: Stack, proc) -> None:
    await stop(proc)
    shutil.rmtree(stack.mail_dir, ignore_errors=True)
    stack.mail_dir.with_suffix(".log").unlink(missing_ok=True)


@pytest.fixture(scope="package")
async def stack(settings):
    """`mfa run all` of this checkout on the run's database and exchange: every service in one process.

    (`make run` starts `mfa start`, several processes; tests/test_workers_processes.py runs that.)

    Package scope: it consumes the run's queues, so it must be gone before other packages' apps
    expect to be the only consumers (a notifier test would miss the mails this one sent).
    """
    started, proc = await start_stack(MFA, settings)
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
