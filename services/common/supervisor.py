"""`mfa start`: the recommended set-up in one command, several processes under one supervisor.

On two or more cores one Python process is the limit long before PostgreSQL is: the auth
service's event loop answers HTTP, signs assertions and, inline, publishes its outbox on one
core. So `mfa start` applies the migrations once, then runs

- `MFA_AUTH_WORKERS` auth processes (default: half the cores it may use) on the one auth port,
  each with SO_REUSEPORT, so the kernel spreads new connections over them;
- one process for the other services (`mfa run notifier recovery audit`);
- one relay (`mfa relay all`) that publishes every outbox, the services run with
  `MFA_RELAY=separate`.

Their metrics are kept in files of one folder (PROMETHEUS_MULTIPROC_DIR, a temporary one
unless set), so /metrics on any port sums every process's counters. The auth processes are
replicas like those of docker-compose.replicas.yml: their consumers
share the auth queue's partitions through advisory locks (with MFA_QUEUE_PARTITIONS=1 one
consumes and the others stand by), each reloads the signing keys itself, and nothing else
in them runs on a schedule. The supervisor prints one line per service once every process
is up, then `ready`. SIGTERM or SIGINT goes on to every child, and it exits 0 once they
all stopped cleanly. A child that dies takes the others down and the supervisor exits 1
(2 when a child could not start, e.g. a port in use): whatever started `mfa start`
(compose, systemd) starts it again, a whole set-up rather than one limping part.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Settings
from .logs import get_logger

if TYPE_CHECKING:  # the CLI imports this module to parse its arguments: no app plumbing yet
    from .service import ServiceSpec

log = get_logger("supervisor")

PARTS = ("auth", "notifier", "recovery", "audit", "relay")  # what `mfa start PART...` runs
STOP_SECONDS = 12.0  # each child stops within 9 s (runner.SHUTDOWN_DEADLINE_SECONDS); then it is killed
START_SECONDS = 60.0


@dataclass(frozen=True)
class Child:
    """One process to run: a name for messages, its `mfa` arguments, and how many ready lines it prints."""

    name: str
    args: tuple[str, ...]
    ready_lines: int


def plan(settings: Settings, specs: list[ServiceSpec], parts: list[str]) -> list[Child]:
    """The processes that run `parts` (services by name, and `relay`)."""
    chosen = [spec for spec in specs if spec.name in parts]
    children: list[Child] = []
    if any(spec.name == "auth" for spec in chosen):
        children += [Child(f"auth {i + 1}", ("run", "auth", "--no-migrate", "--reuse-port"), 1)
                     for i in range(settings.auth_workers)]
    others = [spec.name for spec in chosen if spec.name != "auth"]
    if others:
        children.append(Child(" ".join(others), ("run", *others, "--no-migrate"), len(others)))
    if "relay" in parts:
        children.append(Child("relay", ("relay", "all", "--no-migrate"), 1))
    return children


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM if the supervisor dies without stopping it (no orphans)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _port_free(host: str, port: int) -> OSError | None:
    """None if nothing listens on `port`; else the error a plain bind gets.

    The auth processes bind with SO_REUSEPORT, which would let them share the port with an
    earlier `mfa start` of the same user instead of failing: so the supervisor checks first.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does: TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc
    return None


METRICS_PREFIX = "mfa-metrics-"


def remove_stale_metrics(folder: str) -> list[str]:
    """Delete the metrics folders of supervisors that are gone (killed with SIGKILL, say): the ones removed.

    Each folder is named after its supervisor's pid (`mfa-metrics-<pid>-<random>`); a live pid's is
    left alone, even if the pid now belongs to another program.
    """
    removed = []
    for path in Path(folder).glob(f"{METRICS_PREFIX}*-*"):
        pid = path.name.removeprefix(METRICS_PREFIX).partition("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


async def start(settings: Settings, specs: list[ServiceSpec], parts: list[str]) -> int:
    """Run `parts` as separate processes until SIGTERM or SIGINT; returns the exit code."""
    from .runner import port_taken, run_migrations  # the apps' plumbing: only once started

    settings.check_safe_to_serve()  # ConfigError: the CLI prints it
    await run_migrations(settings, specs)
    if "auth" in parts:
        taken = _port_free(settings.host, settings.auth_port)
        if taken is not None:
            if taken.errno != errno.EADDRINUSE:
                raise taken
            print(f"mfa: {port_taken(settings, ('auth_port',), taken)}", file=sys.stderr)
            return 2
    env = dict(os.environ)
    # Each process's metrics in files of one folder, so /metrics of any of them sums them all.
    metrics_dir = None
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        remove_stale_metrics(tempfile.gettempdir())
        metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-")
    if metrics_dir:
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if "relay" in parts:
        env["MFA_RELAY"] = "separate"  # the relay process publishes every outbox
    children = plan(settings, specs, parts)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    procs: list[asyncio.subprocess.Process] = []
    pumps: list[asyncio.Task] = []
    try:
        for child in children:
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.cli", *child.args, env=env,
                stdout=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            ))
        lines: list[list[str]] = [[] for _ in children]
        readiness = [asyncio.ensure_future(_ready_lines(proc, child.ready_lines, out))
                     for proc, child, out in zip(procs, children, lines, strict=True)]
        exits = [asyncio.ensure_future(proc.wait()) for proc in procs]
        stopping = asyncio.ensure_future(stop.wait())
        try:
            all_ready = asyncio.ensure_future(asyncio.gather(*readiness))
            done, _ = await asyncio.wait([all_ready, stopping, *exits], timeout=START_SECONDS,
                                         return_when=asyncio.FIRST_COMPLETED)
            if all_ready not in done or not all_ready.result():
                all_ready.cancel()
                if all_ready in done:  # a child closed its stdout: it is exiting
                    await asyncio.wait(exits, timeout=5, return_when=asyncio.FIRST_COMPLETED)
                died = [(c, p.returncode) for c, p in zip(children, procs, strict=True) if p.returncode is not None]
                if stop.is_set():
                    log.info("shutdown_requested")
                    return await _stop_all(procs, code=0)
                if died:
                    child, code = died[0]
                    print(f"mfa: {child.name} exited with {code} while starting", file=sys.stderr)
                    return await _stop_all(procs, code=2 if code == 2 else 1)
                print(f"mfa: not every process was up within {START_SECONDS:.0f} s", file=sys.stderr)
                return await _stop_all(procs, code=1)
            seen: set[str] = set()
            for line in (line for out in lines for line in out):
                if line not in seen:  # the auth processes each say the same
                    seen.add(line)
                    print(line, flush=True)
            auth_workers = sum(1 for c in children if c.name.startswith("auth "))
            print(f"ready: {len(procs)} processes" + (f", {auth_workers} of them auth on one port" if auth_workers else "")
                  + f" (supervisor pid {os.getpid()})", flush=True)
            log.info("supervisor_ready", processes=len(procs), auth_workers=auth_workers)
            pumps = [asyncio.create_task(_pass_on(proc), name=f"pump-{child.name}")
                     for proc, child in zip(procs, children, strict=True)]
            done, _ = await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                log.info("shutdown_requested")
                return await _stop_all(procs, code=0)
            child, code = next((c, p.returncode) for c, p in zip(children, procs, strict=True) if p.returncode is not None)
            log.error("child_exited", child=child.name, exit_code=code,
                      detail="stopping every process; exiting 1 so that the set-up is started again whole")
            print(f"mfa: {child.name} exited with {code}: stopping the others", file=sys.stderr)
            return await _stop_all(procs, code=1)
        finally:
            stopping.cancel()
            for fut in (*readiness, *exits):
                fut.cancel()
    finally:
        await _stop_all(procs, code=0)  # a no-op when they all ended already
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


async def _ready_lines(proc: asyncio.subprocess.Process, count: int, out: list[str]) -> bool:
    """Read `count` lines of the child's stdout (its ready lines); False if it closed first."""
    assert proc.stdout is not None
    while len(out) < count:
        line = await proc.stdout.readline()
        if not line:
            return False
        out.append(line.decode(errors="replace").rstrip("\n"))
    return True


async def _pass_on(proc: asyncio.subprocess.Process) -> None:
    """Copy whatever else a child prints to our stdout (its pipe must never fill up)."""
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        sys.stdout.write(line.decode(errors="replace"))
        sys.stdout.flush()


async def _stop_all(procs: list[asyncio.subprocess.Process], *, code: int) -> int:
    """SIGTERM every child still running, kill what has not stopped in STOP_SECONDS; `code`, or 1 if one failed."""
    running = [p for p in procs if p.returncode is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    if running:
        _, late = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in running], timeout=STOP_SECONDS)
        for proc in procs:
            if proc.returncode is None:
                log.warning("child_killed", pid=proc.pid, detail=f"not stopped {STOP_SECONDS:.0f} s after SIGTERM")
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                code = code or 1
    if code == 0 and any(p.returncode not in (0, None) for p in running):
        code = 1
    return code
