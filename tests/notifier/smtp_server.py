"""A real aiosmtpd server for the notifier tests, on the test loop, with programmable replies."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections import Counter
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from aiosmtpd.smtp import SMTP, AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Received:
    """One accepted mail as the server saw it."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    authenticated: bool


class Recorder:
    """aiosmtpd handler keeping accepted mail; it can refuse a recipient always, or a few times first."""

    def __init__(self) -> None:
        self.mails: list[Received] = []
        self.refuse: dict[str, str] = {}  # address -> reply given to every RCPT (e.g. a 550)
        self.first_replies: dict[str, list[str]] = {}  # address -> replies given in turn, then accepted
        self.rcpt_attempts: Counter[str] = Counter()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        self.rcpt_attempts[address] += 1
        if address in self.refuse:
            return self.refuse[address]
        if self.first_replies.get(address):
            return self.first_replies[address].pop(0)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        message = BytesParser(policy=policy.default).parsebytes(envelope.original_content or envelope.content)
        self.mails.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message,
                                   session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
                                   bool(session.authenticated)))
        return "250 2.0.0 OK queued"

    def to(self, address: str) -> list[Received]:
        return [m for m in self.mails if address in m.rcpt_tos]


class TestSmtpServer:
    """Start/stop a server on a port; `stop()` also cuts open connections, like a crashed server."""

    __test__ = False  # not a pytest class

    def __init__(self, recorder: Recorder | None = None, *, port: int = 0, starttls: ssl.SSLContext | None = None,
                 implicit_tls: ssl.SSLContext | None = None, credentials: tuple[str, str] | None = None,
                 smtputf8: bool = True) -> None:
        self.recorder = recorder or Recorder()
        self.smtputf8 = smtputf8
        self.port = port
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.credentials = credentials
        self.connections = 0
        self._protocols: list[SMTP] = []
        self._server: asyncio.AbstractServer | None = None

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = self.credentials is not None and (auth_data.login.decode(), auth_data.password.decode()) == self.credentials
        return AuthResult(success=ok, handled=False)  # handled=True would mean "already replied"

    def _factory(self) -> SMTP:
        self.connections += 1
        kwargs = {"enable_SMTPUTF8": self.smtputf8}
        if self.starttls is not None:
            kwargs.update(tls_context=self.starttls, require_starttls=True)
        if self.credentials is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True,
                          auth_require_tls=self.starttls is not None or self.implicit_tls is not None)
        protocol = SMTP(self.recorder, hostname="test-smtp.localhost", loop=asyncio.get_running_loop(), **kwargs)
        self._protocols.append(protocol)
        return protocol

    async def start(self) -> TestSmtpServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, "127.0.0.1", self.port, ssl=self.implicit_tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def drop_connections(self) -> None:
        """Close every open client connection from the server side (an idle timeout, a restart)."""
        for protocol in self._protocols:
            if protocol.transport is not None:
                protocol.transport.close()
        self._protocols.clear()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.drop_connections()


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost signed by itself; returns (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-smtp.localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context
