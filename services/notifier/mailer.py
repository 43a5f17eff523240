"""Outgoing SMTP: a few reused connections, STARTTLS or implicit TLS, login, and a verdict per mail.

Connections stay open while mail keeps coming and are closed after `idle_timeout` without use;
a connection the server dropped is noticed and reopened (once per mail) without failing the mail.
Every send ends in a :class:`SendResult`: `sent`, `failed` (the server refused for good: a 5xx on
the recipient or the content) or `deferred` (anything that may pass later: 4xx, refused or lost
connections, timeouts, TLS or login problems), which the caller retries through the backbone.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass, field

import aiosmtplib

from ..common.config import Settings
from ..common.logs import get_logger
from ..common.runtime import cancel_and_wait
from .domain import classify_reply, needs_smtputf8

log = get_logger("notifier.smtp")


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to deliver mail."""

    host: str
    port: int
    tls: str = "none"  # none | starttls | tls
    user: str = ""
    password: str = field(default="", repr=False)
    ca_file: str = ""  # extra CA bundle to trust (a private or self-signed server certificate)
    timeout: float = 10.0
    max_connections: int = 4
    idle_timeout: float = 15.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpConfig:
        """The configured server."""
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            tls=settings.smtp_tls,
            user=settings.smtp_user,
            password=settings.smtp_password,
            ca_file=settings.smtp_ca_file,
        )

    def tls_context(self) -> ssl.SSLContext | None:
        """The context that checks the server certificate (system CAs, plus `ca_file` when set)."""
        if self.tls == "none":
            return None
        context = ssl.create_default_context()
        if self.ca_file:
            context.load_verify_locations(cafile=self.ca_file)
        return context


@dataclass(frozen=True)
class SendResult:
    """The fate of one mail: `sent`, `failed` (permanent) or `deferred` (try again later)."""

    status: str
    reason_code: str | None = None
    reason: str = ""
    smtp_code: int | None = None


def _reply(code: int | None, message: str) -> str:
    text = " ".join(str(message).split())
    return (f"{code} {text}" if code else text)[:500]


@dataclass
class _Connection:
    client: aiosmtplib.SMTP | None = None
    last_used: float = 0.0


class Mailer:
    """Sends mail through a small pool of SMTP connections; open with start(), close with close()."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._tls_context = config.tls_context()
        self._idle: list[_Connection] = []
        self._open = 0
        self._cond = asyncio.Condition()
        self._closing = False
        self._reaper: asyncio.Task | None = None
        self._local_hostname: str | None = None
        self.connections_opened = 0  # how many times a connection was (re)opened, for tests and logs

    async def start(self) -> Mailer:
        # getfqdn may block on DNS: once, off the loop, instead of on every EHLO.
        self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        self._reaper = asyncio.create_task(self._reap_idle(), name="notifier-smtp-reaper")
        return self

    async def close(self) -> None:
        """Close idle connections politely (QUIT); connections in use close when their mail is done."""
        self._closing = True
        await cancel_and_wait(self._reaper)
        self._reaper = None
        async with self._cond:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        await asyncio.gather(*(self._quit(c) for c in idle))

    async def send(self, message: bytes, *, sender: str, recipient: str) -> SendResult:
        """Deliver the raw mail `message` to `recipient` only (whatever its headers say)."""
        conn = await self._acquire()
        if conn is None:
            return SendResult("deferred", "smtp_unavailable", "the notifier is shutting down")
        keep = False
        try:
            reused = conn.client is not None and conn.client.is_connected
            while True:
                try:
                    if conn.client is None or not conn.client.is_connected:
                        self._discard(conn)
                        conn.client = await self._connect()
                    options = ["SMTPUTF8"] if needs_smtputf8(sender, recipient) else []
                    _errors, reply = await conn.client.sendmail(sender, [recipient], message, mail_options=options)
                    keep = True
                    return SendResult("sent", None, _reply(None, reply))
                except aiosmtplib.SMTPNotSupported as exc:
                    # A UTF-8 local part and a server without SMTPUTF8: no retry will change that.
                    keep = True
                    return SendResult("failed", "smtputf8_unsupported", _reply(None, str(exc)))
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    keep = True  # the client reset the envelope; the connection is fine
                    refused = exc.recipients[0]
                    return self._verdict(refused.code, refused.message, "smtp_rejected")
                except aiosmtplib.SMTPDataError as exc:
                    keep = True
                    return self._verdict(exc.code, exc.message, "smtp_rejected")
                except (aiosmtplib.SMTPServerDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                    self._discard(conn)
                    if reused:
                        # A kept connection the server had dropped: reopen once, not a failure of this mail.
                        reused = False
                        continue
                    return SendResult("deferred", "smtp_unavailable", _reply(None, f"connection lost: {exc}"))
                except aiosmtplib.SMTPAuthenticationError as exc:
                    self._discard(conn)
                    return SendResult("deferred", "smtp_login", _reply(exc.code, exc.message), exc.code)
                except aiosmtplib.SMTPResponseException as exc:
                    # The server refused the sender, our greeting or the connection: not this recipient's fault.
                    self._discard(conn)
                    return SendResult("deferred", "smtp_temporary", _reply(exc.code, exc.message), exc.code)
                except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                    # Refused or timed-out connections, TLS handshake failures, STARTTLS not offered.
                    self._discard(conn)
                    return SendResult("deferred", "smtp_unavailable", _reply(None, f"{type(exc).__name__}: {exc}"))
        finally:
            await self._release(conn, keep)

    @staticmethod
    def _verdict(code: int, message: str, permanent_code: str) -> SendResult:
        status = classify_reply(code)
        return SendResult(status, permanent_code if status == "failed" else "smtp_temporary", _reply(code, message), code)

    async def _connect(self) -> aiosmtplib.SMTP:
        cfg = self.config
        client = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            use_tls=cfg.tls == "tls",
            start_tls=cfg.tls == "starttls",
            tls_context=self._tls_context,
            username=cfg.user or None,
            password=cfg.password or None,
            timeout=cfg.timeout,
            local_hostname=self._local_hostname,
        )
        await client.connect()
        self.connections_opened += 1
        return client

    async def _acquire(self) -> _Connection | None:
        async with self._cond:
            while True:
                if self._closing:
                    return None
                if self._idle:
                    return self._idle.pop()  # the most recently used one: likely still open
                if self._open < self.config.max_connections:
                    self._open += 1
                    return _Connection()
                await self._cond.wait()

    async def _release(self, conn: _Connection, keep: bool) -> None:
        async with self._cond:
            if keep and not self._closing and conn.client is not None and conn.client.is_connected:
                conn.last_used = asyncio.get_running_loop().time()
                self._idle.append(conn)
                self._cond.notify()
                return
            self._open -= 1
            self._cond.notify()
        await self._quit(conn)

    @staticmethod
    def _discard(conn: _Connection) -> None:
        if conn.client is not None:
            conn.client.close()
            conn.client = None

    @staticmethod
    async def _quit(conn: _Connection) -> None:
        client, conn.client = conn.client, None
        if client is None or not client.is_connected:
            return
        try:
            await asyncio.wait_for(client.quit(), 2)
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            client.close()

    async def _reap_idle(self) -> None:
        """Close connections nobody used for `idle_timeout`: kept open only while mail flows."""
        period = max(0.05, self.config.idle_timeout / 2)
        while True:
            await asyncio.sleep(period)
            now = asyncio.get_running_loop().time()
            async with self._cond:
                stale = [c for c in self._idle if now - c.last_used >= self.config.idle_timeout]
                if not stale:
                    continue
                self._idle = [c for c in self._idle if c not in stale]
                self._open -= len(stale)
                self._cond.notify_all()
            for conn in stale:
                await self._quit(conn)
