"""Private PostgreSQL, RabbitMQ and SMTP nodes that a soak may stop, restart and slow down.

Faults must never touch the shared PostgreSQL (5432) or RabbitMQ (5672) other runs use, so the
soak starts its own: a PostgreSQL cluster (initdb, pg_ctl) and a RabbitMQ node
(`soak-<id>@localhost`), each on free loopback ports with every file under one temporary folder,
and an aiosmtpd server in this process. :class:`Nodes` starts all three and removes everything
at the end, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import email
import errno
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from aiosmtpd.controller import Controller

from .common import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def append_log(path: Path):
    """A log file for a child process to write to."""
    return open(path, "ab")  # noqa: SIM115 (the child owns it; closed when the node is garbage)


def _scratch(ident: str) -> Path:
    """The folder every file of the nodes goes in (readable by the postgres user)."""
    root = Path(tempfile.mkdtemp(prefix=f"mfa-soak-{ident}-"))
    root.chmod(0o755)
    return root


def _as_postgres(*args: str | Path) -> list[str]:
    """A PostgreSQL command run as the postgres user when we are root (initdb refuses root)."""
    cmd = [str(a) for a in args]
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


async def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 120, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{' '.join(cmd)} did not finish in {timeout}s") from None
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {out.decode(errors='replace')[-2000:]}")
    return out.decode(errors="replace")


class PrivatePostgres:
    """A PostgreSQL 15 cluster of our own on a free loopback port, trust auth, data under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "pg"
        self.port = free_port()
        self.log = root / "pg.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def start(self) -> None:
        """initdb on the first call, then start and wait until it accepts connections."""
        if not self.data.exists():
            self.data.mkdir(parents=True)
            if os.geteuid() == 0:
                shutil.chown(self.root, "postgres")
                shutil.chown(self.data, "postgres")
            await _run(_as_postgres(PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
                                    "--no-sync", "-E", "UTF8"))
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c max_connections=200"
                   " -c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        await _run(_as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60",
                                "start"))

    async def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (`fast`: sessions are ended, `immediate`: like a crash)."""
        await _run(_as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop"), check=False)

    async def running(self) -> bool:
        try:
            conn = await asyncpg.connect(self.url(), timeout=2)
        except Exception:
            return False
        await conn.close()
        return True


class PrivateRabbit:
    """A RabbitMQ node `soak-<id>@localhost` of our own: its own ports, cookie, config, data and logs."""

    def __init__(self, root: Path, ident: str) -> None:
        self.root = root / "rabbit"
        self.node = f"soak-{ident}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        home = self.root / "home"
        home.mkdir(parents=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "disk_free_limit.absolute = 50MB\n"
        )
        (self.root / "rabbitmq-env.conf").write_text("")  # not the system's (it names the shared node)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.root / "plugins-expand"),
            "RABBITMQ_PID_FILE": str(self.root / "rabbit.pid"),
            "RABBITMQ_LOGS": str(self.root / "log" / "rabbit.log"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    async def ctl(self, *args: str, timeout: float = 120) -> str:
        """rabbitmqctl against this node only (`-n` always set: never the shared node)."""
        return await _run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args], env=self.env, timeout=timeout)

    async def start(self) -> None:
        """Start the node and wait until its AMQP listener answers."""
        self.proc = await asyncio.create_subprocess_exec(
            str(RABBIT_BIN / "rabbitmq-server"), env=self.env, stdout=asyncio.subprocess.DEVNULL,
            stderr=append_log(self.root / "server.out"), start_new_session=True)
        deadline = time.monotonic() + 120
        while True:  # await_startup fails at once until the VM has registered the node with epmd
            if self.proc.returncode is not None:
                raise RuntimeError(f"rabbitmq-server exited {self.proc.returncode}: see {self.root}")
            try:
                await self.ctl("await_startup", "--timeout", "120", timeout=150)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def stop_app(self) -> None:
        await self.ctl("stop_app")

    async def start_app(self) -> None:
        await self.ctl("start_app")
        await self.ctl("await_startup", "--timeout", "120", timeout=150)

    async def shutdown(self) -> None:
        """Stop the node (and its Erlang VM) for good."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            try:
                await self.ctl("shutdown", timeout=60)
            except Exception:
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        self.proc = None


@dataclass
class Received:
    """One mail the SMTP server accepted."""

    message_id: str
    recipient: str
    subject: str
    at: float
    raw: bytes


class _Handler:
    def __init__(self, smtp: SoakSmtp) -> None:
        self.smtp = smtp

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        if self.smtp.delay:
            await asyncio.sleep(self.smtp.delay)
        message = email.message_from_bytes(envelope.content)
        with self.smtp.lock:
            for rcpt in envelope.rcpt_tos:
                self.smtp.received.append(Received(message.get("Message-ID", ""), rcpt,
                                                   str(message.get("Subject", "")), time.time(), envelope.content))
        return "250 OK"


@dataclass
class SoakSmtp:
    """An aiosmtpd server (in a thread of this process) that can be taken down and made slow."""

    port: int = field(default_factory=free_port)
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: Controller | None = None

    def start(self) -> None:
        if self._controller is None:
            controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)
            controller.start()
            self._controller = controller

    def start_first(self, tries: int = 5) -> None:
        """The first start: a port taken since `free_port` chose it is swapped for another (nobody knows it yet)."""
        for attempt in range(tries):
            try:
                self.start()
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or attempt == tries - 1:
                    raise
                self.port = free_port()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def up(self) -> bool:
        return self._controller is not None


@dataclass
class Nodes:
    """The private PostgreSQL, RabbitMQ and SMTP server of one soak."""

    root: Path
    pg: PrivatePostgres
    rabbit: PrivateRabbit
    smtp: SoakSmtp


@asynccontextmanager
async def private_nodes(keep: bool = False):
    """Start the three nodes; stop them and delete their files however the block ends."""
    ident = uuid.uuid4().hex[:8]
    root = _scratch(ident)
    pg = PrivatePostgres(root)
    rabbit = PrivateRabbit(root, ident)
    smtp = SoakSmtp()
    try:
        # SMTP first, before the other nodes open ports: its port was only chosen, not yet held.
        smtp.start_first()
        await asyncio.gather(pg.start(), rabbit.start())
        yield Nodes(root, pg, rabbit, smtp)
    finally:
        # Shielded: a Ctrl-C during the soak must still stop the nodes.
        smtp.stop()
        await asyncio.shield(asyncio.gather(pg.stop("immediate"), rabbit.shutdown(), return_exceptions=True))
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def leftover_nodes() -> list[str]:
    """Soak nodes still registered with epmd (none should outlive a soak)."""
    out = subprocess.run(["epmd", "-names"], capture_output=True, text=True).stdout
    return [line.split()[1] for line in out.splitlines() if line.startswith("name soak-")]
