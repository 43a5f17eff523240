"""`mfa start` as `make run` starts it: two auth processes on one port, the other services, one relay.

Which process answered is read from the kernel (the owner of the accepted socket in /proc),
so the product tells the outside nothing about its processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import sys
import uuid
from collections import Counter
from pathlib import Path

import aio_pika
import aiohttp
import asyncpg
import pytest

from services.common.apikeys import create_key
from services.common.brokeradmin import teardown

from .conftest import _db_url, drop_database, free_port, wait_for
from .test_lifecycle import env_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads sockets' owners from /proc")

LOGINS = 30


def _children(pid: int) -> dict[int, str]:
    """The supervisor's child processes: pid -> command line."""
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(k): Path(f"/proc/{k}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip() for k in kids}


def _accepted_by(port: int, client_ports: set[int], pids: list[int]) -> dict[int, int]:
    """client port -> pid of the process holding the server side of that connection."""
    inodes: dict[str, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) in client_ports:
            inodes[f"socket:[{inode}]"] = int(remote.split(":")[1], 16)
    owners: dict[int, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target in inodes:
                owners[inodes[target]] = pid
    return owners


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _start(settings, tag: str, tmp_path: Path):
    """A private database, exchange and ports; `mfa start` with 2 auth workers, up and ready."""
    u = uuid.uuid4().hex[:8]
    mine = dataclasses.replace(settings, database_url=_db_url(f"mfa_{tag}_{u}"),
                               exchange=f"{settings.exchange}.{tag}.{u}", queue_prefix=f"{settings.queue_prefix}{tag}.{u}")
    ports = {name: free_port() for name in ("AUTH", "RECOVERY", "AUDIT", "NOTIFIER", "RELAY", "INBOUND_SMTP")}
    env = env_for(mine, MFA_AUTH_WORKERS="2", MFA_MAIL_DIR=str(tmp_path / "mail"),
                  **{f"MFA_{name}_PORT": str(port) for name, port in ports.items()})
    mfa = os.path.join(os.path.dirname(sys.executable), "mfa")
    proc = await asyncio.create_subprocess_exec(mfa, "start", env=env, stdout=asyncio.subprocess.PIPE)
    lines: list[str] = []
    while not (lines and lines[-1].startswith("ready:")):
        line = await asyncio.wait_for(proc.stdout.readline(), 90)
        assert line, f"mfa start ended before it was ready: {lines}"
        lines.append(line.decode().strip())
    return mine, ports, proc, lines, u


async def _clean_up(mine, tag: str, u: str, proc) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    await teardown(mine, exchange=True)
    await drop_database(f"mfa_{tag}_{u}")


async def test_start_serves_one_port_from_two_auth_processes_publishes_once_and_stops_on_sigterm(
    settings, runtime, tmp_path
):
    mine, ports, proc, lines, u = await _start(settings, "start", tmp_path)
    channel = None
    try:
        assert lines[-1].startswith("ready: 4 processes, 2 of them auth on one port"), lines
        assert f"auth      listening on http://127.0.0.1:{ports['AUTH']}" in lines, lines
        children = _children(proc.pid)
        auth = sorted(pid for pid, cmd in children.items() if " run auth " in f"{cmd} ")
        assert len(auth) == 2 and len(children) == 4, children
        # Migrations ran once, in the supervisor: every child was told not to run them.
        assert all("--no-migrate" in cmd for cmd in children.values()), children

        # Connections to the one port are accepted by both auth processes, and each answers.
        clients = []
        for _ in range(24):
            s = socket.create_connection(("127.0.0.1", ports["AUTH"]))
            s.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{ports['AUTH']}\r\n\r\n".encode())
            clients.append(s)
        try:
            for s in clients:
                assert s.recv(4096).startswith(b"HTTP/1.1 200"), "an auth process did not answer"
            owners = _accepted_by(ports["AUTH"], {s.getsockname()[1] for s in clients}, auth)
            assert len(owners) == len(clients) and set(owners.values()) == set(auth), owners
        finally:
            for s in clients:
                s.close()

        # Every login's LoginSucceeded reaches the broker once, whichever process answered it.
        channel = await runtime.broker.channel()
        await channel.declare_exchange(mine.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        tap = await channel.declare_queue(mine.queue(f"tap-{u}"), exclusive=True)
        await tap.bind(mine.exchange, "LoginSucceeded")
        seen: Counter[str] = Counter()

        async def on_message(message):
            seen[json.loads(message.body)["data"]["login_id"]] += 1

        await tap.consume(on_message, no_ack=True)  # no ack to race the channel's close (see tests/conftest.py tap)
        db = await asyncpg.connect(mine.database_url)
        try:
            key = await create_key(db, "service", label="start")
            headers = {"Authorization": f"Bearer {key}"}
            base = f"http://127.0.0.1:{ports['AUTH']}"
            # A new connection per request, so the kernel spreads them over both processes.
            async with aiohttp.ClientSession(base, headers=headers,
                                             connector=aiohttp.TCPConnector(force_close=True)) as http:
                async with http.put(f"/v1/companies/co-{u}", json={"name": "Start Co", "mfa_required": False}) as r:
                    assert r.status in (200, 201), await r.text()
                async with http.put(f"/v1/accounts/ada-{u}", json={
                        "company_id": f"co-{u}", "email": f"ada-{u}@example.com", "first_name": "Ada",
                        "last_name": "L", "role": "employee", "mfa_required": False}) as r:
                    assert r.status in (200, 201), await r.text()
                login_ids = []
                for _ in range(LOGINS):  # MFA is not set up nor required: each login is allowed at once
                    async with http.post("/v1/logins", json={"account_id": f"ada-{u}"}) as r:
                        body = await r.json()
                        assert r.status in (200, 201) and body["decision"] == "allow", body
                        login_ids.append(body["login_id"])
                # /metrics counts every auth process's logins, whichever process answers the scrape.
                for _ in range(6):
                    async with http.get("/metrics") as r:
                        text = await r.text()
                    allowed = [line for line in text.splitlines() if line.startswith('mfa_logins_total{decision="allow"}')]
                    assert allowed and float(allowed[0].rsplit(" ", 1)[1]) == LOGINS, allowed
            await wait_for(lambda: all(seen[i] for i in login_ids), timeout=30, message="every LoginSucceeded published")
            await wait_for(lambda: db.fetchval("SELECT count(*) = 0 FROM auth.outbox"), timeout=30,
                           message="the outbox empty")
            await wait_for(lambda: _drained(channel, tap.name), timeout=10, message="the tap read to its end")
            assert {i: seen[i] for i in login_ids} == dict.fromkeys(login_ids, 1), seen
        finally:
            await db.close()

        # SIGTERM stops every child cleanly, and the supervisor exits 0.
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert [pid for pid in children if _alive(pid)] == []
    finally:
        if channel is not None:
            await channel.close()
        await _clean_up(mine, "start", u, proc)


async def _drained(channel, name: str) -> bool:
    queue = await channel.declare_queue(name, passive=True)
    return queue.declaration_result.message_count == 0


async def test_a_child_that_dies_stops_the_set_up_with_exit_1(settings, tmp_path):
    mine, _ports, proc, _lines, u = await _start(settings, "startdie", tmp_path)
    try:
        children = _children(proc.pid)
        victim = next(pid for pid, cmd in children.items() if " run auth " in f"{cmd} ")
        os.kill(victim, signal.SIGKILL)
        # Not restarted inside: the whole set-up stops, and whatever started it starts it again.
        assert await asyncio.wait_for(proc.wait(), 30) == 1
        assert [pid for pid in children if _alive(pid)] == []
    finally:
        await _clean_up(mine, "startdie", u, proc)


async def test_a_taken_auth_port_is_one_sentence_before_any_process_starts(settings):
    # SO_REUSEPORT would let the auth processes share the port with whatever holds it: checked first.
    u = uuid.uuid4().hex[:8]
    mine = dataclasses.replace(settings, database_url=_db_url(f"mfa_starttaken_{u}"))
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as an earlier `mfa start` holds it
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = env_for(mine, MFA_AUTH_PORT=str(port))
        mfa = os.path.join(os.path.dirname(sys.executable), "mfa")
        proc = await asyncio.create_subprocess_exec(mfa, "start", env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await drop_database(f"mfa_starttaken_{u}")
    assert proc.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use by another process" in err.decode()
    assert "MFA_AUTH_PORT" in err.decode() and b"ready" not in out


def test_auth_workers_default_to_half_the_cores_and_refuse_nonsense():
    from services.common.config import ConfigError, Settings, available_cores

    assert Settings.from_env({}).auth_workers == max(1, available_cores() // 2)
    assert Settings.from_env({"MFA_AUTH_WORKERS": "3"}).auth_workers == 3
    for bad in ("0", "65", "many"):
        with pytest.raises(ConfigError, match="MFA_AUTH_WORKERS"):
            Settings.from_env({"MFA_AUTH_WORKERS": bad})
