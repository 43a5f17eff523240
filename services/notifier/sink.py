"""The embedded development SMTP sink: accepts every mail and stores it as an `.eml` file.

Started by the notifier when no MFA_SMTP_HOST is set, so `make run` delivers mail without a
mail server: each accepted mail lands in MFA_MAIL_DIR (open it with any mail client, or read the
link in it) and one log line names its recipient, subject and file. It runs on the service's
own event loop, on a free local port, for the app's lifetime.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from ..common.logs import get_logger

log = get_logger("notifier.sink")


class _StoreHandler:
    """aiosmtpd handler: writes each mail to `folder` and logs it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 (aiosmtpd hook name)
        content = envelope.original_content or (envelope.content if isinstance(envelope.content, bytes) else b"")
        headers = BytesHeaderParser(policy=policy.default).parsebytes(content)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        ident = re.sub(r"[^A-Za-z0-9._-]", "", str(headers.get("Message-ID", "")))[:80] or "mail"
        path = self.folder / f"{stamp}-{ident}.eml"
        try:
            await asyncio.to_thread(_write, path, content)
        except OSError as exc:
            log.error("mail_store_failed", file=str(path), error=str(exc))
            return "451 4.3.0 cannot store the mail right now"
        log.info("mail_stored", to=list(envelope.rcpt_tos), subject=str(headers.get("Subject", "")), file=str(path))
        return "250 2.0.0 stored"


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    partial.write_bytes(content)
    partial.replace(path)  # a reader never sees half a mail


class MailSink:
    """An in-process SMTP server storing mail under `folder`; `port` is known after start()."""

    def __init__(self, folder: Path | str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.folder = Path(folder)
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        """Listen and return the port (a free one unless a fixed port was given)."""
        await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        handler = _StoreHandler(self.folder)
        # A fixed hostname: aiosmtpd would otherwise resolve the FQDN (a DNS lookup) per connection.
        self._server = await loop.create_server(
            lambda: SMTP(handler, hostname="mfa-sink.localhost", loop=loop), self.host, self.port
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("mail_sink_started", folder=str(self.folder.resolve()), port=self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
